"""The T2T-ViT model: the Tokens-to-Token module (or a design-space stem) in front of a deep-narrow ViT backbone
with a class token, a fixed sinusoid position table, LayerNorm and a linear head; timm's model API.

Paper: "Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet" (Yuan et al., ICCV 2021).
"""

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import to_2tuple, trunc_normal_
from timm.models import checkpoint_seq, register_notrace_function
from timm.models._features import feature_take_indices
from torch import nn

from ..errors import InputError, is_int, is_number
from .layers import ATTN_IMPLS, Attention, Block, fit_pos_embed, sinusoid_table
from .pyramid import T2TFeaturePyramid, make_pyramid
from .stems import make_stem
from .tokens_to_token import DEFAULT_SOFT_SPLITS, T2TModule, TokenAttention, TokenPerformer, grid_size, split_grid

GLOBAL_POOLS = ("token", "avg", "")
# a leaf for fx, not traced into: torch.fx.wrap patches the name in the calling module, so it is declared here
torch.fx.wrap("fit_pos_embed")


@torch.fx.wrap
@register_notrace_function
def check_image(x: torch.Tensor, in_chans: int, soft_splits: List[Tuple[int, int, int]]) -> Tuple[int, int]:
    """The token grid of a batch of images; InputError naming the problem if the batch is not one."""
    if torch.jit.is_scripting():  # scripted (e.g. after fx tracing): the grid without the checks' messages
        return split_grid(x.shape[2], x.shape[3], soft_splits)
    if x.dim() != 4:
        raise InputError(f"expected a batch of images (B, C, H, W), got a tensor of shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise InputError(
            f"input has {x.shape[1]} channels but the model takes {in_chans}: convert the images "
            f"(e.g. grayscale to RGB), or create the model with in_chans={x.shape[1]}"
        )
    return grid_size((int(x.shape[2]), int(x.shape[3])), soft_splits)


def _check_sizes(**sizes: int) -> None:
    """InputError naming a size that is not a whole number (depth may be 0, the others at least 1)."""
    for name, value in sizes.items():
        low = 0 if name == "depth" else 1
        if not (is_int(value) and value >= low):
            raise InputError(f"{name}={value!r} must be a whole number >= {low}")


class T2TViT(nn.Module):
    """Tokens-to-Token ViT.

    Args:
        img_size: input size, int or (height, width); sets the position table.
        in_chans: input channels.
        num_classes: classes of the linear head (0 for none).
        global_pool: "token" (class token, the paper's), "avg" (mean of patch tokens) or "" (no pooling).
        embed_dim, depth, num_heads, mlp_ratio: backbone sizes.
        qkv_bias: bias in the backbone's qkv projection (the paper has none).
        qk_scale: attention scale; None is head_dim^-0.5.
        drop_rate, attn_drop_rate, drop_path_rate: dropout after the position table / in attention, drop path.
        t2t_mixer: "performer" or "transformer", the token mixer of the T2T module.
        t2t_drop_rate: dropout inside the T2T module's mixers; None (default) keeps the authors' (0.1 in the
            Performer, hard-wired in their code; 0 in the Transformer).
        token_dim: token width inside the T2T module.
        soft_splits: three (kernel, stride, padding) triples for the unfolds of the T2T module (the convolutions
            of tokens="convolution").
        dynamic_img_size: accept any image size the soft splits tile, resampling the position table.
        attn_impl: "sdpa" (the fast paths, default) or "eager" (the authors' arithmetic op for op): see
            `set_attn_impl`.
        norm_layer: the norm of the blocks and the final norm.
        tokens: the stem (models/stems.py): "t2t" (the T2T module, default), "patch" (ViT's hard split into
            `patch_size` squares) or "convolution" (the soft splits replaced by convolutions of the same kernel,
            stride and padding).
        patch_size: side of the hard split's squares (tokens="patch" only).
        block_fn: the backbone block class, called as Block is (see models/ablations.py for others).
        aux_head: add Token Labeling's auxiliary head over the patch tokens; the logits become
            head(class token) + 0.5 * max over tokens of aux_head(token), as Token Labeling evaluates.
        feature_pyramid: None (default): `forward_intermediates` and `feature_info` are the blocks, all at the
            token stride. "t2t": four levels, the T2T module's re-structurized token images, the last block and its
            max-pool (strides 4, 8, 16, 32 at 224 px); "simple": ViTDet's simple feature pyramid from the last
            block (the same strides). See models/pyramid.py.
    """

    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        t2t_mixer: str = "performer",
        t2t_drop_rate: Optional[float] = None,
        token_dim: int = 64,
        soft_splits: Sequence[Sequence[int]] = DEFAULT_SOFT_SPLITS,
        dynamic_img_size: bool = False,
        attn_impl: str = "sdpa",
        norm_layer: type = nn.LayerNorm,
        tokens: str = "t2t",
        patch_size: int = 16,
        block_fn: type = Block,
        aux_head: bool = False,
        feature_pyramid: Optional[str] = None,
    ) -> None:
        super().__init__()
        if global_pool not in GLOBAL_POOLS:
            raise InputError(f"global_pool={global_pool!r} is not one of {GLOBAL_POOLS}")
        _check_sizes(embed_dim=embed_dim, num_heads=num_heads, token_dim=token_dim, in_chans=in_chans, depth=depth)
        if not (is_number(mlp_ratio) and mlp_ratio > 0):
            raise InputError(f"mlp_ratio={mlp_ratio!r} must be a number above 0")
        if embed_dim % num_heads:
            raise InputError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False

        # the stem, named for the T2T module (the authors' keys) whichever one `tokens` picks
        self.tokens_to_token = make_stem(
            tokens, t2t_mixer, in_chans, embed_dim, token_dim, soft_splits, patch_size, t2t_drop_rate
        )
        self.soft_splits = self.tokens_to_token.soft_splits
        self.img_size = to_2tuple(img_size)
        self.grid_size = grid_size(self.img_size, self.soft_splits)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # fixed, never trained: a buffer (timm's habit), saved under the authors' key
        self.register_buffer("pos_embed", sinusoid_table(self.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear decay rule
        self.blocks = nn.Sequential(
            *[
                block_fn(
                    embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, dpr[i], norm_layer
                )
                for i in range(depth)
            ]
        )
        reduction = math.prod(s for _, s, _ in self.soft_splits)
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=reduction) for i in range(depth)]
        self.pyramid = None
        if feature_pyramid is not None:
            self.pyramid, self.feature_info = make_pyramid(
                feature_pyramid, self.tokens_to_token, token_dim, embed_dim, depth
            )
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.aux_head = nn.Linear(embed_dim, num_classes) if aux_head and num_classes > 0 else None

        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)
        self.set_attn_impl(attn_impl)

    def set_attn_impl(self, attn_impl: str) -> None:
        """Switch every fast path on ("sdpa") or run the authors' arithmetic op for op ("eager").

        Sets, by module type: `fused_attn` of the backbone's and the T2T module's softmax attention (SDPA or the
        explicit math), `fused_kernel` of the Performer (the fast kernel or the authors' einsums) and
        `channels_last` of the T2T module (channels-last soft splits or the authors' unfold layout). The switches
        are TorchScript constants: script the model after choosing.
        """
        if attn_impl not in ATTN_IMPLS:
            raise InputError(f"attn_impl={attn_impl!r} is not one of {ATTN_IMPLS}")
        fast = attn_impl == "sdpa"
        for m in self.modules():
            if isinstance(m, (Attention, TokenAttention)):
                m.fused_attn = fast
            elif isinstance(m, TokenPerformer):
                m.fused_kernel = fast
            elif isinstance(m, T2TModule):
                m.channels_last = fast

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"cls_token", "pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^cls_token|^pos_embed|^tokens_to_token",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm|^pyramid", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise InputError(f"global_pool={global_pool!r} is not one of {GLOBAL_POOLS}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if self.aux_head is not None:
            self.aux_head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else None

    def _position_table(self, x: torch.Tensor) -> Tuple[Tuple[int, int], torch.Tensor]:
        """The token grid of images `x` (InputError if they are not a batch the model takes) and its positions."""
        if torch.jit.is_scripting():  # TorchScript: the model's own img_size only
            return self.tokens_to_token.feat_size(x.shape[2], x.shape[3]), self.pos_embed
        grid = check_image(x, self.in_chans, self.soft_splits)
        return grid, fit_pos_embed(self.pos_embed, grid, self.grid_size, self.dynamic_img_size)

    def _embed(self, x: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, C) -> with the class token and positions (B, 1 + N, C)."""
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return self.pos_drop(x + pos_embed)

    def _tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Images -> (tokens with class token and positions (B, 1 + N, C), token grid)."""
        grid, pos_embed = self._position_table(x)
        return self._embed(self.tokens_to_token(x), pos_embed), grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self._tokens(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        tokens = x[:, self.num_prefix_tokens :]
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            x = tokens.mean(dim=1)
        if pre_logits:
            return x
        if self.aux_head is not None:  # Token Labeling's evaluation: class logits + 0.5 x each class's best token
            return self.head(x) + 0.5 * self.aux_head(tokens).max(dim=1)[0]
        return self.head(x)

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str) -> None:
        """timm's `custom_load` hook: read a file through the project's safe reader (every layout of the
        authors' tools, weights_only), fit head and position table, load."""
        from .checkpoint_filter import load_checkpoint

        load_checkpoint(self, checkpoint_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Block outputs as feature maps (NCHW, class token dropped) or token sequences (NLC), timm-style; with
        `feature_pyramid`, the pyramid's levels instead (`feature_info` lists either).

        Args:
            indices: the last n blocks (levels) if int, all if None, else these indices.
            norm: apply the final norm to each intermediate (pyramid: to the last block, before the pyramid).
            stop_early: stop after the last requested block (pyramid: skip the blocks if no level needs them).
            output_fmt: "NCHW" or "NLC".
            intermediates_only: return only the intermediates.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise InputError(f"output_fmt={output_fmt!r} must be 'NCHW' or 'NLC'")
        if self.pyramid is not None:
            take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
            x, levels = self._pyramid_levels(x, norm, stop_early and max_index < self.pyramid.first_block_level)
            intermediates = [levels[i] for i in take_indices]
            if output_fmt == "NLC":
                intermediates = [y.flatten(2).transpose(1, 2) for y in intermediates]  # (B, C, H, W) -> (B, HW, C)
            return intermediates if intermediates_only else (x, intermediates)
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B = x.shape[0]
        x, (H, W) = self._tokens(x)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[: max_index + 1]
        intermediates = []
        for i, blk in enumerate(blocks):
            x = blk(x)
            if i in take_indices:
                y = (self.norm(x) if norm else x)[:, self.num_prefix_tokens :]
                if output_fmt == "NCHW":
                    y = y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()  # (B, N, C) -> (B, C, H, W)
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def _pyramid_levels(
        self, x: torch.Tensor, norm: bool, skip_blocks: bool
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(final tokens, the pyramid's levels, finest first); `skip_blocks`: the T2T module's levels only."""
        B = x.shape[0]
        (H, W), pos_embed = self._position_table(x)
        if isinstance(self.pyramid, T2TFeaturePyramid):
            x, images = self.tokens_to_token.forward_restructurized(x)
        else:
            x, images = self.tokens_to_token(x), []
        x = self._embed(x, pos_embed)
        if skip_blocks:
            return self.norm(x), images
        x = checkpoint_seq(self.blocks, x) if self.grad_checkpointing else self.blocks(x)
        y = (self.norm(x) if norm else x)[:, self.num_prefix_tokens :]
        return self.norm(x), self.pyramid(images, y.reshape(B, H, W, -1).permute(0, 3, 1, 2))  # (B, C, H, W)

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop the blocks (and optionally norm and head) that the requested intermediates do not need; the
        state-dict keys that go are kept in `pruned_keys`, so that a checkpoint still loads (`load_checkpoint`)."""
        before = set(self.state_dict())
        if self.pyramid is not None:
            take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
            if max_index < self.pyramid.first_block_level:
                self.blocks = self.blocks[:0]
        else:
            take_indices, max_index = feature_take_indices(len(self.blocks), indices)
            self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        self.pruned_keys = sorted(before - set(self.state_dict()))
        return take_indices


def init_weights(m: nn.Module) -> None:
    """A layer's initialisation as T2T-ViT's (`module.apply` it): linear weights truncated normal (std 0.02), their
    biases 0; LayerNorms 1 and 0."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
