"""The authors' checkpoints in every layout they come in, and the errors for files that are not one."""

import logging
import os

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

import t2t_vit
from t2t_vit import InputError, create_model, load_checkpoint

from .conftest import official_state_dict

X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def authors_t2t_vit_7(official_keys):
    """A state dict in the authors' layout and the logits a model holding exactly those weights gives."""
    sd = official_state_dict(official_keys, "t2t_vit_7")
    model = timm.create_model("t2t_vit_7").eval()
    for name, tensor in model.state_dict().items():
        tensor.copy_(sd[name])
    with torch.no_grad():
        return sd, model(X)


def _logits(model):
    with torch.no_grad():
        return model.eval()(X)


LAYOUTS = {
    "bare": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 309},
    "state_dict_ema": lambda sd: {"state_dict_ema": sd},
    "model": lambda sd: {"model": sd, "optimizer": {}},
    "module_prefix": lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_loads_three_ways(tmp_path, authors_t2t_vit_7, layout):
    sd, expected = authors_t2t_vit_7
    path = tmp_path / "71.7_T2T_ViT_7.pth.tar"
    torch.save(LAYOUTS[layout](sd), path)
    assert torch.equal(_logits(create_model("t2t_vit_7", checkpoint_path=path)), expected)
    assert torch.equal(_logits(load_checkpoint(timm.create_model("t2t_vit_7"), path, use_ema=True)), expected)
    model = timm.create_model("t2t_vit_7", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(_logits(model), expected)


def test_ema_weights_are_preferred_when_asked(tmp_path, authors_t2t_vit_7):
    sd, expected = authors_t2t_vit_7
    other = {k: v + 1 for k, v in sd.items()}
    path = tmp_path / "both.pth.tar"
    torch.save({"state_dict": other, "state_dict_ema": sd}, path)
    assert torch.equal(_logits(create_model("t2t_vit_7", checkpoint_path=path)), expected)
    raw = create_model("t2t_vit_7", checkpoint_path=path, use_ema=False)
    assert torch.equal(raw.cls_token, other["cls_token"])


def test_safetensors_file_loads(tmp_path, authors_t2t_vit_7):
    from safetensors.torch import save_file

    sd, expected = authors_t2t_vit_7
    path = tmp_path / "t2t_vit_7.safetensors"
    save_file(sd, str(path))
    assert torch.equal(_logits(create_model("t2t_vit_7", checkpoint_path=path)), expected)


def test_other_num_classes_drops_the_head_with_a_note(tmp_path, authors_t2t_vit_7, caplog):
    sd, _ = authors_t2t_vit_7
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"state_dict_ema": sd}, path)
    with caplog.at_level(logging.WARNING):
        model = create_model("t2t_vit_7", checkpoint_path=path, num_classes=10)
    assert "head" in caplog.text and "1000 classes" in caplog.text
    assert model.head.weight.shape == (10, 256) and torch.equal(model.cls_token, sd["cls_token"])
    timm_model = timm.create_model(
        "t2t_vit_7", pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert torch.equal(timm_model.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("img_size,grid", [(384, (24, 24)), ((224, 320), (14, 20))])
def test_other_img_size_resamples_the_position_table(tmp_path, authors_t2t_vit_7, img_size, grid):
    sd, _ = authors_t2t_vit_7
    path = tmp_path / "ckpt.pth.tar"
    torch.save(sd, path)
    model = create_model("t2t_vit_7", checkpoint_path=path, img_size=img_size)
    expected = resample_abs_pos_embed(sd["pos_embed"], list(grid), [14, 14], num_prefix_tokens=1)
    assert model.pos_embed.shape == (1, 1 + grid[0] * grid[1], 256)
    assert torch.equal(model.pos_embed, expected) and torch.equal(model.pos_embed[:, 0], sd["pos_embed"][:, 0])
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, *model.img_size)).shape == (1, 1000)


def test_checkpoint_of_another_variant_names_it(tmp_path, official_keys):
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"state_dict_ema": official_state_dict(official_keys, "t2t_vit_7")}, path)
    with pytest.raises(InputError, match=r"does not fit t2t_vit_14.*differ in shape.*create t2t_vit_7 instead"):
        create_model("t2t_vit_14", checkpoint_path=path)


def test_transformer_checkpoint_into_performer_model(tmp_path, official_keys):
    path = tmp_path / "ckpt.pth.tar"
    torch.save(official_state_dict(official_keys, "t2t_vit_t_14"), path)
    with pytest.raises(InputError, match=r"transformer T2T module.*create t2t_vit_t_14 instead"):
        create_model("t2t_vit_14", checkpoint_path=path)


def test_truncated_file(tmp_path, authors_t2t_vit_7):
    path = tmp_path / "ckpt.pth.tar"
    torch.save(authors_t2t_vit_7[0], path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match=r"could not be read: truncated, corrupt or not a checkpoint"):
        create_model("t2t_vit_7", checkpoint_path=path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are not weights\n")
    with pytest.raises(InputError, match=r"notes.txt"):
        create_model("t2t_vit_7", checkpoint_path=path)
    with pytest.raises(InputError, match=r"does not exist"):
        create_model("t2t_vit_7", checkpoint_path=tmp_path / "missing.pth")


def test_checkpoint_without_a_state_dict(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, path)
    with pytest.raises(InputError, match=r"no state dict.*found keys: epoch, args"):
        create_model("t2t_vit_7", checkpoint_path=path)


class _RunsCode:
    """Unpickling this would create a file: the loader must refuse it without running it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_that_would_run_code_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(InputError, match=r"refused unread \(weights_only=True\)"):
        create_model("t2t_vit_7", checkpoint_path=path)
    assert not marker.exists()
    assert b"mkdir" in path.read_bytes()  # the file really carries the call


def test_unknown_model_name():
    with pytest.raises(InputError, match=r"unknown model 't2t_vit_15'.*did you mean .*t2t_vit_1"):
        create_model("t2t_vit_15")


def test_wrong_channel_count():
    model = timm.create_model("t2t_vit_7", img_size=64, depth=1)
    with pytest.raises(InputError, match=r"input has 1 channels but the model takes 3.*in_chans=1"):
        model(torch.randn(1, 1, 64, 64))


def test_size_the_splits_cannot_tile():
    model = timm.create_model("t2t_vit_7", depth=1, dynamic_img_size=True)
    with pytest.raises(InputError, match=r"image height 230 cannot be tiled.*224 or 240.*multiple of 16"):
        model(torch.randn(1, 3, 230, 224))
    with pytest.raises(InputError, match=r"image width 100 cannot be tiled"):
        timm.create_model("t2t_vit_7", img_size=(64, 100))


def test_other_size_without_dynamic_img_size():
    model = timm.create_model("t2t_vit_7", depth=1)
    with pytest.raises(InputError, match=r"16x16 token grid but the position table is for 14x14.*dynamic_img_size"):
        model(torch.randn(1, 3, 256, 256))


def test_public_api():
    assert {"create_model", "list_models", "load_checkpoint", "InputError"} <= set(t2t_vit.__all__)
    assert {"t2t_vit_7", "t2t_vit_14", "t2t_vit_t_24", "t2t_vit_14_wide"} <= set(t2t_vit.list_models())


def test_authors_384_file_builds_a_384_model(tmp_path, official_keys):
    from t2t_vit import load_model

    path = tmp_path / "83.3_T2T_ViT_14.pth.tar"
    torch.save({"state_dict_ema": official_state_dict(official_keys, "t2t_vit_14@384")}, path)
    model, meta = load_model(path, "t2t_vit_14")
    assert model.img_size == (384, 384) and meta["data_config"]["input_size"] == (3, 384, 384)
    assert torch.equal(model.pos_embed, official_state_dict(official_keys, "t2t_vit_14@384")["pos_embed"])
