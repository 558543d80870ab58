"""Feature pyramids of T2T-ViT for dense tasks, asked for with `feature_pyramid=`: "t2t" (the T2T module's
re-structurized token images, the last block, its max-pool) or "simple" (ViTDet's, from the last block alone).
Their layers live under `pyramid.`, so the authors' keys are unchanged and their checkpoints load.
"""

import math
from typing import Any, Dict, List, Sequence, Tuple

import torch
from timm.layers import LayerNorm2d, trunc_normal_
from torch import nn

from ..errors import InputError
from .tokens_to_token import T2TModule

PYRAMIDS = ("t2t", "simple")  # the values of T2TViT's `feature_pyramid=`


def _pool() -> nn.Module:
    """The stride-2 reduction of the coarsest level: a 2 x 2 max-pool (ViTDet's; FPN's P6 also subsamples), no
    weights, so the authors' checkpoint fixes it. ceil: an odd grid keeps its last row and column."""
    return nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)


class T2TFeaturePyramid(nn.Module):
    """Four levels from what T2T-ViT computes anyway: the re-structurized token images T1 and T2 of the T2T module
    (token_dim channels, strides s0 and s0 s1: 4 and 8 at 224 px), the last block's tokens as an image (embed_dim,
    the token stride: 16) and that image max-pooled (embed_dim, twice the stride: 32). No new weights."""

    first_block_level = 2  # the levels before it come from the T2T module alone

    def __init__(self) -> None:
        super().__init__()
        self.pool = _pool()

    def forward(self, images: List[torch.Tensor], x: torch.Tensor) -> List[torch.Tensor]:
        """[T1, T2] and the last block's (B, C, H, W) -> the four levels, finest first."""
        return [images[0], images[1], x, self.pool(x)]


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid (Li et al., "Exploring Plain Vision Transformer Backbones for Object
    Detection", ECCV 2022) from the last block's image (dim channels, stride r): two 2 x 2 stride-2 deconvolutions
    with LayerNorm and GELU between (dim / 4, r / 4), one (dim / 2, r / 2), the image (dim, r), its max-pool
    (dim, 2 r). ViTDet's per-level 1 x 1 and 3 x 3 convolutions to one width are the detector's neck, not here.
    The deconvolutions start as the model's linear layers (truncated normal, std 0.02, zero bias)."""

    first_block_level = 0

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 4:
            raise InputError(f"feature_pyramid='simple' divides embed_dim by 4: embed_dim={dim} is not a multiple of 4")
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
            LayerNorm2d(dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)
        self.pool = _pool()
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images: List[torch.Tensor], x: torch.Tensor) -> List[torch.Tensor]:
        """The last block's (B, C, H, W) -> the four levels, finest first (`images` unused: one signature)."""
        return [self.up4(x), self.up2(x), x, self.pool(x)]


def make_pyramid(
    kind: str, stem: nn.Module, token_dim: int, embed_dim: int, depth: int
) -> Tuple[nn.Module, List[Dict[str, Any]]]:
    """The pyramid `kind` and its feature_info (channels and reduction of each level, finest first) for a model
    whose stem has `soft_splits` (the T2T module's for "t2t")."""
    splits: Sequence[Tuple[int, int, int]] = stem.soft_splits
    stride = math.prod(s for _, s, _ in splits)
    last = f"blocks.{depth - 1}"
    if kind == "t2t":
        if not isinstance(stem, T2TModule):
            raise InputError(
                "feature_pyramid='t2t' takes the T2T module's re-structurized tokens, and this model's stem has none "
                "(tokens='patch' or 'convolution'): use feature_pyramid='simple'"
            )
        s0, s1 = splits[0][1], splits[0][1] * splits[1][1]
        levels = [
            ("tokens_to_token.attention1", token_dim, s0),
            ("tokens_to_token.attention2", token_dim, s1),
            (last, embed_dim, stride),
            ("pyramid.pool", embed_dim, 2 * stride),
        ]
        pyramid: nn.Module = T2TFeaturePyramid()
    elif kind == "simple":
        if stride % 4:
            raise InputError(
                f"feature_pyramid='simple' upsamples the tokens 4 times, finer than the image at their stride "
                f"{stride} (soft splits {tuple(splits)}): use soft splits whose strides multiply to a multiple of 4"
            )
        pyramid = SimpleFeaturePyramid(embed_dim)
        levels = [
            ("pyramid.up4", embed_dim // 4, stride // 4),
            ("pyramid.up2", embed_dim // 2, stride // 2),
            (last, embed_dim, stride),
            ("pyramid.pool", embed_dim, 2 * stride),
        ]
    else:
        raise InputError(f"feature_pyramid={kind!r} is not one of {PYRAMIDS} (or None for the blocks at one stride)")
    return pyramid, [dict(module=m, num_chs=c, reduction=r) for m, c, r in levels]
