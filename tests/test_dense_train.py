"""Detection and segmentation through the run machinery: tiny runs on canvases write their metrics, resume bitwise from
a signal, are evaluated by `t2t-vit eval` as they were in training; their parameter groups follow the backbone's
layers; bad combinations are one line."""

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from t2t_vit.cli import main
from t2t_vit.data.device_batches import DeviceBatches
from t2t_vit.training.evaluate import evaluate_checkpoint
from t2t_vit.training.run import train
from t2t_vit.training.setup import check_config, param_groups
from t2t_vit.training.tasks import build_data, build_model

from .helpers import (
    ROOT,
    assert_same_run,
    hook_criterion,
    last_checkpoint,
    metrics_rows,
    one_line_error,
    subprocess_env,
    tiny_canvases,
    tiny_dense_config,
)

# pycocotools' decode under NumPy 2 (its own arrays, nothing of ours)
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
TASKS = ("detection", "segmentation")
SCORES = dict(detection=("map", "map50", "map75"), segmentation=("miou", "pixel_acc"))


@pytest.fixture(scope="module")
def canvases(tmp_path_factory) -> Path:
    return tiny_canvases(tmp_path_factory.mktemp("canvases"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, canvases) -> dict:
    """Each task's uninterrupted tiny run (hflip, drop path and EMA on), by task: its run directory."""
    return {
        task: Path(train(tiny_dense_config(tmp_path_factory.mktemp(task), task, canvases), progress=False)["run_dir"])
        for task in TASKS
    }


@pytest.mark.parametrize("task", TASKS)
def test_a_tiny_dense_run_learns_and_writes_its_scores(straight, task):
    rows = metrics_rows(straight[task])
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    for row in rows:
        for key in SCORES[task]:
            assert 0 <= float(row[f"val_{key}"]) <= 100 and 0 <= float(row[f"ema_val_{key}"]) <= 100
        assert row["val_top1"] == row["val_loss"] == ""  # classification's columns stay empty
    saved = last_checkpoint(straight[task])
    meta = saved["meta"]
    assert (meta["task"], meta["arch"], meta["num_classes"]) == (task, "t2t_vit_7", 11)
    assert meta["class_names"][1:] == [str(i) for i in range(10)] and meta["dense"]["pyramid"] == "t2t"
    assert saved["best"]["metric"] == ("miou" if task == "segmentation" else "map")


def test_masks_without_classes_txt_take_num_classes_and_ignore_the_values_past_them(tmp_path, canvases, caplog):
    """masks:DIR without classes.txt counts its classes by num_classes; mask values past them are ignored and logged,
    as past classes.txt's, not targets outside the head."""
    import shutil

    data = Path(shutil.copytree(canvases, tmp_path / "plain"))
    (data / "classes.txt").unlink()
    cfg = tiny_dense_config(tmp_path, "segmentation", data, num_classes=5, epochs=1, warmup_epochs=0)
    with caplog.at_level("WARNING", logger="t2t_vit.data.masks"):
        result = train(cfg, progress=False)
    assert "are not classes (there are 5; ignored)" in caplog.text and 0 <= result["val_miou"] <= 100


def test_an_instance_run_scores_its_masks_too(tmp_path, canvases, caplog):
    with caplog.at_level("INFO", logger="t2t_vit.training.metrics"):
        train(tiny_dense_config(tmp_path, "instance", canvases, epochs=1, warmup_epochs=0), progress=False)
    (row,) = metrics_rows(tmp_path / "run")
    assert all(0 <= float(row[key]) <= 100 for key in ("val_map", "val_mask_map", "ema_val_mask_map"))
    assert re.search(r"held-out mAP \S+%  AP50 \S+%  AP75 \S+%  mask mAP \S+%  EMA mAP \S+%", caplog.text)


@pytest.mark.parametrize("task", TASKS)
def test_a_signal_mid_epoch_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, canvases, straight, task):
    hook_criterion(monkeypatch, {6: signal.SIGTERM})  # epoch 2, step 2 of 4
    stopped = train(tiny_dense_config(tmp_path, task, canvases), progress=False)
    assert stopped["stopped"] == signal.SIGTERM and stopped["at"].startswith("epoch 2 step 2 ")
    monkeypatch.undo()
    train(tiny_dense_config(tmp_path, task, canvases), resume="auto", progress=False)
    assert_same_run(straight[task], tmp_path / "run")


@pytest.mark.parametrize("task", TASKS)
def test_eval_of_a_dense_checkpoint_reports_what_training_measured(capsys, canvases, straight, task):
    best = last_checkpoint(straight[task])["best"]
    row = metrics_rows(straight[task])[best["epoch"] - 1]
    spec = f"masks:{canvases}" if task == "segmentation" else f"coco:{canvases}"
    checkpoint = str(straight[task] / "best.pth.tar")
    assert main(["eval", "--checkpoint", checkpoint, "--data", spec, "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"t2t_vit_7 {task} (torch cpu fp32) on {spec} (4 images): ")
    labels = dict(map="mAP", map50="AP50", map75="AP75", miou="mIoU", pixel_acc="pixel acc")
    for key in SCORES[task]:  # the EMA weights, as eval reads them by default
        assert f"{labels[key]} {float(row[f'ema_val_{key}']):.2f}%" in out, (key, out)
    other = "detection" if task == "segmentation" else "segmentation"
    assert main(["eval", "--checkpoint", checkpoint, "--data", spec, "--task", other]) == 2
    one_line_error(capsys, f"holds a {task} model, not {other}")


@pytest.mark.parametrize("task", TASKS)
def test_two_gloo_ranks_train_one_model_and_score_the_whole_held_out_split(tmp_path, canvases, task):
    """Each rank scores half the held-out canvases; their merged scores are one process's on all of them (a batch of
    one: padding to a batch's largest canvas moves the scores a little)."""
    cfg = tiny_dense_config(tmp_path, task, canvases, batch_size=1, val_batch_size=1, epochs=1, warmup_epochs=0)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tests.ddp_probe"]
    done = subprocess.run(
        [*cmd, json.dumps(cfg), str(tmp_path)], env=subprocess_env(), cwd=ROOT, capture_output=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1))
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])
    (row,) = metrics_rows(tmp_path / "run")
    alone = evaluate_checkpoint(
        str(tmp_path / "run" / "last.pth.tar"),
        cfg["data"],
        batch_size=1,
        workers=0,
        use_ema=False,
        device="cpu",
        progress=False,
    )
    assert alone["n"] == 4 and [float(row[f"val_{k}"]) for k in SCORES[task]] == [alone[k] for k in SCORES[task]]


@pytest.mark.parametrize(
    "task, args, says",
    [
        ("detection", "--mixup 0.5 --aa null", "detection has no use for the classification keys it was given (aa"),
        ("segmentation", "--best-metric map", "best_metric 'map' is not measured for segmentation: use one of miou"),
        ("instance", "--detector retinanet", "instance is Mask R-CNN"),
        ("detection", "--detector yolo", "detector 'yolo' is not one of fasterrcnn, retinanet"),
        ("detection", "--data digits", "--data 'digits' is not a detection or segmentation data spec"),
        ("detection", "--num-classes 3", "num_classes 3 is fewer than the 11 classes of coco:"),
    ],
)
def test_a_bad_dense_combination_is_one_line_and_leaves_nothing(tmp_path, capsys, canvases, task, args, says):
    base = ["train", "--task", task, "--data", f"coco:{canvases}", "--output", str(tmp_path), "--name", "run"]
    assert main([*base, "--device", "cpu", *args.split()]) == 2
    one_line_error(capsys, says)
    assert not (tmp_path / "run").exists()


def test_layer_decay_and_the_backbone_ratio_reach_the_backbone_inside_a_dense_model(tmp_path, canvases):
    cfg = check_config(tiny_dense_config(tmp_path, "detection", canvases, layer_decay=0.5, backbone_lr_ratio=0.1))
    model, _ = build_model(cfg, build_data(cfg, 1, 0, torch.device("cpu")))
    scale, decay = {}, {}
    for group in param_groups(model, cfg):
        for p in group["params"]:
            scale[id(p)], decay[id(p)] = group["lr_scale"], group["weight_decay"]
    named = dict(model.named_parameters())
    body = "backbone.body.model."
    assert scale[id(named[body + "blocks.0.mlp.fc1.weight"])] == pytest.approx(0.1 * 0.5)  # top 2, block 0 at 1
    assert scale[id(named[body + "tokens_to_token.attention1.kqv.weight"])] == pytest.approx(0.1 * 0.5**2)
    assert decay[id(named[body + "cls_token"])] == 0.0  # the T2T-ViT's no_weight_decay, found inside
    heads = [n for n in named if not n.startswith("backbone.body.")]
    assert heads and all(scale[id(named[n])] == 1.0 for n in heads)  # the neck and the heads: lr itself
    assert decay[id(named["roi_heads.box_head.fc6.weight"])] == cfg["weight_decay"]


def test_dense_batches_cross_to_the_device_as_the_models_take_them():
    images = [torch.full((3, 4, 5), 255, dtype=torch.uint8), torch.zeros((3, 6, 2), dtype=torch.uint8)]
    targets = [dict(boxes=torch.ones(1, 4), labels=torch.tensor([2]), image_id=7)] * 2
    sampler = type("Sampler", (), dict(epoch=0, start=0))()
    loader = type("Loader", (), dict(__iter__=lambda self: iter([(images, targets, 1)]), sampler=sampler))()
    ((out, out_targets, counts),) = list(DeviceBatches(loader, torch.device("cpu")))
    assert [x.dtype for x in out] == [torch.float32] * 2 and out[0].max() == 1.0 and out[1].shape == (3, 6, 2)
    assert out_targets[0]["image_id"] == 7 and torch.equal(out_targets[0]["labels"], torch.tensor([2]))
    assert counts == (1, 0)
