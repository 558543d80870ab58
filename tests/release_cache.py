"""Stand-ins for the authors' release files, so that `pretrained=True` can run where the release cannot be
downloaded (timm's suite calls it for every release tag):

    python -m tests.release_cache DIR
    TORCH_HOME=DIR ../shared/timm-tests/run "$PWD/.venv/bin/python"

writes every release file under its own name into DIR/hub/checkpoints (torch's hub cache when TORCH_HOME=DIR):
random values with the authors' key names and shapes, in the layout their tools saved (timm's CheckpointSaver for
ImageNet, with an auxiliary token head for the Token Labeling file; `{'net': ...}` for CIFAR).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from t2t_vit.models import RELEASES

from .helpers import REFERENCE, official_state_dict


def write_release_cache(root: Path) -> Path:
    """Every release file, as described above, in `root`/hub/checkpoints; returns that folder."""
    keys = json.loads((REFERENCE / "official_checkpoint_keys.json").read_text())
    out = root / "hub" / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    for tag, release in RELEASES.items():
        arch = tag.split(".")[0]
        sd = official_state_dict(keys, f"{arch}@384" if release.img_size == 384 else arch)
        sd["head.weight"], sd["head.bias"] = (
            sd["head.weight"][: release.num_classes],
            sd["head.bias"][: release.num_classes],
        )
        if release.dataset.startswith("cifar"):
            checkpoint = {"net": {f"module.{k}": v for k, v in sd.items()}, "acc": release.top1, "epoch": 59}
        else:
            if release.note == "Token Labeling":
                sd["aux_head.weight"], sd["aux_head.bias"] = sd["head.weight"].clone(), sd["head.bias"].clone()
            args = argparse.Namespace(model=arch, img_size=release.img_size, model_ema=True)
            checkpoint = {
                "epoch": 309,
                "arch": arch,
                "state_dict": sd,
                "version": 2,
                "args": args,
                "state_dict_ema": sd,
                "metric": release.top1,
            }
        torch.save(checkpoint, out / release.file)
    return out


if __name__ == "__main__":
    print(write_release_cache(Path(sys.argv[1])))
