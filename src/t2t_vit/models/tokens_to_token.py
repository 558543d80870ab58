"""The Tokens-to-Token module: soft splits with a one-layer token mixer (re-structurization) between them.

Key names follow the authors' release (`attention1`, `attention2`, `project`, `kqv`, `w`, `mlp.0`, ...), so
their checkpoints load as they are.

Two paths compute the same function. The eager one is the authors' code op for op: `nn.Unfold` + transpose,
tokens transposed back to (B, C, H, W) between splits, the Performer with einsums and `.repeat`, softmax
attention by hand. The fused one (default) keeps tokens channels-last: each soft split is one strided copy
with the patch features ordered (kh, kw, C) instead of (C, kh, kw) (the weights that read them are reordered
to match), the last split and its projection are one convolution, and attention runs on fused kernels
(kernels.py holds the channels-last splits and both Performer kernels).

Three switches pick the path, each a TorchScript constant set by `T2TViT.set_attn_impl` ("sdpa": all True,
"eager": all False): `T2TModule.channels_last` (the layout of the soft splits), `TokenPerformer.fused_kernel`
(the Performer's arithmetic) and `TokenAttention.fused_attn` (SDPA or softmax by hand, as timm names it).
"""

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn
from torch.jit import Final

from ..errors import InputError, is_number
from .kernels import (
    patch_norm_linear,
    performer_attention,
    soft_split_channels_last,
    split_size,
)

# a leaf for fx, not traced into: torch.fx.wrap patches the name in the calling module, so it is declared here
torch.fx.wrap("performer_attention")

SoftSplit = Tuple[int, int, int]  # (kernel, stride, padding) of one unfold
CPU_SLICE_TOKENS = 8192  # fused path on CPU: images per slice chosen so the first split gives about this many tokens
DEFAULT_SOFT_SPLITS: Tuple[SoftSplit, ...] = ((7, 4, 2), (3, 2, 1), (3, 2, 1))
T2T_MIXERS = ("performer", "transformer")
MIXER_DROP = {"performer": 0.1, "transformer": 0.0}  # the authors' dropout in each mixer


def soft_split(x: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """Overlapping patches as tokens: (B, C, H, W) -> (B, L, C * kernel^2)."""
    return F.unfold(x, kernel, padding=padding, stride=stride).transpose(1, 2)


def tiles(size: int, soft_splits: Sequence[SoftSplit]) -> bool:
    """True when every split maps the side exactly to side / stride (no pixel dropped or invented)."""
    for kernel, stride, padding in soft_splits:
        if size % stride or split_size(size, kernel, stride, padding) != size // stride:
            return False
        size //= stride
    return True


def grid_size(img_size: Tuple[int, int], soft_splits: Sequence[SoftSplit]) -> Tuple[int, int]:
    """The token grid (rows, cols) that an image of `img_size` gives; InputError if the splits cannot tile it."""
    for name, size in zip(("height", "width"), img_size):
        if not tiles(size, soft_splits):
            step = math.prod(s for _, s, _ in soft_splits)
            near = [n for n in range(max(1, size - 2 * step), size + 2 * step + 1) if tiles(n, soft_splits)]
            below = max((n for n in near if n < size), default=None)
            above = min((n for n in near if n > size), default=None)
            hint = " or ".join(str(n) for n in (below, above) if n is not None)
            raise InputError(
                f"image {name} {size} cannot be tiled by the soft splits {tuple(soft_splits)} "
                f"(kernel, stride, padding): use a size such as {hint} (a multiple of {step}), "
                "or resize the input"
            )
    return split_grid(img_size[0], img_size[1], list(soft_splits))


def split_grid(H: int, W: int, soft_splits: List[SoftSplit]) -> Tuple[int, int]:
    """The token grid after the unfolds, with no tiling check (scriptable)."""
    for kernel, stride, padding in soft_splits:
        H, W = split_size(H, kernel, stride, padding), split_size(W, kernel, stride, padding)
    return H, W


class TokenPerformer(nn.Module):
    """A T2T layer with Performer attention: one head, width `dim` -> `token_dim`, v as the residual.

    `fused_kernel` picks the fast kernel over the authors' einsum arithmetic (set by `T2TViT.set_attn_impl`).
    """

    fused_kernel: Final[bool]

    def __init__(self, dim: int, token_dim: int = 64, kernel_ratio: float = 0.5, drop: float = 0.1) -> None:
        super().__init__()
        self.token_dim = token_dim
        self.eps = 1e-8
        self.fused_kernel = True
        self.kqv = nn.Linear(dim, 3 * token_dim)
        self.dp = nn.Dropout(drop)
        self.proj = nn.Linear(token_dim, token_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(token_dim)
        self.mlp = nn.Sequential(
            nn.Linear(token_dim, token_dim), nn.GELU(), nn.Linear(token_dim, token_dim), nn.Dropout(drop)
        )
        m = int(token_dim * kernel_ratio)
        # random features: orthogonal rows scaled by sqrt(m); a buffer saved with the weights, never trained
        self.register_buffer("w", nn.init.orthogonal_(torch.randn(m, token_dim)) * math.sqrt(m))

    def forward(self, x: torch.Tensor, patch_channels: int = 0) -> torch.Tensor:
        """(B, N, dim) -> (B, N, token_dim); `patch_channels` > 0: x holds (kh, kw, C) ordered patches."""
        if patch_channels > 0:
            w, b = self.kqv.weight, self.kqv.bias
            kqv = patch_norm_linear(
                x, self.norm1.weight, self.norm1.bias, self.norm1.eps, w, b, patch_channels, self.kqv.in_features
            )
        else:
            kqv = self.kqv(self.norm1(x))
        k, q, v = kqv.split(self.token_dim, dim=-1)
        y = performer_attention(q, k, v, self.w, self.eps, self.fused_kernel)
        x = v + self.dp(self.proj(y))  # v is the residual: the width changes from dim to token_dim
        return x + self.mlp(self.norm2(x))


class TokenAttention(nn.Module):
    """One-head softmax attention from width `dim` to `token_dim`, scaled by dim^-0.5, v as the residual.

    `fused_attn` picks `F.scaled_dot_product_attention` over the authors' explicit math, as in timm's Attention
    (set by `T2TViT.set_attn_impl`).
    """

    fused_attn: Final[bool]

    def __init__(self, dim: int, token_dim: int = 64, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.token_dim = token_dim
        self.scale = dim**-0.5
        self.fused_attn = True
        self.qkv = nn.Linear(dim, 3 * token_dim, bias=False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(token_dim, token_dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(self.qkv(x))

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention from the projected (B, N, 3 * token_dim) q, k, v to (B, N, token_dim)."""
        B, N, _ = qkv.shape
        if self.fused_attn:
            q, k, v = qkv.reshape(B, N, 3, 1, self.token_dim).unbind(2)  # 3 x (B, N, 1, token_dim) views
            y = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                dropout_p=self.attn_drop.p if self.training else 0.0,
                scale=self.scale,
            )
            return v.squeeze(2) + self.proj_drop(self.proj(y.squeeze(1)))
        # the authors' arithmetic: (B, N, 3 * token_dim) -> 3 x (B, 1, N, token_dim)
        q, k, v = qkv.reshape(B, N, 3, 1, self.token_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        return v.squeeze(1) + self.proj_drop(self.proj((attn @ v).squeeze(1)))


class TokenTransformer(nn.Module):
    """A T2T layer with a plain Transformer: attention (width dim -> token_dim), then a width-token_dim MLP."""

    def __init__(self, dim: int, token_dim: int = 64, mlp_ratio: float = 1.0, drop: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, token_dim, proj_drop=drop)
        self.norm2 = nn.LayerNorm(token_dim)
        self.mlp = Mlp(token_dim, int(token_dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, patch_channels: int = 0) -> torch.Tensor:
        """(B, N, dim) -> (B, N, token_dim); `patch_channels` > 0: x holds (kh, kw, C) ordered patches."""
        if patch_channels > 0:
            w = self.attn.qkv.weight
            qkv = patch_norm_linear(
                x,
                self.norm1.weight,
                self.norm1.bias,
                self.norm1.eps,
                w,
                None,
                patch_channels,
                self.attn.qkv.in_features,
            )
            x = self.attn.attend(qkv)
        else:
            x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class T2TModule(nn.Module):
    """Image -> tokens: soft split, re-structurize, soft split, re-structurize, soft split, project.

    `channels_last` (set by `T2TViT.set_attn_impl`) picks the channels-last soft splits, with the last split and
    the projection as one convolution; False runs the authors' unfold layout op for op. Both give the same tokens.

    Args:
        t2t_mixer: "performer" or "transformer", the token mixer between soft splits.
        in_chans: input channels.
        embed_dim: backbone width the last split is projected to.
        token_dim: width of the tokens inside the module (64 in the paper).
        soft_splits: three (kernel, stride, padding) triples, one per unfold.
        drop_rate: dropout inside the mixers; None: the authors' (0.1 in the Performer, hard-wired in their code;
            0 in the Transformer).
    """

    channels_last: Final[bool]

    def __init__(
        self,
        t2t_mixer: str = "performer",
        in_chans: int = 3,
        embed_dim: int = 768,
        token_dim: int = 64,
        soft_splits: Sequence[Sequence[int]] = DEFAULT_SOFT_SPLITS,
        drop_rate: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.soft_splits: List[Tuple[int, int, int]] = _check_soft_splits(soft_splits)
        if t2t_mixer not in T2T_MIXERS:
            raise InputError(f"t2t_mixer={t2t_mixer!r} is not one of {T2T_MIXERS}")
        mixer = TokenPerformer if t2t_mixer == "performer" else TokenTransformer
        (k0, _, _), (k1, _, _), (k2, _, _) = self.soft_splits
        self.in_chans = in_chans
        self.token_dim = token_dim
        self.channels_last = True
        if drop_rate is None:
            drop_rate = MIXER_DROP[t2t_mixer]
        elif not (is_number(drop_rate) and 0.0 <= drop_rate < 1.0):
            raise InputError(f"t2t_drop_rate={drop_rate!r} must be in [0, 1), or None for the authors' value")
        self.attention1 = mixer(in_chans * k0 * k0, token_dim, drop=drop_rate)
        self.attention2 = mixer(token_dim * k1 * k1, token_dim, drop=drop_rate)
        self.project = nn.Linear(token_dim * k2 * k2, embed_dim)

    def feat_size(self, H: int, W: int) -> Tuple[int, int]:
        """The token grid for an H x W input (no tiling check)."""
        return split_grid(H, W, self.soft_splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H2 * W2, embed_dim)."""
        return self.forward_restructurized(x, False)[0]

    def forward_restructurized(
        self, x: torch.Tensor, keep_images: bool = True
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The tokens and, if `keep_images`, the two re-structurized token images T1, T2 (B, token_dim, H_i, W_i)
        that the soft splits of iterations 1 and 2 cut (strides s0 and s0 s1 of the image)."""
        if not self.channels_last:
            return self._forward_eager(x, keep_images)
        if torch.jit.is_scripting():
            return self._forward_fused(x, keep_images)
        return self._forward_sliced(x, keep_images)

    @torch.jit.unused
    def _forward_sliced(self, x: torch.Tensor, keep_images: bool) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The fused path over slices of the batch on CPU: each image is computed on its own anyway, and in slices
        of about CPU_SLICE_TOKENS first-split tokens the first layers' tensors stay in cache.

        Whole batches when traced, compiled or exported (a slice count would freeze the batch size), and for ONNX
        the splits as strided slices.
        """
        if torch.onnx.is_in_onnx_export():
            return self._forward_fused(x, keep_images, slices=True)
        if (
            isinstance(x, torch.fx.Proxy)
            or torch.jit.is_tracing()
            or torch.compiler.is_compiling()
            or x.device.type != "cpu"
        ):
            return self._forward_fused(x, keep_images)
        k0, s0, p0 = self.soft_splits[0]
        tokens = split_size(x.shape[2], k0, s0, p0) * split_size(x.shape[3], k0, s0, p0)
        n = max(1, CPU_SLICE_TOKENS // max(tokens, 1))
        if n >= x.shape[0]:
            return self._forward_fused(x, keep_images)
        parts = [self._forward_fused(c, keep_images) for c in x.split(n)]
        return torch.cat([t for t, _ in parts]), [torch.cat(level) for level in zip(*(i for _, i in parts))]

    def _forward_eager(self, x: torch.Tensor, keep_images: bool) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The authors' layout, step for step: unfold, tokens back to (B, C, H, W) between the splits."""
        B, _, H, W = x.shape
        (k0, s0, p0), (k1, s1, p1), (k2, s2, p2) = self.soft_splits
        # step 0: soft split, (B, C, H, W) -> (B, H0 * W0, C k0^2)
        x = soft_split(x, k0, s0, p0)
        H, W = split_size(H, k0, s0, p0), split_size(W, k0, s0, p0)
        # iteration 1: re-structurization, a T2T layer over the tokens, then the tokens reshaped into an image
        x = self.attention1(x)  # (B, H0 * W0, token_dim)
        x = x.transpose(1, 2).reshape(B, -1, H, W)  # (B, token_dim, H0, W0)
        images: List[torch.Tensor] = [x] if keep_images else []
        # iteration 1: soft split
        x = soft_split(x, k1, s1, p1)  # (B, H1 * W1, token_dim k1^2)
        H, W = split_size(H, k1, s1, p1), split_size(W, k1, s1, p1)
        # iteration 2: re-structurization
        x = self.attention2(x)
        x = x.transpose(1, 2).reshape(B, -1, H, W)  # (B, token_dim, H1, W1)
        if keep_images:
            images.append(x)
        # iteration 2: soft split
        x = soft_split(x, k2, s2, p2)  # (B, H2 * W2, token_dim k2^2)
        # final tokens: project to the backbone width
        return self.project(x), images  # (B, H2 * W2, embed_dim)

    def _forward_fused(
        self, x: torch.Tensor, keep_images: bool = False, slices: bool = False
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The same steps channels-last: patch features ordered (kh, kw, C), no transposes between the splits.
        `slices`: each split as kernel^2 strided slices instead of one strided copy (for ONNX)."""
        B, _, H, W = x.shape
        (k0, s0, p0), (k1, s1, p1), (k2, s2, p2) = self.soft_splits
        # step 0: soft split, (B, C, H, W) -> (B, H0 * W0, k0^2 C), one strided copy
        x = soft_split_channels_last(x.permute(0, 2, 3, 1), k0, s0, p0, slices)
        H, W = split_size(H, k0, s0, p0), split_size(W, k0, s0, p0)
        # iteration 1: re-structurization; the tokens (B, H0 * W0, token_dim) are already the channels-last image
        x = self.attention1(x, self.in_chans)
        x = x.reshape(B, H, W, -1)  # (B, H0, W0, token_dim), a view
        images: List[torch.Tensor] = [x.permute(0, 3, 1, 2)] if keep_images else []  # (B, token_dim, H0, W0) view
        # iteration 1: soft split
        x = soft_split_channels_last(x, k1, s1, p1, slices)  # (B, H1 * W1, k1^2 token_dim)
        H, W = split_size(H, k1, s1, p1), split_size(W, k1, s1, p1)
        # iteration 2: re-structurization
        x = self.attention2(x, self.token_dim)
        x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2)  # (B, token_dim, H1, W1), channels-last memory
        if keep_images:
            images.append(x)
        # iteration 2: soft split and final tokens: project, as one convolution with the projection's weights
        w = self.project.weight.reshape(self.project.out_features, -1, k2, k2)  # (E, C k^2) -> (E, C, k, k)
        x = F.conv2d(x, w, self.project.bias, stride=s2, padding=p2)
        return x.flatten(2).transpose(1, 2), images  # (B, E, H2, W2) -> (B, H2 * W2, E)


def _check_soft_splits(soft_splits: Sequence[Sequence[int]]) -> List[Tuple[int, int, int]]:
    try:
        splits = [tuple(int(v) for v in s) for s in soft_splits]
    except (TypeError, ValueError):
        splits = []
    ok = len(splits) == 3 and all(len(s) == 3 and s[0] >= 1 and s[1] >= 1 and s[2] >= 0 for s in splits)
    if not ok:
        raise InputError(
            f"soft_splits={soft_splits!r} must be three (kernel, stride, padding) triples of non-negative "
            "integers, e.g. ((7, 4, 2), (3, 2, 1), (3, 2, 1)) for 224 px or ((3, 2, 1), (3, 2, 1), (3, 1, 1)) "
            "for 28 px"
        )
    return splits  # type: ignore[return-value]
