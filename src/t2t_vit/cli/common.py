"""Arguments several commands share."""
import argparse


def checkpoint_args(p: argparse.ArgumentParser) -> None:
    """--checkpoint (required) and --model, as every command that reads one checkpoint takes them."""
    p.add_argument("--checkpoint", required=True, help="our checkpoint, or an authors' release file")
    p.add_argument("--model", help="model name or release tag (the authors' files whose name does not say it)")
