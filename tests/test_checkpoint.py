"""The authors' checkpoints in every layout their tools wrote, loaded every way a user can, and the errors for files
that are not a checkpoint or would run code, from every loader and command."""

import argparse
import logging
import pickle
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

import t2t_vit
from t2t_vit import InputError, create_model, load_checkpoint, load_model
from t2t_vit.checkpoint import read_checkpoint
from t2t_vit.cli import main

from .helpers import (
    TINY_MODEL,
    LoopbackServer,
    RunsCode,
    checkpoint_saver_layout,
    digit_files,
    logits_of,
    official_state_dict,
    one_line_error,
)

LAYOUTS = {
    "bare": lambda w: w.ema,
    "state_dict": lambda w: {"state_dict": w.ema, "epoch": 309},
    "state_dict_ema": lambda w: {"state_dict_ema": w.ema},
    "model": lambda w: {"model": w.ema, "optimizer": {}},
    "module_prefix": lambda w: {"state_dict": {f"module.{k}": v for k, v in w.ema.items()}},
    # timm's CheckpointSaver (the authors' main.py): raw and EMA weights, optimizer, args
    "checkpoint_saver": lambda w: checkpoint_saver_layout(w.raw, w.ema),
    # transfer_learning.py (their CIFAR fine-tunes): {'net': DataParallel state dict, 'acc', 'epoch'}
    "transfer_learning": lambda w: {"net": {f"module.{k}": v for k, v in w.ema.items()}, "acc": 98.3, "epoch": 59},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_loads_three_ways(tmp_path, authors_t2t_vit_7, layout):
    """create_model, load_checkpoint and timm's pretrained=True give the logits of the (EMA) weights."""
    w = authors_t2t_vit_7
    path = tmp_path / "71.7_T2T_ViT_7.pth.tar"
    torch.save(LAYOUTS[layout](w), path)
    assert torch.equal(logits_of(create_model("t2t_vit_7", checkpoint_path=path), w.images), w.logits)
    model = load_checkpoint(timm.create_model("t2t_vit_7"), path, use_ema=True)
    assert torch.equal(logits_of(model, w.images), w.logits)
    model = timm.create_model("t2t_vit_7", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(logits_of(model, w.images), w.logits)


def test_raw_weights_beside_ema_ones_load_when_asked_and_the_file_names_its_model(tmp_path, authors_t2t_vit_7):
    w = authors_t2t_vit_7
    path = tmp_path / "checkpoint-309.pth.tar"  # CheckpointSaver's own name for it: no model in the name
    torch.save(checkpoint_saver_layout(w.raw, w.ema), path)
    raw = create_model("t2t_vit_7", checkpoint_path=path, use_ema=False).state_dict()
    assert all(torch.equal(raw[k], v) for k, v in w.raw.items())
    model, meta = load_model(path)  # no --model: the file records arch "T2t_vit_7"
    assert meta["arch"] == "t2t_vit_7" and torch.equal(logits_of(model, w.images), w.logits)


def test_safetensors_file_loads(tmp_path, authors_t2t_vit_7):
    from safetensors.torch import save_file

    w = authors_t2t_vit_7
    path = tmp_path / "t2t_vit_7.safetensors"
    save_file(w.ema, str(path))
    assert torch.equal(logits_of(create_model("t2t_vit_7", checkpoint_path=path), w.images), w.logits)


def test_other_num_classes_drops_the_head_with_a_note(tmp_path, authors_t2t_vit_7, caplog):
    sd = authors_t2t_vit_7.ema
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"state_dict_ema": sd}, path)
    with caplog.at_level(logging.INFO):
        model = create_model("t2t_vit_7", checkpoint_path=path, num_classes=10)
    noted = [r for r in caplog.records if "1000 classes" in r.message and "head" in r.message]
    assert [r.levelno for r in noted] == [logging.INFO]  # asked for by num_classes: a note, not a warning
    assert model.head.weight.shape == (10, 256) and torch.equal(model.cls_token, sd["cls_token"])
    timm_model = timm.create_model(
        "t2t_vit_7", pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert torch.equal(timm_model.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("img_size,grid", [(384, (24, 24)), ((224, 320), (14, 20))])
def test_other_img_size_resamples_the_position_table(tmp_path, authors_t2t_vit_7, img_size, grid):
    sd = authors_t2t_vit_7.ema
    path = tmp_path / "ckpt.pth.tar"
    torch.save(sd, path)
    model = create_model("t2t_vit_7", checkpoint_path=path, img_size=img_size)
    expected = resample_abs_pos_embed(sd["pos_embed"], list(grid), [14, 14], num_prefix_tokens=1)
    assert model.pos_embed.shape == (1, 1 + grid[0] * grid[1], 256)
    assert torch.equal(model.pos_embed, expected) and torch.equal(model.pos_embed[:, 0], sd["pos_embed"][:, 0])
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, *model.img_size)).shape == (1, 1000)


def test_a_many_times_larger_token_grid_is_a_warning(tiny_checkpoint, caplog):
    """A small model's own checkpoint taken to a recipe's 224 px (the digits demo's: 4x4 -> 112x112 tokens) was
    one INFO line among many; 2x the side (4x the tokens) stays INFO, as the authors' 224 -> 384 fine-tune does."""
    from t2t_vit.factory import load_model

    for img_size, level in ((32, logging.INFO), (64, logging.WARNING)):
        caplog.clear()
        with caplog.at_level(logging.INFO, "t2t_vit"):
            load_model(str(tiny_checkpoint), img_size=img_size)
        said = [r for r in caplog.records if "resampled the position table" in r.getMessage()]
        assert [r.levelno for r in said] == [level], img_size
    assert "16x as many as it was trained with" in said[0].getMessage()


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


def test_checkpoint_without_a_state_dict(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, path)
    with pytest.raises(InputError, match=r"no state dict.*found keys: epoch, args"):
        create_model("t2t_vit_7", checkpoint_path=path)


def test_unknown_model_name():
    with pytest.raises(InputError, match=r"unknown model 't2t_vit_15'.*did you mean .*t2t_vit_1"):
        create_model("t2t_vit_15")
    for paper, ours in (("T2T-ViT-14", "t2t_vit_14"), ("T2T-ViT_t-14", "t2t_vit_t_14")):  # as the paper writes them
        with pytest.raises(InputError, match=rf"unknown model '{paper}': did you mean {ours} or "):
            create_model(paper)


def test_public_api():
    assert {"create_model", "list_models", "load_checkpoint", "load_model", "InputError"} <= set(t2t_vit.__all__)
    assert {"t2t_vit_7", "t2t_vit_14", "t2t_vit_t_24", "t2t_vit_14_wide"} <= set(t2t_vit.list_models())


def test_authors_384_file_builds_a_384_model(tmp_path, official_keys):
    path = tmp_path / "83.3_T2T_ViT_14.pth.tar"
    torch.save({"state_dict_ema": official_state_dict(official_keys, "t2t_vit_14@384")}, path)
    model, meta = load_model(path, "t2t_vit_14")
    assert model.img_size == (384, 384) and meta["data_config"]["input_size"] == (3, 384, 384)
    assert torch.equal(model.pos_embed, official_state_dict(official_keys, "t2t_vit_14@384")["pos_embed"])


# ----------------------------------------------------------------------------------------------- files that are not
# a checkpoint, or would run code: every way a user hands one over ends in one InputError (a command: exit code 2 and
# one line on stderr naming the file, nothing written)

TINY = dict(TINY_MODEL, img_size=16)  # the model a loader builds before it reads the file: the file decides
LOADERS = {
    "read_checkpoint": read_checkpoint,
    "create_model": lambda path: create_model("t2t_vit_7", checkpoint_path=path, **TINY),
    "load_checkpoint": lambda path: load_checkpoint(timm.create_model("t2t_vit_7", **TINY), path),
    "load_model": lambda path: load_model(path, "t2t_vit_7"),
    "pretrained_file": lambda path: timm.create_model(
        "t2t_vit_7", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY
    ),
}


def _as_pytorch_model_bin(path: Path) -> Path:
    """A folder timm's `local-dir:` reads (config.json, pytorch_model.bin) holding the file at `path`."""
    folder = path.with_name(path.name + ".dir")
    folder.mkdir()
    shutil.copy(path, folder / "pytorch_model.bin")
    (folder / "config.json").write_text('{"architecture": "t2t_vit_7", "num_classes": 1000, "pretrained_cfg": {}}')
    return folder


def _pretrained_over_http(path: Path):
    server = LoopbackServer()
    try:
        url = server.serve("/" + path.name, path.read_bytes())
        return timm.create_model("t2t_vit_7", pretrained=True, pretrained_cfg_overlay=dict(url=url), **TINY)
    finally:
        server.close()


SOURCES = {  # timm's other ways to pretrained weights: each serves the file at `path` its way
    "pretrained_url": _pretrained_over_http,
    "local_dir": lambda path: timm.create_model(f"local-dir:{_as_pytorch_model_bin(path)}", pretrained=True, **TINY),
}
COMMANDS = {  # each hands the command the file at {path}; what it would write goes under {out}
    "predict": "predict {image} --checkpoint {path}",
    "predict_onnxruntime": "predict {image} --checkpoint {path} --runtime onnxruntime",
    "eval": "eval --checkpoint {path} --data digits --workers 0",
    "export": "export --checkpoint {path} --format onnx --output {out}/model.onnx",
    "convert": "convert {path} --out {out}",
    "visualize": "visualize features {image} --checkpoint {path} --out {out}/f.png",
    "train_resume": "train --config digits --output {out} --resume {path}",
    "finetune": "finetune --checkpoint {path} --data digits --output {out}",
}


def _error_of(entry: str, path: Path, tmp_path: Path, capsys) -> str:
    """The error `entry` ends with on the file at `path`: a loader's InputError (one line naming the file), a
    source's InputError, or a command's one line on stderr (exit code 2, nothing written)."""
    if entry in SOURCES:
        with pytest.raises(InputError) as info:
            SOURCES[entry](path)
        return str(info.value)
    if entry in LOADERS:
        with pytest.raises(InputError) as info:
            LOADERS[entry](path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        return str(info.value)
    (image,) = digit_files(tmp_path / "images", 1)
    out = tmp_path / "out"
    argv = [arg.format(path=path, image=image, out=out) for arg in COMMANDS[entry].split()]
    assert main(argv) == 2
    assert not out.exists()
    return one_line_error(capsys, f"t2t-vit {argv[0]}: error:", str(path))


def _cut_in_half(path: Path) -> bytes:
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    return path.read_bytes()[: path.stat().st_size // 2]


def _torchscript(path: Path) -> bytes:
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(path))  # export's kind of file
    return path.read_bytes()


NOT_CHECKPOINTS = {  # file name -> (writes its bytes, None: no such file; what the error says of it)
    "exported.pt": (_torchscript, r"is a TorchScript archive .*which holds code and is not read here"),
    "exported.onnx": (
        lambda path: b"\x08\x08\x12\x07pytorch",
        r"ONNX export, which PyTorch cannot|metadata \(class names",
    ),
    "notes.txt": (lambda path: b"these are not weights\n", r"is not a PyTorch checkpoint \(it starts with b'these"),
    "noise.pth": (lambda path: bytes(range(7, 64)), r"is not a PyTorch checkpoint \(it starts with b'\\x07"),
    "empty.pth": (lambda path: b"", r"is not a PyTorch checkpoint \(it is empty\)"),
    "truncated.pth.tar": (_cut_in_half, r"could not be read: truncated, corrupt or not a checkpoint"),
    "missing.pth": (None, r"does not exist|no such checkpoint file"),
}


@pytest.mark.parametrize("entry", [*LOADERS, *COMMANDS])
def test_a_file_that_is_not_a_checkpoint_is_named_as_such(tmp_path, capsys, monkeypatch, entry):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # onnxruntime's cache, if it came to that
    for name, (content, says) in NOT_CHECKPOINTS.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content(path))
        message = _error_of(entry, path, tmp_path, capsys)
        assert re.search(says, message) and "pickled objects" not in message, (name, message)


@pytest.mark.parametrize("entry", [*LOADERS, *SOURCES, *COMMANDS])
def test_a_pickle_that_would_run_code_is_refused_unread(tmp_path, capsys, monkeypatch, hub_cache, entry):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    marker = tmp_path / "pwned"
    # a state dict and the one class besides tensors a checkpoint may hold (timm's args), and a call to os.mkdir
    evil = {"state_dict": {"w": torch.zeros(2)}, "args": argparse.Namespace(model="t2t_vit_7")}
    evil["payload"] = RunsCode(str(marker))
    files = [tmp_path / "evil.pth.tar", tmp_path / "legacy.pth", tmp_path / "plain.pkl"]
    torch.save(evil, files[0])
    torch.save(evil, files[1], _use_new_zipfile_serialization=False)  # torch's format before 1.6
    files[2].write_bytes(pickle.dumps(evil, protocol=2))
    for path in files:
        assert b"mkdir" in path.read_bytes()  # the file really carries the call
        message = _error_of(entry, path, tmp_path, capsys)
        assert "refused unread (weights_only=True)" in message, (path.name, message)
        assert not marker.exists()
    assert not hub_cache.exists() or not list(hub_cache.iterdir())  # no refused download is kept
    assert [name for _, name in t2t_vit.checkpoint.SAFE_GLOBALS] == ["argparse.Namespace"]


def test_eval_maps_a_checkpoint_and_reads_only_the_weights_it_uses(tmp_path, tiny_checkpoint, monkeypatch):
    """Every read of the file maps it (its task, classes and data, then the weights): a training checkpoint of
    T2T-ViT-24 is 760 MB, mostly optimizer state, which eval read whole, twice."""
    from t2t_vit.training.evaluate import evaluate_checkpoint

    from .helpers import DIGIT_CLASSES, image_folder

    reads, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(bool(k.get("mmap"))) or load(*a, **k))
    data = image_folder(tmp_path / "digits", classes=DIGIT_CLASSES, per_class=1)
    scores = evaluate_checkpoint(str(tiny_checkpoint), str(data), batch_size=8, workers=0, device="cpu", progress=False)
    assert scores["n"] == 10 and reads and all(reads), reads


def test_weights_loaded_from_a_mapped_file_are_the_models_own(tmp_path, tiny_checkpoint):
    """The model owns its weights: changing or deleting the file after the load changes nothing in it."""
    path = tmp_path / "copy.pth.tar"
    shutil.copy(tiny_checkpoint, path)
    model, _ = load_model(path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    saved = torch.load(tiny_checkpoint, weights_only=True)
    torch.save({**saved, "model": {k: torch.zeros_like(v) for k, v in saved["model"].items()}}, path)
    path.unlink()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
