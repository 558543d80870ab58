"""Tokens-to-Token ViT: models registered in timm, the authors' checkpoints, training and tools."""
import difflib
import logging
from pathlib import Path
from typing import Any, List, Optional, Union

import timm
from torch import nn

from . import models
from .checkpoint import load_checkpoint
from .errors import InputError
from .models import T2TViT

__all__ = ["InputError", "T2TViT", "create_model", "list_models", "load_checkpoint"]
__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def list_models(pattern: str = "*", pretrained: bool = False) -> List[str]:
    """Names of the registered T2T-ViT models (with `pretrained=True`: `arch.tag` names of released weights)."""
    names = timm.list_models(pattern, module=["t2t_vit"], pretrained=pretrained)
    return sorted(names, key=lambda n: (n.split(".")[0].rstrip("0123456789_"), len(n), n))


def create_model(
    name: str, checkpoint_path: Optional[Union[str, Path]] = None, use_ema: bool = True, **kwargs: Any
) -> nn.Module:
    """Build a registered model (`timm.create_model` kwargs apply) and load `checkpoint_path` if given.

    The checkpoint may be an authors' release file or one of ours; its head is dropped if `num_classes` differs
    and its position table resampled if `img_size` differs.
    """
    if name.split(".")[0] not in list_models():
        close = difflib.get_close_matches(name, list_models(), n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise InputError(f"unknown model {name!r}: {hint}`t2t-vit models` lists them")
    model = timm.create_model(name, **kwargs)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, use_ema=use_ema)
    return model
