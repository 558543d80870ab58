"""Fitting foreign state dicts to a T2T-ViT: the authors' checkpoints and ours, wrapped (DDP, torch.compile), at
another resolution, with another head or another number of input channels, into a features-only model or one with
a feature pyramid; InputError naming the variant a checkpoint that fits no model was made for. `load_checkpoint`
reads a file (`checkpoint`), fits it and loads it.
"""

import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv
from timm.models._features import FeatureGetterNet
from torch import nn

from ..checkpoint import extract_state_dict, peek_checkpoint
from ..errors import InputError
from .variants import VARIANTS

_logger = logging.getLogger(__name__)
GROWTH_SAID = 4.0  # token growth said as a WARNING: the authors' own 224 -> 384 px fine-tune is 2.9x


def _strip_prefixes(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):  # DDP and torch.compile wrappers, in either order
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def describe_state_dict(state_dict: Dict[str, torch.Tensor]) -> Tuple[str, int, int]:
    """(t2t_mixer, width, depth) read off a T2T-ViT state dict."""
    mixer = "performer" if any(k.endswith("attention1.kqv.weight") for k in state_dict) else "transformer"
    width = int(state_dict["cls_token"].shape[-1]) if "cls_token" in state_dict else 0
    depth = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
    return mixer, width, depth


def variants_like(state_dict: Dict[str, torch.Tensor]) -> List[str]:
    """Registered variants whose sizes match a state dict's."""
    mixer, width, depth = describe_state_dict(state_dict)
    return [n for n, a in VARIANTS.items() if (a["t2t_mixer"], a["embed_dim"], a["depth"]) == (mixer, width, depth)]


def checkpoint_filter_fn(
    state_dict: Dict[str, torch.Tensor], model: nn.Module, old_grid: Optional[Tuple[int, int]] = None
) -> Dict[str, torch.Tensor]:
    """Fit a checkpoint's state dict (the authors' or ours) to `model`, or raise InputError saying why not.

    Strips `module.` / `_orig_mod.` prefixes, resamples the position table to the model's token grid (from
    `old_grid`, or a square grid), drops a head of another class count with a logged note, and Token Labeling's
    auxiliary head unless the model has one. A features-only model takes it without what it pruned (head, final
    norm, later blocks: `pruned_keys`); the layers a feature pyramid adds stay at their initialisation where the
    checkpoint has none (the authors' never do). Each with a logged line.
    """
    sd = {_strip_prefixes(k): v for k, v in state_dict.items()}
    own = model.state_dict()
    _fit_features(sd, model, own)
    pos = sd.get("pos_embed")
    if pos is not None and pos.shape != own["pos_embed"].shape and pos.shape[-1] == own["pos_embed"].shape[-1]:
        n = pos.shape[1] - 1
        if old_grid is None:
            side = math.isqrt(n)
            if side * side != n:
                raise InputError(f"the checkpoint's position table has {n} tokens, not a square grid: pass old_grid")
            old_grid = (side, side)
        sd["pos_embed"] = resample_abs_pos_embed(pos, list(model.grid_size), list(old_grid), num_prefix_tokens=1)
        growth = math.prod(model.grid_size) / math.prod(old_grid)
        if growth > GROWTH_SAID:  # a small model's own checkpoint taken to a recipe's 224 px: 8 px digits, 784x
            _logger.warning(
                "resampled the position table from %s to %s tokens, %.0fx as many as it was trained with: a step "
                "costs that much more, its attention more still; a smaller img_size keeps it nearer",
                tuple(old_grid),
                model.grid_size,
                growth,
            )
        else:
            _logger.info("resampled the position table from %s to %s tokens", tuple(old_grid), model.grid_size)
    _fit_heads(sd, model, own)
    _fit_in_chans(sd, model)
    mismatched = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    missing = [k for k in own if k not in sd and not k.startswith(("head.", "aux_head."))]
    unexpected = [k for k in sd if k not in own]
    if mismatched or missing or unexpected:
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        problems = []
        if mismatched:
            k = mismatched[0]
            problems.append(
                f"{len(mismatched)} tensors differ in shape (e.g. {k}: checkpoint {tuple(sd[k].shape)}, "
                f"model {tuple(own[k].shape)})"
            )
        if missing:
            problems.append(f"{len(missing)} tensors are missing (e.g. {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} tensors are not in the model (e.g. {unexpected[0]})")
        mixer, width, depth = describe_state_dict(sd)
        like = variants_like(sd)
        fix = f"create {' or '.join(like)} instead" if like else "create a model with these sizes"
        raise InputError(
            f"checkpoint does not fit {arch}: {'; '.join(problems)}. It holds a {mixer} T2T module, width "
            f"{width}, depth {depth}: {fix}"
        )
    return sd


def _fit_features(sd: Dict[str, torch.Tensor], model: nn.Module, own: Dict[str, torch.Tensor]) -> None:
    """Drop from `sd` what a features-only model pruned; fill in from `own` the feature pyramid's new layers."""
    pruned = [k for k in getattr(model, "pruned_keys", ()) if k in sd]
    if pruned:
        parts = sorted({".".join(k.split(".")[: 2 if k.startswith("blocks.") else 1]) for k in pruned})
        _logger.info(
            "the features-only model has no %s: their %d tensors are not loaded", ", ".join(parts), len(pruned)
        )
        for k in pruned:
            del sd[k]
    new = [k for k in own if k.startswith("pyramid.") and k not in sd]
    if new:
        _logger.info(
            "not in the checkpoint, the feature pyramid's new layers stay at initialisation: %s", ", ".join(new)
        )
        sd.update({k: own[k] for k in new})


def _fit_heads(sd: Dict[str, torch.Tensor], model: nn.Module, own: Dict[str, torch.Tensor]) -> None:
    """Drop from `sd`, with one logged line each, the heads the model cannot take: another class count, or an
    auxiliary token head (Token Labeling's `aux_head`) where the model was built without one."""
    for name in ("head", "aux_head"):
        keys = [k for k in (f"{name}.weight", f"{name}.bias") if k in sd]
        if not keys:
            continue
        classes = sd[keys[0]].shape[0]
        if name == "aux_head" and getattr(model, "aux_head", None) is None:
            _logger.info(
                "the checkpoint's auxiliary token head (aux_head, %d classes, from Token Labeling) is dropped: "
                "create the model with aux_head=True to keep it",
                classes,
            )
        elif not isinstance(getattr(model, name), nn.Linear) or sd[keys[0]].shape != own[f"{name}.weight"].shape:
            asked = model.num_classes != getattr(model, "pretrained_cfg", {}).get("num_classes", model.num_classes)
            _logger.log(  # expected where num_classes asked for a new head; else a surprise, shown to every user
                logging.INFO if asked else logging.WARNING,
                "checkpoint %s has %d classes, the model %d: the %s is left at its initialisation",
                name,
                classes,
                model.num_classes,
                name,
            )
        else:
            continue
        for k in keys:
            del sd[k]


def _fit_in_chans(sd: Dict[str, torch.Tensor], model: nn.Module) -> None:
    """Fit the layer that reads the image (`first_conv`) to the model's input channels, as timm adapts a first
    convolution: summed over the channels for one, repeated and rescaled for others. The T2T module's first layer
    is a linear map over (C, kh, kw)-ordered patches: it is adapted as that convolution, and the LayerNorm before
    it averaged (one channel) or repeated over the channels."""
    first = getattr(model, "pretrained_cfg", {}).get("first_conv")
    weight = sd.get(f"{first}.weight")
    if weight is None:
        return
    norm = "tokens_to_token.attention1.norm1"  # before a linear first layer: the T2T module's
    if weight.dim() == 4:
        chans = weight.shape[1]
    else:
        kk = model.soft_splits[0][0] ** 2
        if weight.shape[1] % kk:  # another first kernel: not a channel count to adapt, a shape mismatch to report
            return
        chans = weight.shape[1] // kk
    if chans == model.in_chans:
        return
    if weight.dim() == 4:
        sd[f"{first}.weight"] = adapt_input_conv(model.in_chans, weight, base_chans=chans)
    else:  # (O, C kk) -> (O, C, kk, 1): the patch features as a convolution's input channels
        w = adapt_input_conv(model.in_chans, weight.reshape(weight.shape[0], chans, kk, 1), base_chans=chans)
        sd[f"{first}.weight"] = w.reshape(weight.shape[0], -1)
        for k in (f"{norm}.weight", f"{norm}.bias"):
            t = sd[k].reshape(chans, kk)
            t = t.mean(0, keepdim=True) if model.in_chans == 1 else t.repeat(math.ceil(model.in_chans / chans), 1)
            sd[k] = t[: model.in_chans].reshape(-1)
    _logger.info("adapted %s from %d to %d input channels", first, chans, model.in_chans)


def load_checkpoint(
    model: nn.Module,
    path: Union[str, Path],
    use_ema: bool = True,
    old_grid: Optional[Tuple[int, int]] = None,
) -> nn.Module:
    """Load the authors' release or our checkpoint into `model` (in place), fitting head and position table.

    Accepts a bare state dict or a dict with `state_dict`, `state_dict_ema`, `model` or `model_ema`; keys may
    carry a `module.` prefix. A head for another class count is dropped with a logged note, the position table
    is resampled to the model's img_size. `model` may be timm's features-only wrapper (`features_only=True`): the
    model inside takes the checkpoint. Anything else that does not fit raises InputError.
    """
    state_dict = extract_state_dict(peek_checkpoint(path), use_ema, source=f"checkpoint {str(path)!r}")
    target = model.model if isinstance(model, FeatureGetterNet) else model
    state_dict = checkpoint_filter_fn(state_dict, target, old_grid)
    result = target.load_state_dict(state_dict, strict=False)
    if result.missing_keys:
        _logger.info("not in the checkpoint, left at initialisation: %s", ", ".join(result.missing_keys))
    _logger.info("loaded %s", path)
    return model
