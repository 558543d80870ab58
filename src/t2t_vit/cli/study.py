"""`t2t-vit visualize` and `reproduce`: pictures of a model and its training, the paper's claims at small scale."""

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple

from ..errors import InputError
from .common import positive_int

FASHION = "fashion-mnist:/usr/share/datasets/fashion-mnist"
CLAIMS = ("tokens", "budget", "mixer", "depth", "overlap")  # study.claims.CLAIMS, named here: --help loads no torch


def register(sub: Any) -> None:
    parser = sub.add_parser("visualize", help="feature maps, attention maps, training curves as PNGs")
    modes = parser.add_subparsers(dest="mode", required=True, metavar="MODE")

    def image_args(p: argparse.ArgumentParser, nargs: Optional[str] = None) -> None:
        p.add_argument("image", type=Path, nargs=nargs, help="an image file (PNG, JPEG, ...)")
        p.add_argument("--img-size", type=positive_int, default=None, help="model input size (default: the model's)")

    p = modes.add_parser("features", help="token features of a block as channel maps, per model (paper Fig. 2)")
    image_args(p, nargs="?")  # optional to argparse only: `--checkpoint A B image.png` is read as meant (_image_of)
    p.add_argument(
        "--model",
        nargs="+",
        default=None,
        metavar="NAME",
        help="models to compare (default: those the checkpoints hold; without checkpoints T2T-ViT-14 "
        "and its hard-split ViT twin)",
    )
    p.add_argument(
        "--checkpoint",
        nargs="+",
        default=None,
        metavar="PATH",
        help="one per model, in order; - for a model without one (random weights)",
    )
    p.add_argument("--block", type=int, default=0, help="block whose output tokens are shown (default: 0)")
    p.add_argument("--channels", type=int, default=36, help="channel maps per model (default: 36)")
    p.add_argument("--out", "--output", type=Path, default=Path("features.png"), help="PNG to write")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=_features)

    p = modes.add_parser("attention", help="class-token attention per head and attention rollout, over the image")
    image_args(p)
    p.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="model (default: the checkpoint's; without a checkpoint t2t_vit_14)",
    )
    p.add_argument("--checkpoint", default=None, metavar="PATH", help="weights (default: none, random)")
    p.add_argument(
        "--blocks",
        type=int,
        nargs="+",
        default=[0, -1],
        metavar="I",
        help="blocks to show, negative from the end (default: 0 -1)",
    )
    p.add_argument("--heads", type=positive_int, default=None, help="heads shown per block (default: all)")
    p.add_argument("--out", "--output", type=Path, default=Path("attention.png"), help="PNG to write")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=_attention)

    p = modes.add_parser("curves", help="loss and top-1 per epoch of one or more run directories")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="directories written by `t2t-vit train`")
    p.add_argument("--out", "--output", type=Path, default=Path("curves.png"), help="PNG to write")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=_curves)

    r = sub.add_parser(
        "reproduce",
        help="re-check a claim of the paper at small scale (Fashion-MNIST, CPU)",
        description="Each claim's arms, trained with N seeds under two budgets (equal epochs, equal "
        "training seconds), resuming what exists; writes docs/results/CLAIM.md, .png, .json and the "
        "summary table in docs/results/README.md.",
    )
    r.add_argument("claim", nargs="+", choices=(*CLAIMS, "all"), help="claims to run, or all")
    r.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds 0 .. N-1 per arm (default 3)")
    r.add_argument("--epochs", type=int, default=2, help="the equal-epoch budget (default 2)")
    r.add_argument("--budget", default="600s", help="the equal-time budget: training seconds per run (default 600s)")
    r.add_argument("--data", default=FASHION, help=f"dataset spec (default {FASHION})")
    r.add_argument("--train-subset", type=int, default=0, help="training images (default 0: all)")
    r.add_argument("--output", "--out", default="runs/reproduce", help="where the runs go")
    r.add_argument("--results", default="docs/results", help="where the tables, plots and JSON go")
    r.set_defaults(func=_reproduce)


def _load(name: Optional[str], checkpoint: Optional[str], img_size: Optional[int]) -> Tuple[str, Any]:
    """(label, model in eval mode): a checkpoint's model (ours name it; the authors' need `name`) or a random one."""
    from ..factory import create_model, load_model

    kwargs = {} if img_size is None else dict(img_size=img_size)
    if checkpoint is not None:
        model, meta = load_model(checkpoint, name, **kwargs)
        return f"{meta['arch']} ({Path(checkpoint).name})", model.eval()
    name = name or "t2t_vit_14"
    return f"{name} (random init)", create_model(name, **kwargs).eval()


def _features(args: argparse.Namespace) -> None:
    from ..study.visualize import plot_feature_maps

    args.image = _image_of(args)
    checkpoints = [None if c == "-" else c for c in (args.checkpoint or [])]
    names = args.model or ([None] * len(checkpoints) if checkpoints else ["t2t_vit_14", "t2t_vit_14_wo_t2t"])
    checkpoints = checkpoints or [None] * len(names)
    if len(checkpoints) != len(names):
        raise InputError(
            f"{len(names)} models but {len(checkpoints)} checkpoints: give one --checkpoint per --model, in order, "
            "with - for a model without one (or leave out --model: our checkpoints name their model)"
        )
    inputs = [args.image, *(Path(c) for c in checkpoints if c is not None)]
    out = _output(args, inputs)
    models = [_load(n, c, args.img_size) for n, c in zip(names, checkpoints)]
    _write(out, lambda path: plot_feature_maps(args.image, models, path, args.block, args.channels))


def _image_of(args: argparse.Namespace) -> Path:
    """The image of `visualize features`: the positional one, else the image file that --checkpoint's (or --model's)
    list took in as its last value (`--checkpoint A B image.png`)."""
    from ..deploy.predict import IMAGE_SUFFIXES

    if args.image is not None:
        return args.image
    values = args.checkpoint or args.model or []
    if values and Path(values[-1]).suffix.lower() in IMAGE_SUFFIXES:
        return Path(values.pop())
    raise InputError(
        "an image to show the features of is required: give it first, `t2t-vit visualize features IMAGE "
        "--checkpoint ...`"
    )


def _attention(args: argparse.Namespace) -> None:
    from ..study.visualize import plot_attention

    out = _output(args, [args.image] + ([Path(args.checkpoint)] if args.checkpoint else []))
    label, model = _load(args.model, args.checkpoint, args.img_size)
    _write(out, lambda path: plot_attention(args.image, model, path, args.blocks, args.heads, label))


def _curves(args: argparse.Namespace) -> None:
    from ..study.visualize import plot_curves

    out = _output(args, [d / "metrics.csv" for d in args.run_dirs])
    _write(out, lambda path: plot_curves(args.run_dirs, path))


def _output(args: argparse.Namespace, inputs: Sequence[Path]) -> Path:
    """--out as the file it becomes, checked before any work."""
    from ..study.visualize import output_path

    return output_path(args.out, args.force, inputs)


def _write(out: Path, draw: Callable[[Path], Any]) -> None:
    """Draw into `out` and say so; a write the OS refuses is one line."""
    try:
        draw(out)
    except OSError as e:
        raise InputError(f"could not write --out {str(out)!r}: {e.strerror or e}") from None
    print(f"wrote {out}")


def _reproduce(args: argparse.Namespace) -> int:
    from ..study.claims import CLAIMS as ALL
    from ..study.report import write_report
    from ..study.runs import StudyStopped, parse_seconds, run_claim

    if args.seeds < 1 or args.epochs < 1:
        raise InputError(
            f"--seeds {args.seeds} --epochs {args.epochs}: both must be at least 1 (3 seeds give an "
            "interval; 1 gives none)"
        )
    seconds = parse_seconds(args.budget)
    claims = list(ALL) if "all" in args.claim else list(dict.fromkeys(args.claim))
    command = "t2t-vit " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["reproduce"] else ""
    for claim in claims:
        try:
            setup = run_claim(
                claim,
                args.data,
                range(args.seeds),
                args.epochs,
                seconds,
                args.train_subset or None,
                args.output,
                progress=True,
            )
        except StudyStopped as e:
            signum, where = e.args
            print(f"t2t-vit reproduce: stopped at {where}; the same command continues it", file=sys.stderr)
            return 128 + signum
        print(write_report(claim, setup, Path(args.results), command).read_text())
    return 0
