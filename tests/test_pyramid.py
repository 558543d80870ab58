"""The feature pyramids (`feature_pyramid="t2t"` / `"simple"`): levels, strides and feature_info at square,
non-square and Fashion-MNIST sizes, their values against the arithmetic done by hand, the authors' checkpoints
loading into them, ONNX, and the sizes they cannot take."""

import logging
import math

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml

import t2t_vit
from t2t_vit.errors import InputError
from t2t_vit.models import soft_split

from .helpers import (
    ROOT,
    TINY_MODEL,
    assert_close_reordered,
    checkpoint_saver_layout,
    network_reorder_tolerance,
    official_state_dict,
    reordered_sum_tolerance,
)

PYRAMIDS = ["t2t", "simple"]
MIXERS = ["t2t_vit_14", "t2t_vit_t_14"]  # the Performer and the Transformer T2T module, width 384
WIDTH, TOKEN_DIM = 384, 64
CHANNELS = {"t2t": [TOKEN_DIM, TOKEN_DIM, WIDTH, WIDTH], "simple": [WIDTH // 4, WIDTH // 2, WIDTH, WIDTH]}
FASHION = yaml.safe_load((ROOT / "src" / "t2t_vit" / "configs" / "fashion_mnist.yaml").read_text())


def _images(h: int, w: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _levels(model: torch.nn.Module, x: torch.Tensor) -> list:
    with torch.no_grad():
        return model.eval()(x)


def _assert_levels(maps: list, feature_info, size: tuple, channels: list, reductions: list) -> None:
    """feature_info says `channels` and `reductions`, and each map is (B, channels, ceil(size / reduction))."""
    assert feature_info.channels() == channels and feature_info.reduction() == reductions
    assert feature_info.out_indices == (0, 1, 2, 3)
    shapes = [(c, math.ceil(size[0] / r), math.ceil(size[1] / r)) for c, r in zip(channels, reductions)]
    assert [tuple(m.shape[1:]) for m in maps] == shapes
    assert all(torch.isfinite(m).all() for m in maps)


@pytest.mark.parametrize("size", [(224, 224), (224, 320)], ids=["224", "224x320"])
@pytest.mark.parametrize("pyramid", PYRAMIDS)
@pytest.mark.parametrize("name", MIXERS)
def test_levels_at_strides_4_8_16_32(name, pyramid, size):
    model = timm.create_model(name, depth=1, features_only=True, feature_pyramid=pyramid, dynamic_img_size=True)
    maps = _levels(model, _images(*size))
    _assert_levels(maps, model.feature_info, size, CHANNELS[pyramid], [4, 8, 16, 32])
    # 224 x 320: 56 x 80, 28 x 40, 14 x 20 and 7 x 10 maps


@pytest.mark.parametrize("size", [(28, 28), (28, 36)], ids=["28", "28x36"])
@pytest.mark.parametrize("pyramid", PYRAMIDS)
def test_levels_of_the_fashion_mnist_splits(pyramid, size):
    """Strides 2, 2, 1: the T2T images at 2 and 4, the blocks at 4; an odd grid (7 x 9) pools to 4 x 5."""
    model = t2t_vit.create_model(
        FASHION["model"],
        img_size=FASHION["img_size"],
        **FASHION["model_kwargs"],
        features_only=True,
        feature_pyramid=pyramid,
        dynamic_img_size=True,
    )
    width, token_dim = FASHION["model_kwargs"]["embed_dim"], FASHION["model_kwargs"]["token_dim"]
    channels = {"t2t": [token_dim, token_dim, width, width], "simple": [width // 4, width // 2, width, width]}
    reductions = {"t2t": [2, 4, 4, 8], "simple": [1, 2, 4, 8]}
    maps = _levels(model, _images(*size))
    _assert_levels(maps, model.feature_info, size, channels[pyramid], reductions[pyramid])


def _max_pool_by_hand(x: torch.Tensor) -> torch.Tensor:
    """2 x 2 windows, stride 2, an odd last row or column a window of its own."""
    B, C, H, W = x.shape
    x = F.pad(x, (0, W % 2, 0, H % 2), value=-math.inf)
    return x.reshape(B, C, (H + 1) // 2, 2, (W + 1) // 2, 2).amax((3, 5))


def _last_block(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last block's map of the same weights in a model without a pyramid."""
    plain = t2t_vit.create_model(
        model.pretrained_cfg["architecture"], depth=len(model.blocks), img_size=model.img_size, num_classes=0
    )
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("pyramid.")})
    with torch.no_grad():
        return plain.eval().forward_intermediates(x, indices=1, intermediates_only=True)[0]


@pytest.mark.parametrize("name", MIXERS)
def test_t2t_levels_are_the_re_structurized_tokens_the_last_block_and_its_max_pool(name):
    torch.manual_seed(0)
    model = t2t_vit.create_model(name, img_size=(64, 96), depth=2, num_classes=0, feature_pyramid="t2t").eval()
    assert not [k for k in model.state_dict() if k.startswith("pyramid.")]  # no new weights
    x = _images(64, 96)
    with torch.no_grad():
        final, levels = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        # the authors' steps, by hand: unfold, T2T layer, tokens back to an image (B, token_dim, H, W)
        t2t = model.tokens_to_token
        (k0, s0, p0), (k1, s1, p1), _ = t2t.soft_splits
        t1 = t2t.attention1(soft_split(x, k0, s0, p0)).transpose(1, 2).reshape(2, TOKEN_DIM, 16, 24)
        t2 = t2t.attention2(soft_split(t1, k1, s1, p1)).transpose(1, 2).reshape(2, TOKEN_DIM, 8, 12)
        assert_close_reordered(levels[0], t1, network_reorder_tolerance(model, t1, 64, 96))
        assert_close_reordered(levels[1], t2, network_reorder_tolerance(model, t2, 64, 96))
        assert torch.equal(levels[2], _last_block(model, x))
        assert torch.equal(levels[3], _max_pool_by_hand(levels[2]))
        # a choice of levels, as sequences; stop_early skips the blocks when only the T2T module's are asked for
        nlc = model.forward_intermediates(x, indices=[1, 3], output_fmt="NLC", intermediates_only=True)
        assert [torch.equal(a, b.flatten(2).transpose(1, 2)) for a, b in zip(nlc, levels[1::2])] == [True, True]
        model.blocks = None  # would fail if called
        early = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(early, levels[:2]))


def test_t2t_levels_agree_on_every_path_of_the_t2t_module():
    """The authors' layout (attn_impl="eager"), the fused channels-last one, and that one over slices of the batch
    (on CPU, batches of over 2 images at 224 px)."""
    torch.manual_seed(0)
    model = t2t_vit.create_model("t2t_vit_7", depth=1, num_classes=0, feature_pyramid="t2t").eval()
    x = _images(224, 224, n=3)
    with torch.no_grad():
        sliced = model.forward_intermediates(x, intermediates_only=True)
        for i in range(3):
            one = model.forward_intermediates(x[i : i + 1], intermediates_only=True)
            for a, b in zip(sliced, one):
                assert_close_reordered(a[i : i + 1], b, network_reorder_tolerance(model, b, 224))
        model.set_attn_impl("eager")
        for a, b in zip(model.forward_intermediates(x, intermediates_only=True), sliced):
            assert_close_reordered(a, b, network_reorder_tolerance(model, b, 224))


def _deconv_by_hand(x: torch.Tensor, deconv: torch.nn.ConvTranspose2d) -> tuple:
    """A 2 x 2 stride-2 deconvolution as the sum it is, out[o, 2i + k, 2j + l] = sum_c x[c, i, j] w[c, o, k, l] + b[o],
    and its reordered-sum tolerance (the same sum over absolute values, C + 1 terms)."""
    B, C, H, W = x.shape
    w, b = deconv.weight, deconv.bias[None, :, None, None]
    out = torch.einsum("bchw,cokl->bohkwl", x, w).reshape(B, -1, 2 * H, 2 * W) + b
    terms = torch.einsum("bchw,cokl->bohkwl", x.abs(), w.abs()).reshape(B, -1, 2 * H, 2 * W) + b.abs()
    return out, reordered_sum_tolerance(terms, C + 1)


@pytest.mark.parametrize("name", MIXERS)
def test_simple_levels_are_vitdet_deconvolutions_and_pooling_of_the_last_block(name):
    torch.manual_seed(0)
    model = t2t_vit.create_model(name, img_size=(64, 96), depth=2, num_classes=0, feature_pyramid="simple").eval()
    pyramid = model.pyramid
    for deconv in (pyramid.up2, pyramid.up4[0], pyramid.up4[3]):  # new weights, as the model's linear layers
        assert deconv.bias.abs().max() == 0 and abs(deconv.weight.std().item() - 0.02) < 0.002
    x = _images(64, 96)
    with torch.no_grad():
        levels = model.forward_intermediates(x, intermediates_only=True)
        last = _last_block(model, x)
        assert torch.equal(levels[2], last) and torch.equal(levels[3], _max_pool_by_hand(last))
        up2, tol = _deconv_by_hand(last, pyramid.up2)
        assert_close_reordered(levels[1], up2, tol)
        norm = pyramid.up4[1]
        mid, _ = _deconv_by_hand(last, pyramid.up4[0])
        mid = F.gelu(F.layer_norm(mid.permute(0, 2, 3, 1), (WIDTH // 2,), norm.weight, norm.bias, norm.eps))
        up4, _ = _deconv_by_hand(mid.permute(0, 3, 1, 2), pyramid.up4[3])
        assert_close_reordered(levels[0], up4, network_reorder_tolerance(model, up4, 64, 96))


@pytest.mark.parametrize("pyramid", PYRAMIDS)
def test_pyramid_keeps_gradients_with_checkpointing_and_the_classifier_scripts(pyramid):
    torch.manual_seed(0)
    model = t2t_vit.create_model("t2t_vit_7", img_size=64, depth=2, feature_pyramid=pyramid).eval()
    x = _images(64, 64).requires_grad_()

    def input_grad() -> torch.Tensor:
        x.grad = None
        sum(level.square().mean() for level in model.forward_intermediates(x, intermediates_only=True)).backward()
        return x.grad.clone()

    plain = input_grad()
    model.set_grad_checkpointing(True)
    assert_close_reordered(input_grad(), plain, network_reorder_tolerance(model, plain, 64, batch=2))
    with torch.no_grad():
        assert torch.equal(torch.jit.script(model)(x), model(x))


def test_only_the_t2t_levels_prune_every_block():
    torch.manual_seed(0)
    full = timm.create_model("t2t_vit_7", img_size=64, features_only=True, feature_pyramid="t2t")
    torch.manual_seed(0)
    t2t_only = timm.create_model(
        "t2t_vit_7", img_size=64, features_only=True, feature_pyramid="t2t", out_indices=(0, 1)
    )
    assert t2t_only.feature_info.reduction() == [4, 8] and len(t2t_only.model.blocks) == 0
    assert {k.split(".")[0] for k in t2t_only.model.pruned_keys} == {"blocks", "head", "norm"}
    x = _images(64, 64)
    assert all(torch.equal(a, b) for a, b in zip(_levels(t2t_only, x), _levels(full, x)[:2]))


# ------------------------------------------------------------------------------------------- the authors' weights

LAYOUTS = {
    "checkpoint_saver": lambda ema, raw: checkpoint_saver_layout(raw, ema),  # main.py: EMA weights beside the raw
    "net_module": lambda ema, raw: {"net": {f"module.{k}": v for k, v in ema.items()}},  # transfer_learning.py
    "bare": lambda ema, raw: ema,
}


def _authors_checkpoint(official_keys, name: str, layout: str, path) -> dict:
    """The authors' `name` in `layout` at `path`; returns the weights the model should take (the EMA ones)."""
    ema = official_state_dict(official_keys, name, seed=0)
    torch.save(LAYOUTS[layout](ema, official_state_dict(official_keys, name, seed=1)), path)
    return ema


def _assert_authors_weights_loaded(model, ema: dict, fresh, pyramid: str, log: str) -> None:
    """The backbone holds the checkpoint's tensors, the head is gone, the pyramid's new layers are as initialised
    (`fresh`: the same model, same seed, no checkpoint) and reported so in `log`."""
    inner = model.model
    own = inner.state_dict()
    new = [k for k in own if k.startswith("pyramid.")]
    assert bool(new) == (pyramid == "simple")  # the t2t pyramid adds no weights
    assert set(own) - set(new) == set(ema) - {"head.weight", "head.bias", "norm.weight", "norm.bias"}
    assert all(torch.equal(own[k], ema[k]) for k in own if k not in new)
    assert all(torch.equal(own[k], fresh.model.state_dict()[k]) for k in new)
    assert inner.num_classes == 0 and isinstance(inner.head, torch.nn.Identity)
    assert ("stay at initialisation: " + ", ".join(new)) in log if new else "stay at initialisation" not in log


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("pyramid", PYRAMIDS)
def test_authors_checkpoint_loads_into_the_pyramid_through_checkpoint_path(
    tmp_path, official_keys, caplog, pyramid, layout
):
    ckpt = tmp_path / "release.pth.tar"
    ema = _authors_checkpoint(official_keys, "t2t_vit_7", layout, ckpt)
    kwargs = dict(features_only=True, feature_pyramid=pyramid)
    torch.manual_seed(0)
    fresh = t2t_vit.create_model("t2t_vit_7", **kwargs)
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="t2t_vit"):
        model = t2t_vit.create_model("t2t_vit_7", checkpoint_path=ckpt, **kwargs)
    _assert_authors_weights_loaded(model, ema, fresh, pyramid, caplog.text)
    # loaded after timm pruned the model for features_only: what it pruned is not loaded, and the log says so
    assert "the features-only model has no head, norm: their 4 tensors are not loaded" in caplog.text
    # the features are the classifier's, loaded from the same file: its last block is the stride-16 level
    x = _images(224, 224, n=1)
    classifier = t2t_vit.create_model("t2t_vit_7", checkpoint_path=ckpt).eval()
    with torch.no_grad():
        (last,) = classifier.forward_intermediates(x, indices=1, intermediates_only=True)
    assert torch.equal(_levels(model, x)[2], last)


@pytest.mark.parametrize("pyramid", PYRAMIDS)
@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14"])
def test_authors_checkpoint_loads_into_the_pyramid_through_pretrained(tmp_path, official_keys, caplog, name, pyramid):
    ckpt = tmp_path / "release.pth.tar"
    ema = _authors_checkpoint(official_keys, name, "checkpoint_saver" if name == "t2t_vit_7" else "bare", ckpt)
    kwargs = dict(features_only=True, feature_pyramid=pyramid)
    torch.manual_seed(0)
    fresh = timm.create_model(name, **kwargs)
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="t2t_vit"):
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt)), **kwargs)
    _assert_authors_weights_loaded(model, ema, fresh, pyramid, caplog.text)
    # timm loads before it prunes for features_only: head and final norm load into the full model, then go
    assert "features-only" not in caplog.text


# ------------------------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("dynamic", [False, True], ids=["fixed", "dynamic_batch"])
@pytest.mark.parametrize("name,pyramid", [("t2t_vit_7", "t2t"), ("t2t_vit_t_14", "simple")])
def test_onnx_parity(tmp_path, name, pyramid, dynamic):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    size = (64, 96)
    model = timm.create_model(name, img_size=size, depth=2, features_only=True, feature_pyramid=pyramid).eval()
    names = [f"level{i}" for i in range(4)]
    axes = {n: {0: "batch"} for n in ["images", *names]} if dynamic else None
    torch.onnx.export(
        model,
        (_images(*size),),
        str(tmp_path / "m.onnx"),
        input_names=["images"],
        output_names=names,
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3) if dynamic else (2,):
        x = _images(*size, n=batch, seed=batch)
        outputs = session.run(None, {"images": x.numpy()})
        for got, expected in zip(outputs, _levels(model, x)):
            # onnxruntime sums in its own order (and rounds exp, erf, sqrt within a few ulp)
            tol = network_reorder_tolerance(model.model, expected, *size)
            assert_close_reordered(torch.from_numpy(got), expected, tol)


# ------------------------------------------------------------------------------------------- what it cannot take


@pytest.mark.parametrize("pyramid", PYRAMIDS)
def test_a_size_the_soft_splits_cannot_tile_names_the_size_and_the_fix(pyramid):
    model = timm.create_model("t2t_vit_7", depth=1, features_only=True, feature_pyramid=pyramid).eval()
    with pytest.raises(InputError, match=r"image height 230 cannot be tiled.*224 or 240 \(a multiple of 16\)"):
        model(_images(230, 224, n=1))
    with pytest.raises(InputError, match=r"14x20 token grid.*dynamic_img_size=True"):
        model(_images(224, 320, n=1))


def test_pyramids_a_model_cannot_have_name_the_fix():
    with pytest.raises(InputError, match=r"feature_pyramid='fpn' is not one of \('t2t', 'simple'\)"):
        timm.create_model("t2t_vit_7", feature_pyramid="fpn")
    with pytest.raises(InputError, match="use feature_pyramid='simple'"):
        timm.create_model("t2t_vit_14_wo_t2t", feature_pyramid="t2t")
    hard_split = timm.create_model("t2t_vit_14_wo_t2t", depth=1, features_only=True, feature_pyramid="simple")
    assert hard_split.feature_info.reduction() == [4, 8, 16, 32]
    with pytest.raises(InputError, match="dense model.*no feature_pyramid"):
        timm.create_model("t2t_vit_dense", feature_pyramid="simple")
    with pytest.raises(InputError, match="finer than the image at their stride 2"):
        timm.create_model("t2t_vit_7", **TINY_MODEL, feature_pyramid="simple")


def test_without_a_pyramid_features_stay_the_blocks_at_one_stride():
    model = timm.create_model("t2t_vit_7", features_only=True)
    assert model.feature_info.reduction() == [16, 16, 16] and model.feature_info.module_name() == [
        f"blocks.{i}" for i in (4, 5, 6)
    ]
    plain = timm.create_model("t2t_vit_7").state_dict()
    assert list(timm.create_model("t2t_vit_7", feature_pyramid="t2t").state_dict()) == list(plain)
