"""The model contract, for every registered model (the paper's variants and its design-space ablations).

Shapes, stable state-dict keys, the fast paths against the authors' arithmetic, gradient checkpointing, autocast,
TorchScript and fx, timm's head and feature API, and InputError for input the model cannot take. What is particular
to some models lives beside them: tests/test_models.py (the zoo, the Performer, sizes), tests/test_ablations.py
(the stems and blocks of the ablations), tests/test_performance.py (the fused paths' gradients and layouts),
tests/test_reference.py (the authors' logits, keys and parameter counts).
"""

import hashlib

import pytest
import timm
import torch

import t2t_vit
from t2t_vit.errors import InputError
from t2t_vit.models import (
    ABLATIONS,
    VARIANTS,
    Attention,
    T2TModule,
    T2TViT,
    TokenAttention,
    TokenPerformer,
)

from .helpers import (
    assert_checkpointing_keeps_gradients,
    assert_close_reordered,
    assert_timm_head_contract,
    network_reorder_tolerance,
)

NAMES = t2t_vit.list_models()
IMG = 64  # every registered stem (strides 4 x 2 x 2, or 16 px patches) makes a 4 x 4 token grid of it
TOKENS = 16

# (number of tensors, sha256 prefix of the "key shape" lines) of each model's state dict at its registered size:
# checkpoints saved before a refactoring must still load. `_state_dict_digest` computes an entry.
STATE_DICTS = {
    "t2t_vit_7": (111, "4dc2e9de41bb092d"),
    "t2t_vit_10": (144, "1c3b1e24f5b2ff40"),
    "t2t_vit_12": (166, "c03f368e7024ea57"),
    "t2t_vit_14": (188, "5dddd82f1eff2ccf"),
    "t2t_vit_19": (243, "bb5d8ecb4f6e5bde"),
    "t2t_vit_24": (298, "1e58bbf4dd0b578d"),
    "t2t_vit_14_resnext": (188, "5dddd82f1eff2ccf"),  # more heads, the same tensors as T2T-ViT-14
    "t2t_vit_14_se": (216, "ee8eac679089298f"),
    "t2t_vit_14_wide": (78, "2b1f78c6a7e8c7a3"),
    "t2t_vit_14_wo_t2t": (162, "c57b8b82705bbbd3"),
    "t2t_vit_16_ghost": (274, "c2b2a92b3e991ae1"),
    "t2t_vit_c_14": (166, "e39d29c4082d02a2"),
    "t2t_vit_dense": (255, "21da0ee0eb9a87dd"),
    "t2t_vit_t_14": (184, "2fd9e39d43cf0a6c"),
    "t2t_vit_t_19": (239, "5d2d47d4dc725189"),
    "t2t_vit_t_24": (294, "e5aa0ca57a6481ba"),
}

# the switches `set_attn_impl` sets, by module type: True on "sdpa", False on "eager"
SWITCHES = (
    (Attention, "fused_attn"),
    (TokenAttention, "fused_attn"),
    (TokenPerformer, "fused_kernel"),
    (T2TModule, "channels_last"),
)


def _small(name: str, img_size=IMG, **kwargs) -> T2TViT:
    """A fast stand-in at 64 px with the model's real stem and block types: two blocks (the dense model: two
    dense layers, a transition, one dense layer)."""
    size = dict(block_config=(2, 1)) if name == "t2t_vit_dense" else dict(depth=2)
    return t2t_vit.create_model(name, img_size=img_size, **size, **kwargs)


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def _state_dict_digest(model: torch.nn.Module) -> tuple:
    sd = model.state_dict()
    lines = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sd.items())
    return len(sd), hashlib.sha256(lines.encode()).hexdigest()[:16]


def _switches(model: torch.nn.Module) -> list:
    return [getattr(m, attr) for m in model.modules() for cls, attr in SWITCHES if isinstance(m, cls)]


def test_every_registered_model_is_covered():
    assert NAMES and set(NAMES) == set(VARIANTS) | set(ABLATIONS) == set(STATE_DICTS)
    assert set(NAMES) <= set(timm.list_models("t2t_vit*"))


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes(name):
    torch.manual_seed(0)
    model = _small(name, num_classes=10).eval()
    assert isinstance(model, T2TViT) and model.grid_size == (4, 4) and model.num_patches == TOKENS
    assert model.embed_dim == {**VARIANTS, **ABLATIONS}[name]["embed_dim"]
    assert model.pos_embed.shape == (1, 1 + TOKENS, model.embed_dim)
    widths = [f["num_chs"] for f in model.feature_info]
    assert len(widths) == len(model.blocks) and model.num_features == widths[-1]
    if name != "t2t_vit_dense":  # the dense model's width grows from stage to stage
        assert widths == [model.embed_dim] * len(model.blocks)
    x = _images()
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        feats = model.forward_features(x)
        assert feats.shape == (2, 1 + TOKENS, model.num_features)
        final, inter = model.forward_intermediates(x)
        assert [t.shape for t in inter] == [(2, c, 4, 4) for c in widths] and torch.equal(final, feats)
        final2, last2 = model.forward_intermediates(x, indices=2)
        assert len(last2) == 2 and all(torch.equal(a, b) for a, b in zip(last2, inter[-2:]))
        assert torch.equal(final2, feats)
        nlc = model.forward_intermediates(x, indices=[0], output_fmt="NLC", intermediates_only=True)
        assert nlc[0].shape == (2, TOKENS, widths[0])
        assert torch.equal(nlc[0].transpose(1, 2).reshape(2, widths[0], 4, 4), inter[0])


@pytest.mark.parametrize("name", NAMES)
def test_features_only_through_timm(name):
    size = dict(block_config=(2, 1)) if name == "t2t_vit_dense" else dict(depth=2)
    model = timm.create_model(name, img_size=IMG, **size, features_only=True, out_indices=(0, 1))
    maps = model(_images(1))
    assert [m.shape[1:] for m in maps] == [(c, 4, 4) for c in model.feature_info.channels()]


@pytest.mark.parametrize("name", NAMES)
def test_timm_head_contract(name):
    torch.manual_seed(0)
    assert_timm_head_contract(_small(name, num_classes=10).eval(), _images(), num_tokens=TOKENS)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_stable(name):
    with torch.device("meta"):
        full = timm.create_model(name)
    assert _state_dict_digest(full) == STATE_DICTS[name], f"{name}: {_state_dict_digest(full)}"
    torch.manual_seed(0)
    model = _small(name).eval()
    eager = _small(name, attn_impl="eager").eval()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in eager.state_dict().items()} == shapes  # the switches hold no state
    model.set_attn_impl("eager")
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    eager.load_state_dict(model.state_dict())  # strict
    x = _images()
    with torch.no_grad():
        assert torch.equal(eager(x), model(x))


@pytest.mark.parametrize("name", NAMES)
def test_sdpa_equals_eager(name):
    torch.manual_seed(0)
    model = _small(name).eval()
    assert not any(hasattr(m, "fused") for m in model.modules())  # named switches only
    assert _switches(model) and all(_switches(model))
    x = _images()
    with torch.no_grad():
        fast = model(x)
        tol = network_reorder_tolerance(model, fast, IMG)
        assert tol <= 1e-3 * fast.abs().max()  # a bound that still sees a wrong result 0.1% of the largest logit
        eager = _small(name, attn_impl="eager").eval()
        assert not any(_switches(eager))
        eager.load_state_dict(model.state_dict())
        assert_close_reordered(eager(x), fast, tol)
        model.set_attn_impl("eager")
        assert not any(_switches(model))
        assert_close_reordered(model(x), fast, tol)
        model.set_attn_impl("sdpa")
        assert all(_switches(model)) and torch.equal(model(x), fast)
    with pytest.raises(InputError, match="attn_impl"):
        model.set_attn_impl("flash")


@pytest.mark.parametrize("name", NAMES)
def test_grad_checkpointing_keeps_gradients(name):
    torch.manual_seed(0)
    model = _small(name).eval()  # no dropout: both passes compute the same
    assert_checkpointing_keeps_gradients(model, _images())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", NAMES)
def test_autocast_forward_backward_finite(name, dtype):
    torch.manual_seed(0)
    model = _small(name).train()
    with torch.autocast("cpu", dtype=dtype):
        loss = model(_images(4)).float().logsumexp(-1).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])  # the switches are TorchScript constants: both paths
@pytest.mark.parametrize("name", NAMES)
def test_torchscript_and_fx(name, attn_impl):
    torch.manual_seed(0)
    model = _small(name, attn_impl=attn_impl).eval()
    x = _images()
    with torch.no_grad():
        ref = model(x)
        tol = network_reorder_tolerance(model, ref, IMG)  # the same arithmetic, but kernels are theirs to pick
        assert_close_reordered(torch.jit.script(model)(x), ref, tol)
        assert_close_reordered(torch.fx.symbolic_trace(model)(x), ref, tol)


@pytest.mark.parametrize("name", NAMES)
def test_input_it_cannot_take_raises_input_error_naming_the_fix(name):
    model = _small(name).eval()
    with torch.no_grad():
        with pytest.raises(InputError, match=r"1 channels but the model takes 3.*in_chans=1"):
            model(torch.randn(1, 1, IMG, IMG))
        with pytest.raises(InputError, match="batch of images"):
            model(torch.randn(3, IMG, IMG))
        with pytest.raises(InputError, match=r"image height 72 cannot be tiled.*64 or 80 \(a multiple of 16\)"):
            model(torch.randn(1, 3, 72, IMG))
        with pytest.raises(InputError, match=r"image width 100 cannot be tiled.*96 or 112"):
            model(torch.randn(1, 3, IMG, 100))
        # tiled, but not the model's size
        with pytest.raises(InputError, match=r"8x8 token grid but the position table is for 4x4.*dynamic_img_size"):
            model(torch.randn(1, 3, 2 * IMG, 2 * IMG))
    with pytest.raises(InputError, match=r"image width 100 cannot be tiled"):  # an img_size it cannot tile
        _small(name, img_size=(IMG, 100))
