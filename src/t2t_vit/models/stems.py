"""The stems of the paper's T2T ablation, the modules that turn images into tokens: the T2T module
(tokens_to_token.py, the paper's), ViT's hard patch split (`HardSplitStem`) and the convolution tokens of
T2T-ViT_c (`ConvolutionStem`). `make_stem` picks one for T2TViT's `tokens=` argument.

Each exposes what T2TViT reads off its stem: `soft_splits` (the (kernel, stride, padding) steps that set the
token grid and the tiling check) and `feat_size(H, W)` (the grid, for TorchScript). T2TViT keeps the stem under
the authors' key `tokens_to_token` whichever it is, so the state-dict keys are `tokens_to_token.proj.*` (hard
split) and `tokens_to_token.conv1.*`, `conv2.*`, `project.*` (convolutions).
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .tokens_to_token import (
    DEFAULT_SOFT_SPLITS,
    T2TModule,
    _check_soft_splits,
    split_grid,
)

TOKENS = ("t2t", "patch", "convolution")  # the values of T2TViT's `tokens=`


class HardSplitStem(nn.Module):
    """ViT's tokens: the image cut into non-overlapping `patch_size` squares, each projected linearly.

    The projection is a convolution with kernel = stride = `patch_size`: the same map as unfold + linear.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 768, patch_size: int = 16) -> None:
        super().__init__()
        if patch_size < 1:
            raise InputError(f"patch_size={patch_size} must be a positive integer, e.g. 16")
        self.patch_size = patch_size
        self.soft_splits: List[Tuple[int, int, int]] = [(patch_size, patch_size, 0)]
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def feat_size(self, H: int, W: int) -> Tuple[int, int]:
        """The token grid for an H x W input (no tiling check)."""
        return H // self.patch_size, W // self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, embed_dim, H', W') -> (B, N, embed_dim)


class ConvolutionStem(nn.Module):
    """T2T-ViT_c's tokens: each soft split and re-structurization replaced by a convolution of the same kernel,
    stride and padding (GELU between): in_chans -> token_dim -> token_dim -> embed_dim."""

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 768,
        token_dim: int = 64,
        soft_splits: Sequence[Sequence[int]] = DEFAULT_SOFT_SPLITS,
    ) -> None:
        super().__init__()
        self.soft_splits: List[Tuple[int, int, int]] = _check_soft_splits(soft_splits)
        (k0, s0, p0), (k1, s1, p1), (k2, s2, p2) = self.soft_splits
        self.conv1 = nn.Conv2d(in_chans, token_dim, k0, s0, p0)
        self.conv2 = nn.Conv2d(token_dim, token_dim, k1, s1, p1)
        self.project = nn.Conv2d(token_dim, embed_dim, k2, s2, p2)

    def feat_size(self, H: int, W: int) -> Tuple[int, int]:
        """The token grid for an H x W input (no tiling check)."""
        return split_grid(H, W, self.soft_splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return self.project(x).flatten(2).transpose(1, 2)  # (B, embed_dim, H', W') -> (B, N, embed_dim)


def make_stem(
    tokens: str,
    t2t_mixer: str = "performer",
    in_chans: int = 3,
    embed_dim: int = 768,
    token_dim: int = 64,
    soft_splits: Sequence[Sequence[int]] = DEFAULT_SOFT_SPLITS,
    patch_size: int = 16,
    t2t_drop_rate: Optional[float] = None,
) -> nn.Module:
    """The stem for `tokens`: "t2t" (the paper's T2T module), "patch" (ViT's hard split), "convolution" (T2T-ViT_c).
    `t2t_drop_rate`: the T2T module's dropout (None: the authors'); the other stems have none."""
    if tokens == "t2t":
        return T2TModule(t2t_mixer, in_chans, embed_dim, token_dim, soft_splits, t2t_drop_rate)
    if tokens == "patch":
        return HardSplitStem(in_chans, embed_dim, patch_size)
    if tokens == "convolution":
        return ConvolutionStem(in_chans, embed_dim, token_dim, soft_splits)
    raise InputError(f"tokens={tokens!r} is not one of {TOKENS}")
