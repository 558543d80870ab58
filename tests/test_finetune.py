"""Fine-tuning from the authors' layout and ours, param groups, predict on files, export and read back."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2t_vit import InputError, create_model, load_model
from t2t_vit.checkpoint import read_checkpoint
from t2t_vit.config import resolve_config
from t2t_vit.deploy.export import export
from t2t_vit.deploy.predict import predict
from t2t_vit.training.run import build_optimizer, train

from .helpers import (
    DIGIT_CLASSES,
    REFERENCE,
    REFERENCE_TINY,
    assert_close_reordered,
    digit_files,
    network_reorder_tolerance,
    official_state_dict,
    tiny_train_config,
)


def test_finetune_from_the_authors_layout_to_new_classes_and_resolution(tmp_path):
    """64 px / 10-class authors' checkpoint -> digits at 32 px: new head, resampled positions, loss falls."""
    authors_tiny = REFERENCE_TINY["tiny_performer"]  # the authors' tiny Performer model, in their release layout
    authors_tiny_checkpoint = REFERENCE / "tiny" / authors_tiny["checkpoint"]
    sizes = {k: authors_tiny["constructor"][k] for k in ("embed_dim", "depth", "num_heads", "mlp_ratio", "token_dim")}
    cfg = resolve_config(
        "finetune_cifar",
        dict(
            data="digits",
            img_size=32,
            batch_size=32,
            workers=0,
            epochs=2,
            lr=0.05,
            lr_base_batch=32,
            backbone_lr_ratio=0.1,
            drop_path=0.0,
            device="cpu",
            output=str(tmp_path),
            name="ft",
            crop_padding=4,
            hflip=0.0,
            model_kwargs=dict(sizes, soft_splits=[[7, 4, 2], [3, 2, 1], [3, 1, 1]]),
        ),
    )
    cfg.update(init_checkpoint=str(authors_tiny_checkpoint), model="t2t_vit_7")
    result = train(cfg, progress=False)
    rows = (Path(result["run_dir"]) / "metrics.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[2]) for r in rows]
    assert losses[-1] < losses[0] - 0.2 and result["val_top1"] > 30  # 10% is chance
    state = read_checkpoint(Path(result["run_dir"]) / "last.pth.tar")
    assert state["model"]["pos_embed"].shape == (1, 1 + 16, 64)  # 32 px with these splits: 4x4 tokens
    authors = read_checkpoint(authors_tiny_checkpoint)["state_dict_ema"]
    moved = (state["model"]["blocks.0.attn.qkv.weight"] - authors["blocks.0.attn.qkv.weight"]).abs().max()
    assert 0 < moved < 0.5  # the backbone trained, gently
    assert state["meta"]["arch"] == "t2t_vit_7" and state["meta"]["class_names"] == DIGIT_CLASSES


def test_finetune_our_checkpoint_needs_only_its_path(tmp_path, tiny_run):
    ckpt = tiny_run / "last.pth.tar"
    cfg = tiny_train_config(
        tmp_path,
        name="ft",
        epochs=1,
        warmup_epochs=0,
        img_size=24,
        model=None,
        init_checkpoint=str(ckpt),
        freeze_backbone=True,
        model_kwargs={},
    )
    result = train(cfg, progress=False)
    before, after = read_checkpoint(ckpt)["model"], read_checkpoint(Path(result["run_dir"]) / "last.pth.tar")["model"]
    assert torch.equal(before["blocks.0.mlp.fc1.weight"], after["blocks.0.mlp.fc1.weight"])  # linear probe
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert after["pos_embed"].shape[1] == 1 + (24 // 2) ** 2  # 16 px -> 8x8 tokens; 24 px -> 12x12


def test_param_groups_backbone_ratio_and_layer_decay():
    model = create_model("t2t_vit_7", img_size=64, depth=2, num_classes=10)
    cfg = dict(resolve_config("finetune_cifar"), backbone_lr_ratio=0.01, layer_decay=0.5)
    opt = build_optimizer(model, cfg, lr=0.05)
    scale = {
        n: g["lr_scale"]
        for g in opt.param_groups
        for n, p in model.named_parameters()
        if any(p is q for q in g["params"])
    }
    assert scale["head.weight"] == 1.0
    assert scale["norm.weight"] == pytest.approx(0.01)  # top layer: ratio only
    assert scale["blocks.1.attn.qkv.weight"] == pytest.approx(0.01 * 0.5)
    assert scale["blocks.0.attn.qkv.weight"] == pytest.approx(0.01 * 0.25)
    assert scale["tokens_to_token.project.weight"] == pytest.approx(0.01 * 0.125)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9


@pytest.fixture
def our_checkpoint(tiny_run) -> Path:
    return tiny_run / "last.pth.tar"


def test_predict_files_folders_globs_and_unreadable(tmp_path, our_checkpoint):
    files = digit_files(tmp_path / "imgs")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    results = predict(
        [str(files[0]), str(tmp_path / "imgs"), str(tmp_path / "imgs" / "*.png")], str(our_checkpoint), top_k=3
    )
    good = [r for r in results if "top_k" in r]
    bad = [r for r in results if "error" in r]
    assert len(good) == 1 + 4 + 4 and len(bad) == 2 and bad[0]["file"].endswith("broken.png")
    top = good[0]["top_k"]
    assert len(top) == 3 and top[0]["class"] in DIGIT_CLASSES and top[0]["prob"] >= top[1]["prob"]
    assert abs(sum(t["prob"] for t in top)) <= 1.0 + 1e-6
    with pytest.raises(InputError, match=r"not a file, a folder or a glob"):
        predict([str(tmp_path / "missing.png")], str(our_checkpoint))


def test_predict_cli_json(tmp_path, our_checkpoint, capsys):
    from t2t_vit.cli import main

    files = digit_files(tmp_path / "imgs", 2)
    assert main(["predict", *map(str, files), "--checkpoint", str(our_checkpoint), "--json", "--top-k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [Path(r["file"]).name for r in out] == [f.name for f in files] and len(out[0]["top_k"]) == 2


def test_one_precision_story_for_eval_and_predict(tmp_path, our_checkpoint, capsys):
    """auto = what training evaluates in (bf16 on CUDA, fp32 here); --precision picks another on every command."""
    from t2t_vit.cli import main
    from t2t_vit.device import autocast_dtype

    assert autocast_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert (
        autocast_dtype("auto", torch.device("cpu")) is None
        and autocast_dtype("fp16", torch.device("cpu")) == torch.float16
    )
    files = digit_files(tmp_path / "imgs", 3)
    fp32, auto = (predict(list(map(str, files)), str(our_checkpoint), precision=p) for p in ("fp32", "auto"))
    assert fp32 == auto
    bf16 = predict(list(map(str, files)), str(our_checkpoint), precision="bf16")
    for a, b in zip(fp32, bf16):  # bf16 keeps 8 bits: probabilities move by well under 2^-8 x 64
        assert abs(a["top_k"][0]["prob"] - b["top_k"][0]["prob"]) <= 64 * 2.0**-8
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(our_checkpoint),
                "--data",
                "digits",
                "--workers",
                "0",
                "--no-progress",
                "--precision",
                "bf16",
            ]
        )
        == 0
    )
    assert "(torch cpu bf16) on digits (360 images): top-1" in capsys.readouterr().out  # what scored it is said


def test_our_preprocessing_reaches_the_model_and_visualize(tmp_path, our_checkpoint):
    """The checkpoint's stored mean/std/crop become the model's pretrained cfg: visualize sees what predict sees."""
    from timm.data import IMAGENET_DEFAULT_MEAN

    from t2t_vit.data import create_transform
    from t2t_vit.study.visualize import load_image

    stored = read_checkpoint(our_checkpoint)["meta"]["data_config"]
    model, meta = load_model(our_checkpoint)
    assert stored["mean"] != list(IMAGENET_DEFAULT_MEAN) and stored["crop_pct"] != 0.9  # not the release's
    for cfg in (model.pretrained_cfg, model.default_cfg):
        assert [list(np.atleast_1d(cfg[k])) for k in ("mean", "std", "crop_pct", "interpolation")] == [
            list(np.atleast_1d(stored[k])) for k in ("mean", "std", "crop_pct", "interpolation")
        ]
    assert meta["data_config"]["input_size"] == tuple(stored["input_size"])
    (img,) = digit_files(tmp_path / "imgs", 1)
    x, _ = load_image(img, model)
    with Image.open(img) as pic:
        expected = create_transform({}, meta["data_config"], training=False)(pic.convert("RGB"))
    torch.testing.assert_close(x[0], expected)


def test_predict_names_imagenet_classes_for_authors_checkpoints(tmp_path, official_keys):
    path = tmp_path / "71.7_T2T_ViT_7.pth.tar"
    torch.save({"state_dict_ema": official_state_dict(official_keys, "t2t_vit_7")}, path)
    img = tmp_path / "x.png"
    Image.fromarray(np.uint8(np.random.default_rng(0).integers(0, 255, (240, 260, 3)))).save(img)
    renamed = tmp_path / "weights.pth.tar"  # a release file's name says its model; another name does not
    path.rename(renamed)
    with pytest.raises(InputError, match=r"pass --model NAME"):
        predict([str(img)], str(renamed))
    (result,) = predict([str(img)], str(renamed), model_name="t2t_vit_7", top_k=1)
    from timm.data import ImageNetInfo

    assert result["top_k"][0]["class"] == ImageNetInfo().index_to_description(result["top_k"][0]["index"])
    renamed.rename(path)
    assert predict([str(img)], str(path), top_k=1) == [result]


def test_safetensors_round_trip(tmp_path, our_checkpoint):
    out = export(str(our_checkpoint), "safetensors", str(tmp_path / "model.safetensors"))
    model, meta = load_model(out)
    ref, _ = load_model(our_checkpoint)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ref.eval()(x))
    assert meta["class_names"] == DIGIT_CLASSES
    again = create_model("t2t_vit_7", checkpoint_path=out, **meta["model_kwargs"])
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_torchscript_export(tmp_path, our_checkpoint):
    out = export(str(our_checkpoint), "torchscript", str(tmp_path / "model.pt"))
    extra = {"t2t_vit.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    ref, _ = load_model(our_checkpoint)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = ref.eval()(x)
        assert_close_reordered(scripted(x), expected, network_reorder_tolerance(ref, expected, 16))
    assert json.loads(extra["t2t_vit.json"])["arch"] == "t2t_vit_7"


def test_onnx_export_shows_none_of_the_tracers_warnings(tiny_checkpoint, tmp_path, recwarn):
    """The values the tracer freezes are fixed for an exported model (the batch stays dynamic: the test below), so
    its "might not generalize" warnings would only alarm the user."""
    pytest.importorskip("onnx")
    export(str(tiny_checkpoint), "onnx", str(tmp_path / "model.onnx"))
    tracer = [w for w in recwarn if w.category is torch.jit.TracerWarning or "Constant folding" in str(w.message)]
    assert not tracer, [str(w.message) for w in tracer]


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14"])
def test_onnx_parity_at_224_with_batch_1_and_3(tmp_path, official_keys, name):
    ort = pytest.importorskip("onnxruntime")
    ckpt = tmp_path / "release.pth.tar"
    torch.save({"state_dict_ema": official_state_dict(official_keys, name)}, ckpt)
    out = export(str(ckpt), "onnx", str(tmp_path / "model.onnx"), model_name=name)
    model = create_model(name, checkpoint_path=ckpt).eval()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x).numpy()
        (logits,) = session.run(None, {"images": x.numpy()})
        # onnxruntime's own GEMMs sum in their order; its exp, erf and sqrt are within a few ulp, one more rounding
        # in sums of up to 3136 terms (the 56 x 56 tokens at 224 px)
        expected = torch.from_numpy(expected)
        assert_close_reordered(torch.from_numpy(logits), expected, network_reorder_tolerance(model, expected, 224))
    meta = {p.key: p.value for p in __import__("onnx").load(str(out)).metadata_props}
    assert json.loads(meta["t2t_vit"])["arch"] == name
