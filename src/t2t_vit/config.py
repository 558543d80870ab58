"""One set of defaults (the paper's ImageNet recipe), overridden by a YAML file, then by the command line."""
import copy
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from .errors import InputError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

# The paper's recipe (T2T-ViT-14 on ImageNet-1k); configs/ hold each training command's overrides.
DEFAULTS: Dict[str, Any] = {
    # model
    "model": "t2t_vit_14",
    "model_kwargs": {},  # extra constructor arguments, e.g. {soft_splits: [[3, 2, 1], [3, 2, 1], [3, 1, 1]]}
    "img_size": 224,
    "in_chans": 3,
    "num_classes": None,  # None: the dataset's class count
    "drop": 0.0,
    "drop_path": 0.1,
    "init_checkpoint": None,  # weights to start from: ours, or the authors' (then `model` names it)
    # data
    "data": None,
    "train_subset": None,  # train on N images of the training split (a fixed stratified choice), e.g. for budgets
    "download": False,
    "workers": 8,
    "batch_size": 64,  # per process; the global batch is batch_size x processes x accum_steps
    "val_batch_size": None,  # None: 2 x batch_size
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "interpolation": "bicubic",  # evaluation resize
    "crop_pct": 0.9,
    # augmentation and mixing
    "train_crop": "random_resized",  # or "pad": resize to img_size, random crop with crop_padding, flip
    "crop_padding": 28,
    "scale": [0.08, 1.0],
    "ratio": [0.75, 1.3333333333333333],
    "hflip": 0.5,
    "color_jitter": 0.4,
    "aa": "rand-m9-mstd0.5-inc1",
    "train_interpolation": "random",
    "reprob": 0.25,
    "remode": "pixel",
    "recount": 1,
    "mixup": 0.8,
    "cutmix": 1.0,
    "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5,
    "mixup_mode": "batch",
    "smoothing": 0.1,
    # optimisation
    "opt": "adamw",
    "opt_eps": 1e-8,
    "momentum": 0.9,
    "lr": 5e-4,  # for a global batch of lr_base_batch, scaled linearly to the actual one
    "lr_base_batch": 512,
    "weight_decay": 0.05,
    "clip_grad": None,
    "accum_steps": 1,
    "backbone_lr_ratio": 1.0,  # lr of everything but the head, relative to the head's (fine-tuning: 0.01)
    "layer_decay": None,  # layer-wise lr decay: block i of L gets layer_decay ** (L + 1 - i)
    "freeze_backbone": False,  # train the head only (linear probe)
    "sched": "cosine",
    "epochs": 300,  # of the cosine; cooldown_epochs follow at min_lr
    "warmup_epochs": 10,
    "warmup_lr": 1e-6,
    "min_lr": 1e-5,
    "cooldown_epochs": 10,
    "sched_on_updates": False,  # the authors step the schedule once per epoch
    "model_ema": True,
    "model_ema_decay": 0.99996,
    # runtime
    "device": "auto",
    "amp": True,  # on CUDA only
    "amp_dtype": "bfloat16",  # or float16 (with a GradScaler)
    "compile": False,
    "seed": 42,
    # run directory, checkpoints, logs
    "output": "runs",
    "name": None,  # run directory name; None: the config's name, else model-data
    "checkpoint_every": 0,  # also keep epoch_N.pth.tar every N epochs (0: only last and best)
    "best_metric": "top1",  # top1, ema_top1, loss or ema_loss
    "stop_after_epochs": None,  # end this process after N epochs (the schedule still spans all), e.g. time limits
    "log_interval": 50,
}


def load_yaml(path: Path) -> Dict[str, Any]:
    """A YAML config file as a dict; InputError naming the file if it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file() and (CONFIG_DIR / path).is_file():
        path = CONFIG_DIR / path
    if not path.is_file() and (CONFIG_DIR / f"{path}.yaml").is_file():
        path = CONFIG_DIR / f"{path}.yaml"
    if not path.is_file():
        raise InputError(f"config {str(path)!r} not found: give a YAML path or a name from {CONFIG_DIR}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"config {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"config {str(path)!r} must be a mapping of keys to values")
    return data


def parse_overrides(args: Sequence[str]) -> Dict[str, Any]:
    """`--key value`, `--key=value` or `key=value` pairs (dashes or underscores; values parsed as YAML)."""
    out: Dict[str, Any] = {}
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" not in arg:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                key, value = arg[2:], "true"  # a bare flag
            else:
                key, value = arg[2:], args[i + 1]
                i += 1
        elif "=" in arg:
            key, value = arg.lstrip("-").split("=", 1)
        else:
            raise InputError(f"cannot read {arg!r}: overrides look like --key value, --key=value or key=value")
        out[key.replace("-", "_")] = yaml.safe_load(value)
        i += 1
    return out


def resolve_config(config_file: Optional[Path] = None, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """DEFAULTS, then the YAML file, then the overrides; unknown keys are an InputError naming close ones."""
    cfg = copy.deepcopy(DEFAULTS)
    layers: List[tuple] = []
    if config_file is not None:
        layers.append((f"config {str(config_file)!r}", load_yaml(Path(config_file))))
        cfg["name"] = Path(config_file).stem
    layers.append(("the command line", overrides or {}))
    for source, layer in layers:
        for key, value in layer.items():
            if key not in DEFAULTS:
                import difflib

                close = difflib.get_close_matches(key, DEFAULTS, n=2)
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                raise InputError(f"unknown config key {key!r} in {source}{hint}")
            cfg[key] = value
    return cfg


def save_config(cfg: Dict[str, Any], path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
