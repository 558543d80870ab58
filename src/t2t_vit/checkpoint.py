"""Safe checkpoint reading (weights only), layout detection and loading into a model.

Layouts accepted, as the authors' tools and ours write them:

    bare state dict                     tensors by name (our safetensors and exports too)
    timm CheckpointSaver (main.py)      {epoch, arch, state_dict, optimizer, version, args: Namespace, amp_scaler,
                                         state_dict_ema, metric}
    transfer_learning.py (CIFAR)        {net: DataParallel state dict ("module." keys), acc, epoch}
    ours                                {model, model_ema, optimizer, ..., meta}
"""
import json
import logging
import os
import pickle
import types
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from .errors import InputError
from .models.checkpoint_filter import checkpoint_filter_fn

_logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
STATE_DICT_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "net")
# The one class besides tensors and plain containers that a checkpoint may hold: the argparse.Namespace that
# timm's CheckpointSaver stores as `args`, read back as a plain SimpleNamespace. Anything else is refused unread.
SAFE_GLOBALS = [(types.SimpleNamespace, "argparse.Namespace")]


def read_checkpoint(path: PathLike) -> Any:
    """Read a `.pth`/`.pth.tar`/`.pt` (with `weights_only=True`) or `.safetensors` file; InputError if unreadable.

    A pickle that would run code or build arbitrary objects is refused by `weights_only=True`, never executed.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {str(path)!r} does not exist or is not a file: check the path")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise InputError(
                f"checkpoint {str(path)!r} holds pickled objects other than tensors, plain containers and "
                "argparse.Namespace; "
                "it was refused unread (weights_only=True) because unpickling could run code. If you trust "
                "its source, re-save only its state dict: torch.save(obj['state_dict'], 'clean.pth')"
            ) from None
        raise InputError(f"checkpoint {str(path)!r} is not a PyTorch checkpoint ({e})") from None
    except Exception as e:  # a user's file can fail to parse in many ways; all mean the same to the user
        raise InputError(
            f"checkpoint {str(path)!r} could not be read: truncated, corrupt or not a checkpoint ({e}). "
            "Download or copy it again"
        ) from None


def _read_safetensors(path: Path) -> Dict[str, Any]:
    """A safetensors file as {"state_dict": tensors} plus "meta" if our export wrote it into the header."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"checkpoint {str(path)!r} is not a readable safetensors file ({e})") from None
    out: Dict[str, Any] = {"state_dict": state}
    if "t2t_vit" in header:
        out["meta"] = json.loads(header["t2t_vit"])
    return out


def extract_state_dict(checkpoint: Any, use_ema: bool = True, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: bare, or under `state_dict(_ema)` / `model(_ema)` / `net` (EMA first if
    asked)."""
    if not isinstance(checkpoint, dict):
        raise InputError(f"{source} holds a {type(checkpoint).__name__}, not a state dict or checkpoint dict")
    plain = ("state_dict", "model", "net")
    order = ("state_dict_ema", "model_ema", *plain) if use_ema else plain
    for key in order:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not checkpoint or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        keys = ", ".join(list(map(str, checkpoint))[:8])
        raise InputError(
            f"{source} has no state dict: expected tensors, or one of {STATE_DICT_KEYS} holding them; "
            f"found keys: {keys or 'none'}"
        )
    return checkpoint


def authors_arch(checkpoint: Any) -> Optional[str]:
    """The model name an authors' training checkpoint records (`arch`, e.g. "T2t_vit_14"), lower-cased, if any."""
    arch = checkpoint.get("arch") if isinstance(checkpoint, dict) else None
    return arch.lower() if isinstance(arch, str) else None


def load_checkpoint(
    model: nn.Module,
    path: PathLike,
    use_ema: bool = True,
    old_grid: Optional[Tuple[int, int]] = None,
) -> nn.Module:
    """Load the authors' release or our checkpoint into `model` (in place), fitting head and position table.

    Accepts a bare state dict or a dict with `state_dict`, `state_dict_ema`, `model` or `model_ema`; keys may
    carry a `module.` prefix. A head for another class count is dropped with a logged note, the position table
    is resampled to the model's img_size. Anything else that does not fit raises InputError.
    """
    state_dict = extract_state_dict(read_checkpoint(path), use_ema, source=f"checkpoint {str(path)!r}")
    state_dict = checkpoint_filter_fn(state_dict, model, old_grid)
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys:
        _logger.info("not in the checkpoint, left at initialisation: %s", ", ".join(result.missing_keys))
    _logger.info("loaded %s", path)
    return model


def save_checkpoint(state: Dict[str, Any], path: PathLike) -> None:
    """Write atomically: to a temporary file beside `path`, then rename, so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
