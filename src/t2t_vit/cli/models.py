"""`t2t-vit models`, `download`, `convert`: the model zoo, the authors' released weights, folders for timm and
transformers (and the Hugging Face Hub)."""

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List

from ..errors import InputError

TABLE = Path(__file__).with_name("models.json")  # the `models` table, computed once (tests check it is current)
COLUMNS = ("model", "params", "GMACs", "paper GMACs", "top-1", "data", "release file")
FOOTNOTE = (
    "params: every tensor of the state dict, as the release counts them (the fixed position table and Performer "
    "features included)\nGMACs: one 3x224x224 image (384x384 for _384), counted with torch.utils.flop_counter; "
    "top-1 on the data named, the authors' figures"
)


def register(sub: Any) -> None:
    p = sub.add_parser("models", help="list the models and release tags: params, MACs, the authors' top-1 and file")
    p.add_argument("--recompute", action="store_true", help="count params and MACs now instead of reading the table")
    p.set_defaults(func=_models)

    d = sub.add_parser("download", help="fetch the authors' released weights into torch's hub cache (or --dir)")
    d.add_argument("name", metavar="NAME", help="a release tag (t2t_vit_14.in1k_ft_cifar10) or a model (its first tag)")
    d.add_argument("--dir", default=None, help="folder to put the file in (default: torch's hub cache)")
    d.add_argument("--url", default=None, help="fetch from this address instead (a mirror)")
    d.add_argument("--force", action="store_true", help="fetch again and replace the file if it is there")
    d.set_defaults(func=_download)

    c = sub.add_parser(
        "convert",
        help="write a checkpoint as a folder timm and transformers load (local-dir:, the Hub), class names included",
    )
    c.add_argument("checkpoint", metavar="FILE", nargs="?", help="our checkpoint, or an authors' release file")
    c.add_argument("--checkpoint", dest="checkpoint_flag", metavar="FILE", help="FILE, as the other commands take it")
    c.add_argument("--model", default=None, help="model name or release tag (the authors' files without `arch`)")
    c.add_argument(
        "--out", "--output", required=True, help="folder to write model.safetensors, config.json, README.md into"
    )
    c.add_argument("--force", action="store_true", help="write into --out even if it holds files (never the input)")
    c.add_argument(
        "--push-to-hub",
        default=None,
        metavar="USER/REPO",
        help="also upload the folder to this Hugging Face model repo (made if missing; needs `hf auth login`)",
    )
    c.set_defaults(func=_convert)


def compute_rows() -> List[Dict[str, Any]]:
    """One row per registered model and release tag, counted now (builds each model on the meta device)."""
    from ..factory import list_models
    from ..models import RELEASES
    from ..models.cost import model_cost

    rows = []
    for arch in list_models():
        for tag in [t for t in RELEASES if t.split(".")[0] == arch] or [arch]:
            rel = RELEASES.get(tag)
            params, macs = model_cost(
                arch, img_size=rel.img_size if rel else 224, num_classes=rel.num_classes if rel else 1000
            )
            rows.append(
                dict(
                    model=tag,
                    params=params,
                    gmacs=round(macs / 1e9, 2),
                    paper_gmacs=rel.paper_gmacs if rel else None,
                    top1=rel.top1 if rel else None,
                    data=rel.dataset if rel else None,
                    file=rel.file if rel else None,
                )
            )
    return rows


def write_table() -> Path:
    """Recount and store the table the `models` command prints (run after adding a model or a release)."""
    TABLE.write_text(json.dumps(compute_rows(), indent=1) + "\n")
    return TABLE


def format_table(rows: List[Dict[str, Any]]) -> str:
    def text(v: Any, fmt: str = "{}") -> str:
        return "-" if v is None else fmt.format(v)

    cells = [COLUMNS] + [
        (
            r["model"],
            f"{r['params']:,}",
            f"{r['gmacs']:.2f}",
            text(r["paper_gmacs"]),
            text(r["top1"]),
            text(r["data"]),
            text(r["file"]),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = []
    for i, row in enumerate(cells):
        lines.append(
            "  ".join(c.ljust(w) if j in (0, 5, 6) else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths)))
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines) + "\n\n" + FOOTNOTE


def _models(args: argparse.Namespace) -> None:
    rows = compute_rows() if args.recompute else json.loads(TABLE.read_text())
    print(format_table(rows))


def _download(args: argparse.Namespace) -> None:
    from ..pretrained import download, release_of

    tag, release = release_of(args.name)
    path = download(args.url or release.url, args.dir, progress=True, force=args.force)
    print(f"{tag}: {path}")


def _convert(args: argparse.Namespace) -> None:
    from ..hub import HUB_PREFIX, LOCAL_PREFIX
    from ..pretrained import convert

    given = {args.checkpoint, args.checkpoint_flag} - {None}
    if len(given) != 1:
        both = f"two checkpoints ({', '.join(sorted(given))})" if given else "no checkpoint"
        raise InputError(f"{both} to convert: give one, as FILE or --checkpoint FILE")
    out = convert(given.pop(), args.out, args.model, args.push_to_hub, args.force)
    name = f"{HUB_PREFIX}{args.push_to_hub}" if args.push_to_hub else f"{LOCAL_PREFIX}{out}"
    print(f"wrote {out} (model.safetensors, config.json, README.md)")
    if args.push_to_hub:
        print(f"pushed it to the Hub as {args.push_to_hub}")
    print("load it after `import t2t_vit` (which registers the architecture; without it: Unknown model):")
    print(f"  timm:         timm.create_model('{name}', pretrained=True)")
    print(f"  transformers: pipeline('image-classification', model='{args.push_to_hub or out}')")
