"""The `t2t-vit` command line: one sub-command per job."""
import argparse
import logging
import sys
from typing import List, Optional

from .errors import InputError


def _models(args: argparse.Namespace) -> None:
    from . import list_models
    from .benchmark import model_cost
    from .models import RELEASES

    rows = []
    for arch in list_models():
        tags = [t for t in RELEASES if t.split(".")[0] == arch] or [arch]
        for tag in tags:
            rel = RELEASES.get(tag)
            img = rel.img_size if rel else 224
            params, macs = model_cost(arch, img_size=img, num_classes=rel.num_classes if rel else 1000)
            rows.append(
                (
                    tag,
                    f"{params:,}",
                    f"{macs / 1e9:.2f}",
                    "-" if rel is None or rel.paper_gmacs is None else f"{rel.paper_gmacs}",
                    "-" if rel is None else f"{rel.top1}",
                    "-" if rel is None else rel.dataset,
                    "-" if rel is None else rel.file,
                )
            )
    header = ("model", "params", "GMACs", "paper GMACs", "top-1", "data", "release file")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for i, row in enumerate([header] + rows):
        print("  ".join(c.ljust(w) if j in (0, 5, 6) else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(
        "\nparams: every tensor of the state dict, as the release counts them (the fixed position table and "
        "Performer features included)\nGMACs: one 3x224x224 image (384x384 for _384), counted with "
        "torch.utils.flop_counter; top-1 on the data named, the authors' figures"
    )


def _download(args: argparse.Namespace) -> None:
    from .hub import download, release_of

    tag, release = release_of(args.name)
    path = download(args.url or release.url, args.dir, progress=True)
    print(f"{tag}: {path}")


def _convert(args: argparse.Namespace) -> None:
    from .hub import convert

    out = convert(args.checkpoint, args.out, args.model, args.push_to_hub)
    print(f"wrote {out} (model.safetensors, config.json, README.md): timm.create_model('local-dir:{out}', pretrained=True)")


def _demo(args: argparse.Namespace) -> None:
    import shutil
    import time
    from pathlib import Path

    from .config import resolve_config
    from .train import evaluate_checkpoint, train

    cfg = resolve_config("digits", {"name": "demo"})
    run_dir = Path(cfg["output"]) / cfg["name"]
    if run_dir.exists():
        shutil.rmtree(run_dir)  # each demo starts afresh
    start = time.perf_counter()
    train(cfg)
    metrics = evaluate_checkpoint(str(run_dir / "last.pth.tar"), cfg["data"], workers=0, progress=False)
    print(f"run directory: {run_dir} (last.pth.tar, metrics.csv, curves.png); {time.perf_counter() - start:.0f} s")
    print(f"held-out top-1: {metrics['top1']:.1f}%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2t-vit", description="Tokens-to-Token ViT: models, training and tools.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("models", help="list the models: params, MACs, the authors' top-1 and release file").set_defaults(
        func=_models
    )
    sub.add_parser("demo", help="train a small T2T-ViT on the embedded digits (CPU) and report held-out top-1").set_defaults(
        func=_demo
    )
    d = sub.add_parser("download", help="fetch the authors' released weights into torch's hub cache (or --dir)")
    d.add_argument("name", metavar="NAME", help="a release tag (t2t_vit_14.in1k_ft_cifar10) or a model (its first tag)")
    d.add_argument("--dir", default=None, help="folder to put the file in (default: torch's hub cache)")
    d.add_argument("--url", default=None, help="fetch from this address instead (a mirror)")
    d.set_defaults(func=_download)
    c = sub.add_parser("convert", help="write a checkpoint as a folder timm's hub loader reads (local-dir:, the Hub)")
    c.add_argument("checkpoint", metavar="FILE", help="our checkpoint, or an authors' release file")
    c.add_argument("--model", default=None, help="model name or release tag (the authors' files without `arch`)")
    c.add_argument("--out", required=True, help="folder to write model.safetensors, config.json, README.md into")
    c.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="also upload it (needs a Hub login)")
    c.set_defaults(func=_convert)
    from . import benchmark, export, predict, reproduce, train, visualize

    train.add_parser(sub)
    predict.add_parser(sub)
    export.add_parser(sub)
    benchmark.add_parser(sub)
    visualize.add_parser(sub)
    reproduce.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        args.func(args, rest) if getattr(args, "takes_overrides", False) else args.func(args)
    except InputError as e:
        print(f"t2t-vit {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
