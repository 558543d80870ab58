"""The device a process computes on and the precision it computes in: picked from what `--device` and
`--precision` say and what is here. Training, evaluation and prediction all go through these, and through the
process's place among torchrun's."""

import contextlib
import os
from typing import Any, Optional

import torch

from .errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # each precision's autocast dtype


def launched_rank() -> int:
    """This process's rank among torchrun's (RANK), 0 outside torchrun: rank 0 speaks for all of them."""
    return int(os.environ.get("RANK", "0"))


def launched_world() -> int:
    """How many processes torchrun started for the command (WORLD_SIZE), 1 outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of a `--precision` (None: fp32). "auto" is what training evaluates in by default:
    bfloat16 on CUDA, fp32 on the CPU (where bf16 matmuls are slow on most processors)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return AMP_DTYPES[precision]


def precision_name(amp_dtype: Optional[torch.dtype]) -> str:
    """The `--precision` an autocast dtype stands for (None: fp32)."""
    return next(name for name, dtype in AMP_DTYPES.items() if dtype == amp_dtype)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` (this rank's GPU, else the CPU), or a torch device name checked against what is here. On CUDA, fp32
    matmuls and convolutions may use TF32 (as timm's train.py allows)."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"device {name!r} is not a torch device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for but CUDA is not available here: use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> Any:
    """torch.autocast to `dtype` on `device`'s type; no autocast for None (fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
