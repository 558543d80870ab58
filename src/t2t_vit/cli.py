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
            file, top1, paper_gmacs = RELEASES.get(tag, ("-", None, None))
            img = 384 if tag.endswith("_384") else 224
            params, macs = model_cost(arch, img_size=img)
            rows.append(
                (
                    tag,
                    f"{params:,}",
                    f"{macs / 1e9:.2f}",
                    "-" if paper_gmacs is None else f"{paper_gmacs}",
                    "-" if top1 is None else f"{top1}",
                    file,
                )
            )
    header = ("model", "params", "GMACs", "paper GMACs", "top-1", "release file")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for i, row in enumerate([header] + rows):
        print("  ".join(c.ljust(w) if j in (0, 5) else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("\nGMACs: one 3x224x224 image (384x384 for _384), counted with torch.utils.flop_counter")


def _demo(args: argparse.Namespace) -> None:
    import torch

    from . import create_model

    model = create_model("t2t_vit_7").eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 224, 224))
    print(f"t2t_vit_7 forward pass: input (2, 3, 224, 224) -> logits {tuple(logits.shape)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2t-vit", description="Tokens-to-Token ViT: models, training and tools.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("models", help="list the models: params, MACs, the authors' top-1 and release file").set_defaults(
        func=_models
    )
    sub.add_parser("demo", help="the one-command demo").set_defaults(func=_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        args.func(args)
    except InputError as e:
        print(f"t2t-vit {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
