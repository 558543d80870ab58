"""T2T-ViT registered in timm: the paper's variants (T2T-ViT-7 ... -24, T2T-ViT_t-14 ... -24) and two of its
design-space backbones, with the authors' releases as pretrained tags.

The model is vit.py's; the variants' sizes and the releases are in variants.py; checkpoint_filter.py fits their
state dicts.
"""

from typing import Any, Callable, Dict, Optional

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .checkpoint_filter import checkpoint_filter_fn
from .variants import FIRST_LAYER, FIRST_LAYER_T, RELEASES, VARIANTS, _cfg
from .vit import T2TViT

# Where `pretrained=True` finds its file: `t2t_vit.pretrained` sets this when the package is imported, so that the
# models reach the release addresses and the download without importing the code above them.
PretrainedSource = Callable[[str, Any, Optional[Dict[str, Any]]], Dict[str, Any]]
_pretrained_source: Optional[PretrainedSource] = None


def set_pretrained_source(source: PretrainedSource) -> None:
    """Install `source(variant, pretrained_cfg, overlay) -> overlay`, which resolves `pretrained=True` to a file."""
    global _pretrained_source
    _pretrained_source = source


def _create(variant: str, pretrained: bool = False, model_cls: type = T2TViT, **kwargs: Any) -> T2TViT:
    out_indices = kwargs.pop("out_indices", 3 if kwargs.get("feature_pyramid") is None else 4)  # pyramid: all
    if pretrained and _pretrained_source is not None:  # a release address, a file or a local-dir: load_pretrained
        kwargs["pretrained_cfg_overlay"] = _pretrained_source(
            variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay")
        )
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


default_cfgs = generate_default_cfgs(
    {
        **{
            tag: _cfg(rel, FIRST_LAYER_T if tag.startswith("t2t_vit_t_") else FIRST_LAYER)
            for tag, rel in RELEASES.items()
        },
        "t2t_vit_14_resnext": _cfg(),
        "t2t_vit_14_wide": _cfg(),
    }
)


@register_model
def t2t_vit_7(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-7: Performer T2T, width 256, depth 7, 4 heads, MLP ratio 2."""
    return _create("t2t_vit_7", pretrained, **dict(VARIANTS["t2t_vit_7"], **kwargs))


@register_model
def t2t_vit_10(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-10: Performer T2T, width 256, depth 10, 4 heads, MLP ratio 2."""
    return _create("t2t_vit_10", pretrained, **dict(VARIANTS["t2t_vit_10"], **kwargs))


@register_model
def t2t_vit_12(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-12: Performer T2T, width 256, depth 12, 4 heads, MLP ratio 2."""
    return _create("t2t_vit_12", pretrained, **dict(VARIANTS["t2t_vit_12"], **kwargs))


@register_model
def t2t_vit_14(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-14: Performer T2T, width 384, depth 14, 6 heads, MLP ratio 3."""
    return _create("t2t_vit_14", pretrained, **dict(VARIANTS["t2t_vit_14"], **kwargs))


@register_model
def t2t_vit_19(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-19: Performer T2T, width 448, depth 19, 7 heads, MLP ratio 3."""
    return _create("t2t_vit_19", pretrained, **dict(VARIANTS["t2t_vit_19"], **kwargs))


@register_model
def t2t_vit_24(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-24: Performer T2T, width 512, depth 24, 8 heads, MLP ratio 3."""
    return _create("t2t_vit_24", pretrained, **dict(VARIANTS["t2t_vit_24"], **kwargs))


@register_model
def t2t_vit_t_14(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT_t-14: Transformer T2T, width 384, depth 14, 6 heads, MLP ratio 3."""
    return _create("t2t_vit_t_14", pretrained, **dict(VARIANTS["t2t_vit_t_14"], **kwargs))


@register_model
def t2t_vit_t_19(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT_t-19: Transformer T2T, width 448, depth 19, 7 heads, MLP ratio 3."""
    return _create("t2t_vit_t_19", pretrained, **dict(VARIANTS["t2t_vit_t_19"], **kwargs))


@register_model
def t2t_vit_t_24(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT_t-24: Transformer T2T, width 512, depth 24, 8 heads, MLP ratio 3."""
    return _create("t2t_vit_t_24", pretrained, **dict(VARIANTS["t2t_vit_t_24"], **kwargs))


@register_model
def t2t_vit_14_resnext(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-14-ResNeXt: T2T-ViT-14 with 32 heads (the paper's split-transform-merge study)."""
    return _create("t2t_vit_14_resnext", pretrained, **dict(VARIANTS["t2t_vit_14_resnext"], **kwargs))


@register_model
def t2t_vit_14_wide(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-14-Wide: shallow-wide backbone, width 768, depth 4, 12 heads, MLP ratio 3."""
    return _create("t2t_vit_14_wide", pretrained, **dict(VARIANTS["t2t_vit_14_wide"], **kwargs))
