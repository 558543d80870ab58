"""One set of defaults (the paper's ImageNet recipe), overridden by a YAML file, then by the command line."""
import copy
import importlib.resources
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from .errors import InputError



class _Loader(yaml.SafeLoader):
    """PyYAML's safe YAML 1.1, where numbers with an exponent and no dot (2e-3, 1e3) are floats, as users write
    them (YAML 1.1 reads them as strings)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d[\d_]*)(?:\.\d*)?[eE][-+]?\d+$"), list("-+0123456789")
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm's IMAGENET_DEFAULT_MEAN/STD, written out: this module loads without torch
IMAGENET_STD = (0.229, 0.224, 0.225)

# Each key: (default, meaning). The defaults are the paper's recipe (T2T-ViT-14 on ImageNet-1k); the package's
# configs/ hold each training command's overrides. `t2t-vit train --help` lists this table.
SCHEMA: Dict[str, Dict[str, Tuple[Any, str]]] = {
    "model": {
        "model": ("t2t_vit_14", "registered model (`t2t-vit models`), or timm:NAME for a timm baseline"),
        "model_kwargs": ({}, "extra constructor arguments, e.g. {soft_splits: [[3, 2, 1], [3, 2, 1], [3, 1, 1]]}"),
        "img_size": (224, "input size in pixels"),
        "in_chans": (3, "input channels"),
        "num_classes": (None, "classes of the head; null: the dataset's class count"),
        "drop": (0.0, "dropout after the position table and in the MLPs"),
        "drop_path": (0.1, "stochastic depth rate of the last block (linear in depth)"),
        "init_checkpoint": (None, "weights to start from: ours, or the authors' (then `model` names it)"),
    },
    "data": {
        "data": (None, "digits, mnist:DIR, fashion-mnist:DIR, cifar10:DIR, cifar100:DIR, hfds/..., or an "
                 "ImageFolder root with train/ and val/"),
        "train_subset": (None, "train on N images of the training split (a fixed stratified choice)"),
        "download": (False, "fetch the dataset where the source can (CIFAR)"),
        "workers": (8, "data loading processes per training process"),
        "batch_size": (64, "per process; the global batch is batch_size x processes x accum_steps"),
        "val_batch_size": (None, "held-out batch size; null: 2 x batch_size"),
        "mean": (list(IMAGENET_MEAN), "normalisation mean per channel"),
        "std": (list(IMAGENET_STD), "normalisation std per channel"),
        "interpolation": ("bicubic", "evaluation resize interpolation"),
        "crop_pct": (0.9, "evaluation centre crop fraction"),
    },
    "augmentation": {
        "train_crop": ("random_resized", "random_resized, or pad: resize, padded random crop, flip (CIFAR)"),
        "crop_padding": (28, "padding of train_crop: pad"),
        "scale": ([0.08, 1.0], "random resized crop area range"),
        "ratio": ([0.75, 1.3333333333333333], "random resized crop aspect range"),
        "hflip": (0.5, "horizontal flip probability"),
        "color_jitter": (0.4, "colour jitter strength"),
        "aa": ("rand-m9-mstd0.5-inc1", "timm auto-augment policy (RandAugment); null: none"),
        "train_interpolation": ("random", "training resize interpolation"),
        "reprob": (0.25, "random erasing probability"),
        "remode": ("pixel", "random erasing mode"),
        "recount": (1, "random erasing count"),
        "mixup": (0.8, "mixup alpha (0: off)"),
        "cutmix": (1.0, "cutmix alpha (0: off)"),
        "mixup_prob": (1.0, "probability of mixing a batch"),
        "mixup_switch_prob": (0.5, "probability of cutmix instead of mixup"),
        "mixup_mode": ("batch", "batch, pair or elem"),
        "smoothing": (0.1, "label smoothing"),
    },
    "optimisation": {
        "opt": ("adamw", "optimizer (timm's names: adamw, sgd, lamb, ...)"),
        "opt_eps": (1e-8, "optimizer epsilon (Adam family)"),
        "momentum": (0.9, "momentum (SGD)"),
        "lr": (5e-4, "learning rate for a global batch of lr_base_batch, scaled linearly to the actual one"),
        "lr_base_batch": (512, "the global batch `lr` is stated for"),
        "weight_decay": (0.05, "weight decay (not on norms, biases, class token, positions)"),
        "clip_grad": (None, "clip the gradient norm to this value; null: off"),
        "accum_steps": (1, "micro-batches per optimizer update"),
        "backbone_lr_ratio": (1.0, "lr of everything but the head, relative to the head's (fine-tuning: 0.01)"),
        "layer_decay": (None, "layer-wise lr decay: block i of L gets layer_decay ** (L + 1 - i)"),
        "freeze_backbone": (False, "train the head only (linear probe)"),
        "sched": ("cosine", "lr schedule (timm's names)"),
        "epochs": (300, "epochs of the schedule; cooldown_epochs follow at min_lr"),
        "warmup_epochs": (10, "linear warmup epochs from warmup_lr"),
        "warmup_lr": (1e-6, "lr at the start of warmup"),
        "min_lr": (1e-5, "lr at the end of the schedule and during cooldown"),
        "cooldown_epochs": (10, "epochs at min_lr after the schedule"),
        "sched_on_updates": (False, "step the schedule every update (true) or every epoch, as the authors (false)"),
        "model_ema": (True, "keep an EMA of the weights and evaluate it"),
        "model_ema_decay": (0.99996, "EMA decay per update"),
    },
    "runtime": {
        "device": ("auto", "auto, cpu, cuda or cuda:N"),
        "amp": (True, "mixed precision on CUDA"),
        "amp_dtype": ("bfloat16", "bfloat16, or float16 (with a GradScaler)"),
        "compile": (False, "torch.compile the model"),
        "seed": (42, "seed of every random number generator"),
    },
    "run directory and logs": {
        "output": ("runs", "where run directories go"),
        "name": (None, "run directory name; null: the config's name, else model-data"),
        "checkpoint_every": (0, "also keep epoch_N.pth.tar every N epochs (0: only last and best)"),
        "best_metric": ("top1", "what best.pth.tar keeps: top1, ema_top1, loss or ema_loss"),
        "stop_after_epochs": (None, "end this process after N epochs (the schedule still spans all), e.g. time limits"),
        "log_interval": (50, "updates between log lines when no progress bar is shown (redirected logs)"),
    },
}
DEFAULTS: Dict[str, Any] = {key: default for keys in SCHEMA.values() for key, (default, _) in keys.items()}


def describe_keys() -> str:
    """The config keys with their defaults and meanings, by section (for `t2t-vit train --help`)."""
    lines = []
    for section, keys in SCHEMA.items():
        lines.append(f"{section}:")
        for key, (default, meaning) in keys.items():
            value = yaml.safe_dump(default, default_flow_style=True, width=1000).strip().removesuffix("\n...")
            lines.append(f"  --{key.replace('_', '-'):<20} {value:<24} {meaning}")
    return "\n".join(lines)


def config_names() -> List[str]:
    """The configs shipped in the package (`--config NAME`)."""
    return sorted(p.name[:-5] for p in _config_dir().iterdir() if p.name.endswith(".yaml"))


def _config_dir() -> Any:
    return importlib.resources.files(__package__) / "configs"


def load_yaml(path: Path) -> Dict[str, Any]:
    """A YAML config file as a dict; InputError naming the file if it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        packaged = _config_dir() / (path.name if path.name.endswith(".yaml") else f"{path.name}.yaml")
        if str(path.parent) != "." or not packaged.is_file():
            raise InputError(
                f"config {str(path)!r} not found: give a YAML path or one of {', '.join(config_names())}"
            )
        path = packaged  # type: ignore[assignment]
    try:
        data = yaml.load(path.read_text(), _Loader) or {}
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
        out[key.replace("-", "_")] = yaml.load(value, _Loader)
        i += 1
    return out


def resolve_config(config_file: Optional[Path] = None, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """DEFAULTS, then the YAML file, then the overrides; unknown keys are an InputError naming close ones."""
    cfg = copy.deepcopy(DEFAULTS)
    layers: List[tuple] = []
    overrides = overrides or {}
    if config_file is not None:
        stem = Path(config_file).stem
        own = load_yaml(Path(config_file))
        layers.append((f"config {str(config_file)!r}", own))
        moved = own.get("data") not in (None, overrides.get("data", own.get("data")))
        cfg["name"] = f"{stem}-{data_tag(overrides['data'])}" if moved else stem  # run names follow the data
    layers.append(("the command line", overrides))
    for source, layer in layers:
        for key, value in layer.items():
            if key not in DEFAULTS:
                import difflib

                close = difflib.get_close_matches(key, DEFAULTS, n=2)
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                raise InputError(f"unknown config key {key!r} in {source}{hint}")
            cfg[key] = value
    return cfg


def data_tag(spec: Any) -> str:
    """A short name for a `--data` spec, for run names: digits, fashion-mnist, cifar10, an ImageFolder's name."""
    kind, sep, rest = str(spec).partition(":")
    if sep and "/" not in kind:
        return kind
    return Path(str(spec).rstrip("/")).name.replace(":", "_") or "data"


def save_config(cfg: Dict[str, Any], path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
