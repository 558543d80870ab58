"""Tokens-to-Token ViT: models registered in timm, the authors' checkpoints, training and tools."""
import logging

from . import models
from .checkpoint import load_checkpoint
from .errors import InputError
from .factory import create_model, list_models, load_model
from .models import T2TViT

__all__ = ["InputError", "T2TViT", "create_model", "list_models", "load_checkpoint", "load_model"]
__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
