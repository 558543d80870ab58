"""The backbone of every dense model: a features-only network (the T2T-ViT feature pyramid, or a timm CNN for the
baselines) under torchvision's FeaturePyramidNetwork, returning an OrderedDict of maps of one width, as torchvision's
detectors take; and what the models derive from it (the padding multiple, the input normalisation)."""

import math
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from ..errors import InputError
from ..factory import create_model
from ..models.tokens_to_token import tiles

CNN_LEVELS = (1, 2, 3, 4)  # a timm CNN's features at strides 4, 8, 16, 32 (index 0 is the stem's, stride 2)
_BODY_PREFIX = re.compile(r"^(?:module\.|_orig_mod\.)*backbone\.body\.(?:model\.)?")  # DDP, compile, timm's wrapper


class FeaturePyramidBackbone(nn.Module):
    """`body` (a timm features-only model: a list of maps, finest first) and torchvision's FeaturePyramidNetwork
    over it: images (B, C, H, W) -> OrderedDict "0", "1", ... (the body's levels) and the extra block's maps
    ("pool", or "p6", "p7"), each `out_channels` wide. `strides` are the body's levels' reductions."""

    def __init__(self, body: nn.Module, out_channels: int, extra_blocks: Optional[ExtraFPNBlock] = None) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks)
        self.out_channels = out_channels
        self.strides: List[int] = list(body.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(OrderedDict((str(i), level) for i, level in enumerate(self.body(x))))


def create_body(
    name: str,
    pyramid: str = "t2t",
    checkpoint_path: Optional[Union[str, Path]] = None,
    backbone_kwargs: Optional[Dict[str, Any]] = None,
) -> nn.Module:
    """The features-only network `name` names: a registered T2T-ViT as the pyramid `pyramid` ("t2t" or "simple") at
    any image size (dynamic_img_size), or `timm:NAME` (a CNN's features at strides 4 to 32). `checkpoint_path` loads
    into it without the classifier (an authors' release or ours for a T2T-ViT; any file timm reads for a CNN). A
    pretrained CNN's BatchNorm is frozen, as torchvision's detection backbones are: detection batches are small."""
    kwargs = dict(backbone_kwargs or {})
    if name.startswith("timm:"):
        kwargs.setdefault("out_indices", CNN_LEVELS)
        if checkpoint_path is not None:
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint_path)))
        body = create_model(name, features_only=True, **kwargs)
        return freeze_batch_norm_2d(body) if kwargs.get("pretrained") else body
    kwargs.setdefault("dynamic_img_size", True)
    return create_model(name, checkpoint_path, features_only=True, feature_pyramid=pyramid, **kwargs)


def size_divisible(body: nn.Module, multiple: Optional[int] = None) -> int:
    """The multiple the models pad images to: by default a multiple of the soft splits' stride (they tile every such
    size of a model they tile at its img_size) that the top level's stride divides, so that every level is the
    image's size over its stride exactly (anchors and the top-down pathway line up). A `multiple` asked for is
    checked: the soft splits must tile it."""
    top = max(body.feature_info.reduction())
    splits = getattr(getattr(body, "model", None), "soft_splits", None)
    if multiple is None:
        return top if splits is None else math.lcm(math.prod(s for _, s, _ in splits), top)
    if splits is not None and not tiles(multiple, splits):
        step = math.prod(s for _, s, _ in splits)
        raise InputError(
            f"size_divisible={multiple}: the soft splits {tuple(splits)} tile multiples of {step} only: use "
            f"{math.lcm(step, top)} (the default) or another multiple of {step}"
        )
    return multiple


def normalization(body: nn.Module, in_chans: int) -> Tuple[List[float], List[float]]:
    """(mean, std) of the body's pretrained cfg, one value per input channel (averaged for another channel count)."""
    cfg = getattr(body, "pretrained_cfg", None) or {}
    mean, std = list(cfg.get("mean", (0.5,) * 3)), list(cfg.get("std", (0.5,) * 3))
    if len(mean) != in_chans:
        mean, std = [sum(mean) / len(mean)] * in_chans, [sum(std) / len(std)] * in_chans
    return mean, std


def group_norm(channels: int) -> nn.GroupNorm:
    """The heads' GroupNorm: 32 groups (Wu and He's), fewer where the width has not 2 channels for each, so that a
    1 x 1 map (the top level of a small image) still has 2 values per group to normalise."""
    return nn.GroupNorm(math.gcd(32, max(channels // 2, 1)), channels)


def backbone_parameter_name(name: str) -> Optional[str]:
    """A dense model's parameter name -> its name inside the backbone network (the T2T-ViT's own, e.g.
    "blocks.3.attn.qkv.weight", "tokens_to_token.attention1.kqv.weight", "cls_token"; a timm CNN's), or None for the
    FPN and the heads. DDP's `module.` and torch.compile's `_orig_mod.` prefixes are allowed."""
    match = _BODY_PREFIX.match(name)
    return name[match.end() :] if match else None
