"""Making models: by registered name, optionally with weights, or from one of our checkpoints alone."""

import difflib
import inspect
import math
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import timm
from torch import nn

from .checkpoint import authors_arch, extract_state_dict, peek_checkpoint
from .errors import InputError
from .hub import class_names
from .models.checkpoint_filter import checkpoint_filter_fn, load_checkpoint
from .models.variants import RELEASES

PathLike = Union[str, Path]


def list_models(pattern: str = "*") -> List[str]:
    """Names of the registered T2T-ViT models (the paper's variants and its design-space studies)."""
    names = timm.list_models(pattern, module=["t2t_vit", "ablations"])
    return sorted(names, key=lambda n: (n.split(".")[0].rstrip("0123456789_"), len(n), n))


def create_model(
    name: str, checkpoint_path: Optional[PathLike] = None, use_ema: bool = True, **kwargs: Any
) -> nn.Module:
    """Build a registered model (`timm.create_model` kwargs apply) and load `checkpoint_path` if given.

    The checkpoint may be an authors' release file or one of ours; its head is dropped if `num_classes` differs
    and its position table resampled if `img_size` differs. `timm:NAME` builds any timm model instead (baselines
    such as a ResNet beside the T2T-ViTs).
    """
    if name.startswith("timm:"):
        if name[5:] not in timm.list_models():
            raise InputError(f"unknown timm model {name[5:]!r}: `timm.list_models()` lists them")
        return timm.create_model(name[5:], **kwargs)
    if name.split(".")[0] not in list_models():
        close = difflib.get_close_matches(name.lower().replace("-", "_"), list_models(), n=3)  # the paper's T2T-ViT-14
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise InputError(f"unknown model {name!r}: {hint}`t2t-vit models` lists them")
    model = timm.create_model(name, **kwargs)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, use_ema=use_ema)
    return model


def constructor_keywords(name: str) -> Optional[List[str]]:
    """The keyword arguments the class of model `name` (registered, or timm:NAME) takes, from its constructor's
    signature and those of the base classes it passes **kwargs on to; None where they cannot be read (an unknown
    name, no return annotation on its timm entry point, **kwargs that reach past the model's classes)."""
    arch = name.removeprefix("timm:").split(".")[0]
    if not timm.is_model(arch):
        return None
    try:
        cls = typing.get_type_hints(timm.models.model_entrypoint(arch)).get("return")
    except (NameError, TypeError):  # an annotation that does not resolve
        return None
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        return None
    names: List[str] = []
    for klass in cls.__mro__:
        if klass is nn.Module:
            return None
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]  # without self
        names += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return None


def load_model(
    path: PathLike, model_name: Optional[str] = None, use_ema: bool = True, **overrides: Any
) -> Tuple[nn.Module, Dict[str, Any]]:
    """A model and its metadata from a checkpoint: ours carry their model name, sizes, classes and preprocessing;
    the authors' need `model_name`. `overrides` (e.g. num_classes, img_size) replace the stored constructor args.

    The metadata has `arch`, `model_kwargs`, `class_names` (None if unknown) and `data_config` (input_size,
    interpolation, mean, std, crop_pct).
    """
    checkpoint = peek_checkpoint(path)  # mapped: of a training checkpoint, only the weights used are read
    state_dict = extract_state_dict(checkpoint, use_ema, source=f"checkpoint {str(path)!r}")
    meta = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    if meta is None:
        model_name, sizes = _authors_model(Path(path), checkpoint, state_dict, model_name)
        release = RELEASES.get(model_name)  # a release's classes are its data set's (CIFAR-10/100, ImageNet-1k)
        names = class_names(release.num_classes, release.dataset) if release else None
        meta = dict(arch=model_name, model_kwargs={}, class_names=names, data_config=None)
        kwargs = {**sizes, **overrides}
    else:
        if meta.get("task", "classification") != "classification":
            raise InputError(
                f"{str(path)!r} holds a {meta['task']} model; this takes a classifier's checkpoint (`t2t-vit eval` "
                "and `predict` take dense ones)"
            )
        if model_name is not None and model_name.split(".")[0] != meta["arch"].split(".")[0]:
            raise InputError(f"{str(path)!r} holds a {meta['arch']}, not a {model_name}: drop --model or fix it")
        kwargs = {**meta["model_kwargs"], **overrides}
    model = create_model(meta["arch"], **kwargs)
    old_grid = meta.get("grid_size")
    model.load_state_dict(checkpoint_filter_fn(state_dict, model, tuple(old_grid) if old_grid else None), strict=False)
    # the checkpoint's preprocessing becomes the model's pretrained cfg, where timm and `visualize` look for it
    stored = {k: v for k, v in (meta["data_config"] or {}).items() if k != "input_size"}
    cfg = {**model.pretrained_cfg, **stored, "input_size": (model.in_chans, *model.img_size)}
    model.pretrained_cfg = model.default_cfg = cfg  # timm keeps both names
    data_config = {k: cfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")}
    return model, {**meta, "model_kwargs": kwargs, "data_config": data_config}


def _authors_model(
    path: Path, checkpoint: Any, state_dict: Dict[str, Any], model_name: Optional[str]
) -> Tuple[str, Dict[str, Any]]:
    """(model name or release tag, sizes) of an authors' file: `model_name`, else the release tag whose file name it
    bears, else the `arch` their training script recorded; where no tag is named, the sizes its tensors show (a
    384 px position table, the head's class count)."""
    tag = next((t for t, release in RELEASES.items() if release.file == path.name), None)
    if model_name is None:
        arch = authors_arch(checkpoint)  # timm's CheckpointSaver records it, e.g. "T2t_vit_14"
        model_name = tag or (arch if arch in list_models() else None)
    elif tag is not None and tag.split(".")[0] == model_name:
        model_name = tag
    if model_name is None:
        raise InputError(
            f"{str(path)!r} does not say which model it holds (an authors' release or a bare state dict): "
            "pass --model NAME, e.g. --model t2t_vit_14 (or a release tag such as t2t_vit_14.in1k_ft_cifar10)"
        )
    if "." in model_name:  # a release tag: its cfg gives classes and size
        return model_name, {}
    sizes: Dict[str, Any] = {}
    pos = state_dict.get("pos_embed", state_dict.get("module.pos_embed"))
    if pos is not None:
        side = math.isqrt(pos.shape[1] - 1)  # its table tells its size (577 tokens: 384 px)
        if side * side == pos.shape[1] - 1 and side != 14:
            sizes["img_size"] = side * 16
    head = state_dict.get("head.weight", state_dict.get("module.head.weight"))
    if head is not None and head.dim() == 2:
        sizes["num_classes"] = int(head.shape[0])
    return model_name, sizes
