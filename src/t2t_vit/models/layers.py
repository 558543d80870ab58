"""Backbone layers: multi-head attention (SDPA or eager), the pre-norm block, the sinusoid table and its fit to a
token grid."""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, resample_abs_pos_embed
from timm.models import register_notrace_function  # where every timm 1.0 has it (timm.layers: 1.0.17 on)
from torch import nn
from torch.jit import Final

from ..errors import InputError

ATTN_IMPLS = ("sdpa", "eager")


class Attention(nn.Module):
    """Multi-head self-attention; `fused_attn` picks `F.scaled_dot_product_attention` over the explicit math
    (False: the authors' arithmetic op for op), as timm's Attention does. Set by `T2TViT.set_attn_impl`."""

    fused_attn: Final[bool]

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else self.head_dim**-0.5
        self.fused_attn = True
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x)
        if self.fused_attn:
            # (B, N, 3C) -> 3 x (B, N, heads, head_dim) views, transposed for SDPA: their gradients stack
            # straight into qkv's layout (the eager permute costs one more copy in the backward)
            q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).unbind(2)
            x = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                dropout_p=self.attn_drop.p if self.training else 0.0,
                scale=self.scale,
            )
        else:  # the authors' arithmetic
            # (B, N, 3C) -> (3, B, heads, N, head_dim)
            q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            attn = (q @ k.transpose(-2, -1)) * self.scale
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, heads, N, head_dim) -> (B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each with drop path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: Optional[float] = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """The fixed 1-D sinusoid table (1, num_positions, dim): sin on even channels, cos on odd.

    angle(pos, j) = pos / 10000^(2 * floor(j / 2) / dim), computed in float64 as the authors do.
    """
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty_like(angle)
    table[:, 0::2] = angle[:, 0::2].sin()
    table[:, 1::2] = angle[:, 1::2].cos()
    return table.float().unsqueeze(0)


@register_notrace_function
def fit_pos_embed(
    pos_embed: torch.Tensor, grid: Tuple[int, int], base_grid: Tuple[int, int], dynamic: bool
) -> torch.Tensor:
    """The position table for a token grid: as stored, or resampled (bicubic) when `dynamic` and sizes differ."""
    if grid[0] == base_grid[0] and grid[1] == base_grid[1]:
        return pos_embed
    if torch.jit.is_scripting() or not dynamic:  # scripted models take their own img_size only
        raise InputError(
            "the input gives a "
            + str(grid[0])
            + "x"
            + str(grid[1])
            + " token grid but the position table is for "
            + str(base_grid[0])
            + "x"
            + str(base_grid[1])
            + ": feed images of the model's img_size, create the "
            "model with that img_size, or pass dynamic_img_size=True"
        )
    return resample_abs_pos_embed(pos_embed, list(grid), list(base_grid), num_prefix_tokens=1)
