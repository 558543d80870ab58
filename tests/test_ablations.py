"""The paper's design-space models: their defining math, sizes and cost. The model contract they share with the
release variants is in tests/test_model_contract.py."""

import pytest
import timm
import torch
import torch.nn.functional as F

from t2t_vit.errors import InputError
from t2t_vit.models import ABLATIONS, T2TViT
from t2t_vit.models.ablations import DenseLayer, GhostLinear, SqueezeExcite
from t2t_vit.models.cost import count_params, model_cost
from t2t_vit.models.stems import ConvolutionStem, HardSplitStem
from t2t_vit.models.tokens_to_token import soft_split

from .helpers import UNIT_ROUNDOFF, assert_close_reordered, reordered_sum_tolerance

NAMES = sorted(ABLATIONS)


def _params(name: str, **kwargs) -> int:
    with torch.device("meta"):
        return count_params(timm.create_model(name, **kwargs))


def test_hard_split_is_unfold_then_linear():
    torch.manual_seed(0)
    split = HardSplitStem(3, 32, 16)
    x = torch.randn(2, 3, 64, 48)
    patches, weight, bias = soft_split(x, 16, 16, 0), split.proj.weight.reshape(32, -1), split.proj.bias
    linear = patches @ weight.t() + bias
    assert split(x).shape == (2, 12, 32)
    bound = reordered_sum_tolerance(patches.abs() @ weight.abs().t() + bias.abs(), 3 * 16 * 16 + 1)  # + the bias
    assert_close_reordered(split(x), linear, bound)
    assert split.feat_size(64, 48) == (4, 3)


def test_hard_split_model_is_t2t_vit_14_with_a_patch_stem():
    """Same backbone and position table as T2T-ViT-14; only the stem differs: 3 * 16^2 * 384 weights + 384 biases."""
    with torch.device("meta"):
        t2t = timm.create_model("t2t_vit_14")
    stem = count_params(t2t.tokens_to_token)
    assert _params("t2t_vit_14_wo_t2t") == _params("t2t_vit_14") - stem + 3 * 16 * 16 * 384 + 384
    # MACs of the stem: 14 x 14 tokens, each a 768 -> 384 projection; the head 384 -> 1000
    _, stem_and_head = model_cost("t2t_vit_14_wo_t2t", depth=0)
    assert stem_and_head == 196 * 768 * 384 + 384 * 1000


def test_convolution_tokens_keep_the_soft_split_geometry():
    tokens = timm.create_model("t2t_vit_c_14", depth=0).tokens_to_token
    assert isinstance(tokens, ConvolutionStem)
    convs = [tokens.conv1, tokens.conv2, tokens.project]
    assert [(c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [(7, 4, 2), (3, 2, 1), (3, 2, 1)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 64), (64, 64), (64, 384)]
    assert tokens(torch.randn(1, 3, 224, 224)).shape == (1, 196, 384)


def test_squeeze_excite_formula_and_se_param_count():
    torch.manual_seed(0)
    se = SqueezeExcite(32, 16)
    x = torch.randn(2, 5, 32)
    w1, w2 = se.fc1.weight, se.fc2.weight
    mean = x.mean(1)
    hidden = F.relu(mean @ w1.t())
    gate = torch.sigmoid(hidden @ w2.t())
    # the bound on |se(x) - x * gate| through the chain (first order): the mean (5 terms and a division), fc1 (32
    # terms; relu passes errors unchanged), fc2 (16), sigmoid (slope <= 1/4; each evaluation within 4 ulp), x * gate
    err = reordered_sum_tolerance(x.abs().mean(1), 5 + 1)
    err = reordered_sum_tolerance(mean.abs() @ w1.abs().t(), 32) + err @ w1.abs().t()
    err = reordered_sum_tolerance(hidden @ w2.abs().t(), 16) + err @ w2.abs().t()
    err = err / 4 + 2 * 8 * UNIT_ROUNDOFF * gate  # 4 ulp of a number in [2^k, 2^(k+1)) <= 8u of it
    y = x * gate[:, None]
    assert_close_reordered(se(x), y, x.abs() * err[:, None] + 2 * UNIT_ROUNDOFF * y.abs())
    # two bias-free 384 <-> 24 maps in each of the 14 blocks
    assert _params("t2t_vit_14_se") == _params("t2t_vit_14") + 14 * 2 * 384 * 24


def test_ghost_half_is_a_depthwise_conv_of_the_primary_half():
    torch.manual_seed(0)
    ghost = GhostLinear(16, 12, bias=True, kernel_size=3)
    x = torch.randn(2, 7, 16)
    y = ghost(x)
    primary = ghost.primary(x)
    cheap = F.conv1d(primary.transpose(1, 2), ghost.cheap.weight, ghost.cheap.bias, padding=1, groups=6)
    assert y.shape == (2, 7, 12) and torch.equal(y[..., 0::2], primary)
    w, b = ghost.cheap.weight, ghost.cheap.bias
    abs_terms = F.conv1d(primary.abs().transpose(1, 2), w.abs(), b.abs(), padding=1, groups=6)  # 3 taps + the bias
    assert_close_reordered(y[..., 1::2], cheap.transpose(1, 2), reordered_sum_tolerance(abs_terms, 4).transpose(1, 2))
    # qkv (384 -> 1152) and fc1 (384 -> 1152) of each of the 16 blocks: half the weights, plus 576 3-tap filters
    plain = 2 * (384 * 1152) + 1152  # qkv has no bias, fc1 has
    ghost_maps = 2 * (384 * 576 + 576 * 3 + 576) + 576
    assert _params("t2t_vit_16_ghost") == _params("t2t_vit_14", depth=16) - 16 * plain + 16 * ghost_maps


def test_dense_widths_grow_and_halve():
    with torch.device("meta"):
        model = timm.create_model("t2t_vit_dense")
    widths = [f["num_chs"] for f in model.feature_info]
    stage = lambda start, n: [start + 64 * (i + 1) for i in range(n)]  # noqa: E731
    expected = stage(128, 3) + [160] + stage(160, 6) + [272] + stage(272, 6) + [328] + stage(328, 4)
    assert widths == expected and model.num_features == 584 and model.head.in_features == 584
    layer = DenseLayer(32, 16, num_heads=4)
    x = torch.randn(2, 5, 32)
    y = layer(x)
    assert y.shape == (2, 5, 48) and torch.equal(y[..., :32], x)  # the input passes on unchanged


@pytest.mark.parametrize("name", NAMES)
def test_cost_is_counted(name):
    params, macs = model_cost(name)
    assert 15e6 < params < 23e6 and 3.5e9 < macs < 5e9  # the paper's ~T2T-ViT-14 budget


def test_bad_arguments_name_the_fix():
    with pytest.raises(InputError, match="tokens="):
        T2TViT(img_size=64, depth=1, tokens="pixels")
    with pytest.raises(InputError, match="block_config"):
        timm.create_model("t2t_vit_dense", depth=4)
    with pytest.raises(InputError, match="norm=False"):
        dense = timm.create_model("t2t_vit_dense", img_size=64, block_config=(2, 1))
        dense.forward_intermediates(torch.randn(1, 3, 64, 64), norm=True)
