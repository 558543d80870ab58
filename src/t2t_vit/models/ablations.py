"""The paper's design-space models: the T2T module against ViT's hard split and convolution tokens, and CNN
designs moved into the backbone (squeeze-excitation, DenseNet, Ghost). Wide-shallow and ResNeXt-like (more heads)
are plain sizes of T2TViT, registered in t2t_vit.py with the authors' release.

Names follow the paper: T2T-ViT-14 without T2T (hard split), T2T-ViT_c-14 (convolution tokens), T2T-ViT-SE-14,
T2T-ViT-Dense, T2T-ViT-Ghost-16.
"""

import math
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ..errors import InputError
from .layers import Block
from .t2t_vit import _create
from .variants import FIRST_LAYER, _cfg
from .vit import T2TViT, init_weights


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation over the channels of tokens: x * sigmoid(fc2(relu(fc1(mean over tokens of x))))."""

    def __init__(self, dim: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(dim // reduction, 1)
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=1, keepdim=True)))))  # (B, N, C) -> (B, 1, C)
        return x * gate


class SEBlock(Block):
    """A backbone block with squeeze-excitation (reduction `se_reduction`) on the attention output."""

    def __init__(self, dim: int, *args: Any, se_reduction: int = 16, **kwargs: Any) -> None:
        super().__init__(dim, *args, **kwargs)
        self.se = SqueezeExcite(dim, se_reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.se(self.attn(self.norm1(x))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class GhostLinear(nn.Module):
    """GhostNet's module for tokens: half the output channels from a linear map (primary), the other half from a
    cheap depthwise convolution of those over neighbouring tokens. The halves are interleaved (primary 0, cheap 0,
    primary 1, ...) so that every head of q, k and v gets both kinds."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, kernel_size: int = 3) -> None:
        super().__init__()
        if out_features % 2 or kernel_size % 2 == 0:
            raise InputError(
                f"a ghost map needs an even width and an odd kernel, got out_features={out_features}, "
                f"kernel_size={kernel_size}: change the width (embed_dim, mlp_ratio) or the kernel"
            )
        half = out_features // 2
        self.in_features, self.out_features = in_features, out_features
        self.primary = nn.Linear(in_features, half, bias=bias)
        self.cheap = nn.Conv1d(half, half, kernel_size, padding=kernel_size // 2, groups=half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)  # (B, N, in) -> (B, N, out / 2)
        z = self.cheap(y.transpose(1, 2)).transpose(1, 2)  # depthwise over tokens: (B, out / 2, N)
        return torch.stack((y, z), dim=-1).flatten(-2)  # (B, N, out / 2, 2) -> (B, N, out)


class GhostBlock(Block):
    """A backbone block whose widening maps, attention's qkv and the MLP's first layer, are ghost modules."""

    def __init__(self, dim: int, *args: Any, ghost_kernel: int = 3, **kwargs: Any) -> None:
        super().__init__(dim, *args, **kwargs)
        qkv, fc1 = self.attn.qkv, self.mlp.fc1
        self.attn.qkv = GhostLinear(dim, qkv.out_features, qkv.bias is not None, ghost_kernel)
        self.mlp.fc1 = GhostLinear(dim, fc1.out_features, fc1.bias is not None, ghost_kernel)


class DenseLayer(Block):
    """A transformer block at the current width whose MLP emits `growth_rate` new channels, concatenated to the
    layer's input as in DenseNet: (B, N, dim) -> (B, N, dim + growth_rate)."""

    def __init__(self, dim: int, growth_rate: int, num_heads: int, mlp_ratio: float = 2.0, **kwargs: Any) -> None:
        super().__init__(dim, num_heads, mlp_ratio, **kwargs)
        self.mlp = Mlp(dim, self.mlp.fc1.out_features, out_features=growth_rate, drop=kwargs.get("drop", 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.drop_path(self.attn(self.norm1(x)))
        return torch.cat((x, self.drop_path(self.mlp(self.norm2(h)))), dim=-1)


class Transition(nn.Module):
    """Between dense stages: norm, then a linear map that narrows the tokens (DenseNet's compression)."""

    def __init__(self, dim: int, out_dim: int, norm_layer: type = nn.LayerNorm) -> None:
        super().__init__()
        self.norm = norm_layer(dim)
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


class T2TViTDense(T2TViT):
    """T2T-ViT with a DenseNet-like backbone: stages of `block_config` dense layers, each adding `growth_rate`
    channels, with a transition scaling the width by `compression` between stages. `blocks` holds the dense
    layers and transitions in order; each is one index of `forward_intermediates` and `feature_info`.

    Args:
        growth_rate: channels each dense layer adds.
        block_config: dense layers per stage.
        compression: width factor of each transition.
        The rest as T2TViT; `embed_dim` is the width the tokens enter the backbone with, `num_features` the width
        at the head. `depth` and `block_fn` are set by the arguments above.
    """

    def __init__(
        self,
        growth_rate: int = 64,
        block_config: Sequence[int] = (3, 6, 6, 4),
        compression: float = 0.5,
        embed_dim: int = 128,
        num_heads: int = 8,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = False,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attn_impl: str = "sdpa",
        norm_layer: type = nn.LayerNorm,
        **kwargs: Any,
    ) -> None:
        for fixed in ("depth", "block_fn"):
            if fixed in kwargs:
                raise InputError(f"the dense model takes block_config (layers per stage), not {fixed}")
        if kwargs.get("feature_pyramid") is not None:
            raise InputError("the dense model's width changes from stage to stage: it has no feature_pyramid")
        super().__init__(
            embed_dim=embed_dim,
            depth=0,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            drop_rate=drop_rate,
            attn_impl=attn_impl,
            norm_layer=norm_layer,
            **kwargs,
        )
        num_layers = sum(block_config)
        dpr = iter([drop_path_rate * i / max(num_layers - 1, 1) for i in range(num_layers)])  # linear decay rule
        layers: List[nn.Module] = []
        widths: List[int] = []
        width = embed_dim
        for stage, n in enumerate(block_config):
            for _ in range(n):
                if width % num_heads:
                    raise InputError(
                        f"a dense layer of width {width} cannot be split into num_heads={num_heads} heads: pick "
                        "embed_dim, growth_rate and compression that keep every width a multiple of num_heads"
                    )
                layers.append(
                    DenseLayer(
                        width,
                        growth_rate,
                        num_heads,
                        mlp_ratio,
                        qkv_bias=qkv_bias,
                        qk_scale=qk_scale,
                        drop=drop_rate,
                        attn_drop=attn_drop_rate,
                        drop_path=next(dpr),
                        norm_layer=norm_layer,
                    )
                )
                width += growth_rate
                widths.append(width)
            if stage < len(block_config) - 1:
                layers.append(Transition(width, int(width * compression), norm_layer))
                width = int(width * compression)
                widths.append(width)
        self.blocks = nn.Sequential(*layers)
        reduction = math.prod(s for _, s, _ in self.soft_splits)
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=w, reduction=reduction) for i, w in enumerate(widths)]
        self.num_features = self.head_hidden_size = width
        self.norm = norm_layer(width)
        self.head = nn.Linear(width, self.num_classes) if self.num_classes > 0 else nn.Identity()
        for module in (self.blocks, self.norm, self.head):
            module.apply(init_weights)
        self.set_attn_impl(attn_impl)

    def forward_intermediates(
        self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None, norm: bool = False, **kwargs: Any
    ) -> Any:
        """As T2TViT's; `norm` is refused since the final norm has the last stage's width only."""
        if norm:
            raise InputError("the dense model's widths change from stage to stage: pass norm=False")
        return super().forward_intermediates(x, indices, norm=False, **kwargs)


# Sizes of each design-space model (the paper's ablation and CNN-design studies).
ABLATIONS: Dict[str, Dict[str, Any]] = {
    "t2t_vit_14_wo_t2t": dict(tokens="patch", patch_size=16, embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0),
    "t2t_vit_c_14": dict(tokens="convolution", embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0),
    "t2t_vit_14_se": dict(embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0, block_fn=SEBlock),
    "t2t_vit_dense": dict(embed_dim=128, growth_rate=64, block_config=(3, 6, 6, 4), num_heads=8, mlp_ratio=2.0),
    "t2t_vit_16_ghost": dict(embed_dim=384, depth=16, num_heads=6, mlp_ratio=3.0, block_fn=GhostBlock),
}

FIRST_LAYERS = {"t2t_vit_14_wo_t2t": "tokens_to_token.proj", "t2t_vit_c_14": "tokens_to_token.conv1"}
default_cfgs = generate_default_cfgs({name: _cfg(first_conv=FIRST_LAYERS.get(name, FIRST_LAYER)) for name in ABLATIONS})


@register_model
def t2t_vit_14_wo_t2t(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-14 without T2T: ViT's hard split (16 x 16 patches, linear projection) on the T2T-ViT-14 backbone."""
    return _create("t2t_vit_14_wo_t2t", pretrained, **dict(ABLATIONS["t2t_vit_14_wo_t2t"], **kwargs))


@register_model
def t2t_vit_c_14(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT_c-14: the T2T module replaced by three convolutions (kernels 7, 3, 3; strides 4, 2, 2)."""
    return _create("t2t_vit_c_14", pretrained, **dict(ABLATIONS["t2t_vit_c_14"], **kwargs))


@register_model
def t2t_vit_14_se(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-SE-14: T2T-ViT-14 with squeeze-excitation (reduction 16) on each attention output."""
    return _create("t2t_vit_14_se", pretrained, **dict(ABLATIONS["t2t_vit_14_se"], **kwargs))


@register_model
def t2t_vit_dense(pretrained: bool = False, **kwargs: Any) -> T2TViTDense:
    """T2T-ViT-Dense: width 128, growth rate 64, dense stages (3, 6, 6, 4), 8 heads, MLP ratio 2."""
    return _create("t2t_vit_dense", pretrained, T2TViTDense, **dict(ABLATIONS["t2t_vit_dense"], **kwargs))


@register_model
def t2t_vit_16_ghost(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-Ghost-16: width 384, depth 16, 6 heads, MLP ratio 3, ghost qkv and first MLP maps."""
    return _create("t2t_vit_16_ghost", pretrained, **dict(ABLATIONS["t2t_vit_16_ghost"], **kwargs))
