"""The zoo in particular: timm registration and cfgs, the Performer and the sinusoid table, SDPA vs eager at 224 px,
image sizes. What every model must do is in tests/test_model_contract.py."""

import math
import re

import numpy as np
import pytest
import timm
import torch

from t2t_vit.errors import InputError
from t2t_vit.models import T2TViT, TokenPerformer, sinusoid_table
from t2t_vit.models.kernels import _performer_kernel, _performer_kernel_eager

from .helpers import (
    SMALL,
    UNIT_ROUNDOFF,
    assert_close_reordered,
    network_reorder_tolerance,
    reordered_sum_tolerance,
)


def test_registered_in_timm_on_import():
    assert "t2t_vit_14" in timm.list_models("t2t_vit*")
    model = timm.create_model("t2t_vit_14")
    assert isinstance(model, T2TViT) and model.pretrained_cfg["crop_pct"] == 0.9
    assert model.pretrained_cfg["interpolation"] == "bicubic"
    assert "81.5_T2T_ViT_14.pth.tar" in model.pretrained_cfg["description"]


def test_384_cfg_sets_the_image_size():
    model = timm.create_model("t2t_vit_14.in1k_384")
    assert model.img_size == (384, 384) and model.pos_embed.shape == (1, 577, 384)
    assert "83.3_T2T_ViT_14.pth.tar" in model.pretrained_cfg["description"]


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14"])
def test_sdpa_equals_eager_at_224(name):
    torch.manual_seed(0)
    model = timm.create_model(name, depth=2).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        fused = model(x)
        model.set_attn_impl("eager")
        eager = model(x)
    assert_close_reordered(fused, eager, network_reorder_tolerance(model, fused, 224))  # 3136 tokens: 3.7e-4 x max


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_performer_kernel_equals_the_authors_arithmetic(scale):
    """At scale 1 the exponents w x - |x|^2 / 2 are sums of terms ~60 in magnitude near -32, and exp turns their
    rounding into relative errors of the features: the bound is ~2% of the output, and with a few keys carrying all
    the weight, one key left out moves nothing. At 0.5 they are O(1): the bound is ~1e-4 of the output, and one key
    or one feature left out exceeds it 800-fold or more."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 50, 64).unbind(0)
    q, k = q * scale, k * scale
    w = torch.nn.init.orthogonal_(torch.randn(32, 64)) * math.sqrt(32)
    fast = _performer_kernel(q, k, v, w, 1e-8)
    assert_close_reordered(fast, _performer_kernel_eager(q, k, v, w, 1e-8), 2 * _performer_error(q, k, v, w, fast))


def _performer_error(q, k, v, w, y):
    """A first-order bound on |y - exact| for y = phi(q) (phi(k)^T v) / (phi(q) . sum_t phi(k_t)) in fp32, either
    arithmetic; two of them differ by at most twice it. gamma(n) is the one-sided reordered-sum bound.

    phi = exp(w x - |x|^2 / 2) / sqrt(m): its exponent sums e products and the squared norm's e terms (plus the
    shift, a sqrt and a square: e + 4 roundings on the longest path); an absolute error in the exponent is a
    relative one in phi, and exp and the scaling add 4 more (exp within 1 ulp, the rest correctly rounded).
    """
    gamma = lambda n: reordered_sum_tolerance(1.0, n) / 2  # noqa: E731
    (_, T, e), m = q.shape, w.shape[0]

    def phi_and_relative_error(x):
        exponent_terms = x.abs() @ w.abs().t() + (x * x).sum(-1, keepdim=True) / 2 + 0.5 * math.log(m)
        phi = torch.exp(x @ w.t() - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(m)
        return phi, gamma(e + 4) * exponent_terms + 4 * UNIT_ROUNDOFF

    (qp, rq), (kp, rk) = phi_and_relative_error(q), phi_and_relative_error(k)
    kv = kp.transpose(1, 2) @ v  # (B, m, e): sums over the T keys
    kv_err = (kp * (rk + gamma(T))).transpose(1, 2) @ v.abs()
    ks = kp.sum(1)  # (B, m)
    ks_err = (kp * (rk + gamma(T))).sum(1)
    num_err = (qp * (rq + gamma(m))) @ kv.abs() + qp @ kv_err  # sums over the m features
    den = qp @ ks.unsqueeze(-1)  # (B, T, 1), positive
    den_err = (qp * (rq + gamma(m))) @ ks.unsqueeze(-1) + qp @ ks_err.unsqueeze(-1) + UNIT_ROUNDOFF * den  # + eps
    return num_err / den + y.abs() * den_err / den + UNIT_ROUNDOFF * y.abs()  # the quotient, rounded


def test_performer_random_features_are_fixed_orthogonal_rows():
    layer = TokenPerformer(147, 64)
    assert not layer.w.requires_grad and "w" in layer.state_dict()
    torch.testing.assert_close(layer.w @ layer.w.t(), 32 * torch.eye(32), atol=1e-4, rtol=0)


@pytest.mark.parametrize("mixer, authors", [("performer", 0.1), ("transformer", 0.0)])
def test_t2t_drop_rate_defaults_to_the_authors_and_can_be_set(mixer, authors):
    def drops(**kwargs):
        with torch.device("meta"):
            model = T2TViT(
                img_size=28,
                embed_dim=32,
                depth=1,
                num_heads=2,
                token_dim=8,
                t2t_mixer=mixer,
                soft_splits=[[3, 2, 1], [3, 2, 1], [3, 1, 1]],
                **kwargs,
            )
        dropouts = [
            m
            for n, m in model.tokens_to_token.named_modules()
            if isinstance(m, torch.nn.Dropout) and not n.endswith("attn_drop")
        ]  # softmax attention's: 0, as the authors'
        return {m.p for m in dropouts}, model

    assert drops()[0] == {authors}
    rates, model = drops(t2t_drop_rate=0.25)
    assert rates == {0.25}
    assert set(model.state_dict()) == set(drops()[1].state_dict())  # no weights added: checkpoints load as before
    for bad in (1.0, "abc"):
        with pytest.raises(InputError, match=f"t2t_drop_rate={bad!r}"):
            drops(t2t_drop_rate=bad)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(token_dim=0), "token_dim=0 must be a whole number >= 1"),  # was a ValueError in the Performer's split
        (dict(num_heads=0), "num_heads=0 must be a whole number >= 1"),  # was a ZeroDivisionError
        (dict(embed_dim=32.0), "embed_dim=32.0 must be a whole number >= 1"),
        (dict(depth=-1), "depth=-1 must be a whole number >= 0"),
        (dict(mlp_ratio=0), "mlp_ratio=0 must be a number above 0"),  # trained with MLPs of width 0
        (dict(embed_dim=30), "embed_dim=30 must be divisible by num_heads=4"),
    ],
)
def test_sizes_no_model_can_have_are_named(bad, message):
    sizes = dict(
        img_size=28, embed_dim=32, depth=1, num_heads=4, token_dim=8, soft_splits=[[3, 2, 1]] * 2 + [[3, 1, 1]]
    )
    with pytest.raises(InputError, match=re.escape(message)):
        T2TViT(**{**sizes, **bad})
    assert T2TViT(**{**sizes, "depth": 0})(torch.rand(1, 3, 28, 28)).shape == (1, 1000)  # timm's ViT takes depth 0


def test_sinusoid_table_is_the_authors_formula():
    n, d = 197, 384
    angle = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    angle[:, 0::2], angle[:, 1::2] = np.sin(angle[:, 0::2]), np.cos(angle[:, 1::2])
    assert torch.equal(sinusoid_table(n, d), torch.FloatTensor(angle).unsqueeze(0))
    model = timm.create_model("t2t_vit_14")
    assert not model.pos_embed.requires_grad and torch.equal(model.pos_embed, sinusoid_table(n, d))


def test_performer_kernel_stays_fp32_under_half_autocast():
    """Large q/k overflow |x|^2 / 2 in fp16 (65504 max); the kernel must not see half precision."""
    torch.manual_seed(0)
    layer = TokenPerformer(147, 64).eval()
    with torch.no_grad():
        layer.kqv.weight.mul_(400.0)
    x = torch.randn(2, 49, 147)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        q = layer.kqv(layer.norm1(x))[..., 64:128]
        assert q.dtype == torch.float16 and not torch.isfinite((q * q).sum(-1)).all()  # half would overflow
        y = layer(x)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14"])
@pytest.mark.parametrize("dtype, mantissa_bits", [(torch.bfloat16, 8), (torch.float16, 11)])
def test_half_and_bfloat16_models_run(name, dtype, mantissa_bits):
    """`.half()` / `.bfloat16()` models: the Performer's fp32 island casts its random features and input itself and
    hands back the model's dtype. Bound: 64 roundings of relative size 2^-bits along the longest path (an
    estimate, about 10x what these runs show); a model that mixed dtypes or dropped a term is off by O(1)."""
    torch.manual_seed(0)
    model, x = timm.create_model(name, img_size=32, depth=2).eval(), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model.to(dtype)(x.to(dtype))
    assert out.dtype == dtype and model.head.weight.dtype == dtype
    assert (out.float() - ref).abs().max() <= 64 * 2.0**-mantissa_bits * ref.abs().max()


def test_384_px():
    model = timm.create_model("t2t_vit_7", img_size=384, depth=1).eval()
    assert model.grid_size == (24, 24) and model.pos_embed.shape == (1, 577, 256)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 384, 384)).shape == (1, 1000)


def test_non_square_inputs():
    model = timm.create_model("t2t_vit_t_14", img_size=(64, 96), depth=1).eval()
    assert model.grid_size == (4, 6) and model.pos_embed.shape == (1, 25, 384)
    with torch.no_grad():
        _, (inter,) = model.forward_intermediates(torch.randn(1, 3, 64, 96), indices=1)
    assert inter.shape == (1, 384, 4, 6)


def test_dynamic_img_size_resamples_positions():
    model = timm.create_model("t2t_vit_7", **SMALL, dynamic_img_size=True).eval()
    with torch.no_grad():
        _, (inter,) = model.forward_intermediates(torch.randn(1, 3, 96, 128), indices=1)
        assert inter.shape == (1, 256, 6, 8)
        x = torch.randn(1, 3, 64, 64)  # at the native size the stored table is used as is
        static = timm.create_model("t2t_vit_7", **SMALL).eval()
        static.load_state_dict(model.state_dict())
        assert torch.equal(model(x), static(x))


@pytest.mark.parametrize(
    "img_size,soft_splits,grid",
    [(28, ((3, 2, 1), (3, 2, 1), (3, 1, 1)), (7, 7)), (32, ((3, 2, 1), (3, 2, 1), (3, 1, 1)), (8, 8))],
)
def test_small_images_are_one_config_away(img_size, soft_splits, grid):
    model = T2TViT(
        img_size=img_size,
        in_chans=1,
        num_classes=10,
        embed_dim=64,
        depth=2,
        num_heads=2,
        token_dim=32,
        soft_splits=soft_splits,
    )
    assert model.grid_size == grid
    assert model(torch.randn(2, 1, img_size, img_size)).shape == (2, 10)
