"""Training: the paper's recipe, resume, distributed equivalence, and bad input handled without a traceback."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from t2t_vit import InputError, create_model
from t2t_vit.config import config_names, parse_overrides, resolve_config
from t2t_vit.config_keys import DEFAULTS
from t2t_vit.data import create_dataset
from t2t_vit.training.budget import TimeSchedule
from t2t_vit.training.engine import unwrap
from t2t_vit.training.evaluate import evaluate_checkpoint
from t2t_vit.training.run import (
    build_criterion,
    build_optimizer,
    build_scheduler,
    scaled_lr,
    train,
)
from t2t_vit.training.run_dir import RunDir
from t2t_vit.training.setup import check_config, compiled

from .helpers import (
    TINY_MODEL,
    free_port,
    image_folder,
    last_checkpoint,
    metrics_rows,
    one_line_error,
    subprocess_env,
    tiny_train_config,
)

# ----------------------------------------------------------------------------------------------- the recipe


def test_optimizer_groups_leave_norms_biases_and_tokens_undecayed():
    model = create_model("t2t_vit_7", img_size=64, depth=2)
    opt = build_optimizer(model, dict(DEFAULTS, weight_decay=0.03), lr=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = [g for g in opt.param_groups if g["weight_decay"] == 0.03]
    no_decay = [g for g in opt.param_groups if g["weight_decay"] == 0.0]
    decayed = {names[id(p)] for g in decay for p in g["params"]}
    undecayed = {names[id(p)] for g in no_decay for p in g["params"]}
    assert isinstance(opt, torch.optim.AdamW)
    assert "cls_token" in undecayed and "blocks.0.norm1.weight" in undecayed and "head.bias" in undecayed
    assert all(n.endswith("weight") and "norm" not in n for n in decayed) and "blocks.0.attn.qkv.weight" in decayed
    frozen = {"pos_embed", "tokens_to_token.attention1.w", "tokens_to_token.attention2.w"}
    assert frozen <= set(dict(model.named_buffers()))  # fixed tensors are buffers, never handed to the optimizer
    assert decayed | undecayed == set(names.values())


def test_lr_warmup_start_peak_and_end():
    model = torch.nn.Linear(2, 2)
    cfg = dict(DEFAULTS)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    sched, total = build_scheduler(opt, cfg, updates_per_epoch=100)
    assert total == 310  # 300 cosine epochs + 10 cooldown
    lr_at = lambda e: sched._get_lr(e)[0]  # noqa: E731
    assert lr_at(0) == pytest.approx(1e-6)
    peak = 1e-5 + 0.5 * (5e-4 - 1e-5) * (1 + torch.cos(torch.tensor(torch.pi * 10 / 300)).item())
    assert lr_at(10) == pytest.approx(peak) and lr_at(10) > 0.99 * 5e-4  # warmup ends at (almost) the peak
    assert lr_at(5) == pytest.approx(1e-6 + 5 * (5e-4 - 1e-6) / 10)
    assert lr_at(299) == pytest.approx(1e-5, rel=1e-2) and lr_at(309) == pytest.approx(1e-5)


def test_a_schedule_can_end_before_the_epochs_do():
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    cfg = dict(
        DEFAULTS, lr=1e-3, epochs=3, schedule_epochs=1.5, warmup_epochs=0, cooldown_epochs=0, sched_on_updates=True
    )
    sched, total = build_scheduler(opt, cfg, updates_per_epoch=100)
    lr_at = lambda u: sched._get_lr(u)[0]  # noqa: E731
    assert total == 3 and lr_at(0) == pytest.approx(1e-3)
    assert lr_at(75) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half way through 150 updates
    assert lr_at(150) == pytest.approx(1e-5) and lr_at(299) == pytest.approx(1e-5)


def test_a_warmup_as_long_as_the_schedule_is_named(caplog):
    """--epochs 2 with the recipe's 10 warmup epochs warms up all the way and never reaches lr: a warning says so."""
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    for epochs, warned in ((2, True), (11, False)):
        caplog.clear()
        sched, _ = build_scheduler(opt, dict(DEFAULTS, lr=1e-3, epochs=epochs), updates_per_epoch=10)
        assert (max(sched._get_lr(e)[0] for e in range(epochs)) < 0.5e-3) == warned  # never near lr
        assert ("warmup_epochs 10 is not below epochs 2: the lr warms up" in caplog.text) == warned


def test_a_time_schedule_follows_the_clock_and_ends_at_the_budget():
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    cfg = dict(
        DEFAULTS, lr=1e-3, epochs=4, schedule_epochs=2, warmup_epochs=0, cooldown_epochs=0, sched_on_updates=True
    )
    sched, _ = build_scheduler(opt, cfg, updates_per_epoch=100)
    now = [0.0]
    timed = TimeSchedule(sched, 200, budget=50.0, seconds=lambda: now[0])
    for seconds, lr in ((0.0, 1e-3), (25.0, 1e-5 + 0.5 * (1e-3 - 1e-5)), (50.0, 1e-5), (80.0, 1e-5)):
        now[0] = seconds
        timed.step_update(num_updates=7)  # whatever the updates, the clock decides
        assert opt.param_groups[0]["lr"] == pytest.approx(lr)
    with pytest.raises(InputError, match="schedule_on_time.*--time-budget"):
        check_config(dict(DEFAULTS, data="digits", schedule_on_time=True))


def test_compile_on_a_cpu_without_a_cxx_compiler_trains_eagerly_and_says_so(monkeypatch, caplog):
    from torch._inductor import cpp_builder
    from torch._inductor.exc import InvalidCxxCompiler

    def no_compiler() -> str:
        raise InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    model = torch.nn.Linear(2, 2)
    assert compiled(model, torch.device("cpu")) is model  # not a wrapper whose first step would fail
    assert "install g++ or pass --compile false" in caplog.text
    assert compiled(model, torch.device("cuda")) is not model  # the GPU back-end builds no C++ here


def test_a_timm_baseline_takes_the_img_size_it_accepts_and_freezes_apart_from_its_own_head():
    """A timm ViT is built at the config's img_size (a CNN, which takes none, at any); `get_classifier()` names the
    head of any timm model (a ResNet's fc), so freeze_backbone leaves it a head to train."""
    from t2t_vit.training.setup import build_model, param_groups

    cfg = dict(DEFAULTS, data="digits", model="timm:vit_tiny_patch16_224", img_size=32, drop_path=0.0)
    _, vit, kwargs = build_model(cfg, num_classes=10)
    assert kwargs["img_size"] == 32 and vit(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    _, resnet, kwargs = build_model(dict(cfg, model="timm:resnet18"), num_classes=10)
    assert "img_size" not in kwargs
    groups = param_groups(resnet, dict(cfg, freeze_backbone=True))
    trained = {id(p) for group in groups for p in group["params"]}
    assert trained == {id(resnet.fc.weight), id(resnet.fc.bias)}


def test_lr_scales_with_the_global_batch():
    cfg = dict(DEFAULTS, batch_size=64, lr=5e-4, accum_steps=2)
    assert scaled_lr(cfg, world=8) == (1024, pytest.approx(1e-3))


def test_mixup_cutmix_and_smoothing_are_on_by_default():
    from timm.loss import SoftTargetCrossEntropy

    criterion, mixup = build_criterion(DEFAULTS, num_classes=10)
    assert isinstance(criterion, SoftTargetCrossEntropy)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.switch_prob, mixup.label_smoothing) == (0.8, 1.0, 0.5, 0.1)
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 10
    mixed, soft = mixup(x.clone(), y)
    assert soft.shape == (8, 10) and (soft.max(1).values < 1).all() and not torch.equal(mixed, x)


def test_paper_configs_hold_the_paper_numbers():
    expected = {
        "t2t_vit_7": (1e-3, 0.03),
        "t2t_vit_10": (1e-3, 0.03),
        "t2t_vit_12": (1e-3, 0.03),
        "t2t_vit_14": (5e-4, 0.05),
        "t2t_vit_t_14": (5e-4, 0.05),
        "t2t_vit_19": (5e-4, 0.065),
        "t2t_vit_24": (5e-4, 0.065),
        "t2t_vit_t_19": (5e-4, 0.065),
        "t2t_vit_t_24": (5e-4, 0.065),
    }
    for name, (lr, wd) in expected.items():
        cfg = resolve_config(name)
        assert (cfg["model"], cfg["lr"], cfg["weight_decay"], cfg["lr_base_batch"]) == (name, lr, wd, 512)
        assert cfg["epochs"] + cfg["cooldown_epochs"] == 310 and cfg["model_ema_decay"] == 0.99996
    assert resolve_config("t2t_vit_14_384")["img_size"] == 384


@pytest.mark.parametrize("name", ["finetune_cifar", "finetune_fashion_mnist"])
def test_the_transfer_recipes_augment_as_the_authors_transfer_learning(name, caplog):
    """Resize, padded random crop, flip, and nothing of the ImageNet recipe: its random erasing (0.25) once came
    along by default; RandAugment and colour jitter, which the padded crop does not apply, are named if set."""
    from torchvision import transforms as T

    from t2t_vit.data.loader import create_transform

    cfg = check_config(resolve_config(name, dict(data="digits", model="t2t_vit_7")))
    assert (cfg["reprob"], cfg["aa"], cfg["color_jitter"], cfg["mixup"], cfg["cutmix"]) == (0, None, 0, 0, 0)
    data_config = dict(input_size=(3, 32, 32), mean=cfg["mean"], std=cfg["std"], interpolation="bilinear")
    steps = create_transform(cfg, data_config, training=True, uint8=True).transforms
    assert [type(t) for t in steps] == [T.Resize, T.RandomCrop, T.RandomHorizontalFlip, T.PILToTensor]
    assert "not applied with train_crop pad" not in caplog.text
    check_config(dict(cfg, aa="rand-m9-mstd0.5-inc1"))
    assert "aa: not applied with train_crop pad" in caplog.text
    check_config(dict(cfg, scale=[0.5, 1.0], train_interpolation="bicubic"))  # the random resized crop's, moved
    assert "scale, train_interpolation: not applied with train_crop pad" in caplog.text
    caplog.clear()
    with pytest.MonkeyPatch.context() as env:  # a torchrun rank but 0: the config is the same; rank 0 says it
        env.setenv("RANK", "1")
        check_config(dict(cfg, scale=[0.5, 1.0]))
    assert "not applied" not in caplog.text


def test_overrides_from_the_command_line():
    cfg = resolve_config("digits", parse_overrides(["--batch-size", "32", "--lr=0.01", "model_ema=true", "--compile"]))
    assert (cfg["batch_size"], cfg["lr"], cfg["model_ema"], cfg["compile"]) == (32, 0.01, True, True)
    with pytest.raises(InputError, match=r"unknown config key 'batchsize'.*did you mean batch_size"):
        resolve_config("digits", {"batchsize": 3})


# ----------------------------------------------------------------------------------------------- runs


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    common = [
        "--config",
        "digits",
        "--no-progress",
        "--output",
        str(tmp_path),
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--scale",
        "[1.0, 1.0]",
        "--ratio",
        "[1.0, 1.0]",
        "--model-kwargs",
        json.dumps(dict(TINY_MODEL, t2t_mixer="transformer")),
    ]  # no dropout anywhere: ranks draw no randomness
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "-m",
        "t2t_vit",
        "train",
        *common,
        "--batch-size",
        "32",
        "--name",
        "ddp",
    ]
    single = [sys.executable, "-m", "t2t_vit", "train", *common, "--batch-size", "64", "--name", "single"]
    for cmd in (torchrun, single):
        done = subprocess.run(cmd, env=subprocess_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ddp, one = last_checkpoint(tmp_path / "ddp")["model"], last_checkpoint(tmp_path / "single")["model"]
    assert last_checkpoint(tmp_path / "ddp")["updates"] == 1437 // 64
    assert max((ddp[k] - one[k]).abs().max().item() for k in one) <= 1e-5


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_exits_non_zero_and_says_how_to_continue(tmp_path, sig, code):
    cmd = [
        sys.executable,
        "-m",
        "t2t_vit",
        "train",
        "--config",
        "digits",
        "--no-progress",
        "--output",
        str(tmp_path),
        "--name",
        "sig",
        "--epochs",
        "30",
        "--model-kwargs",
        json.dumps(TINY_MODEL),
    ]
    proc = subprocess.Popen(cmd, env=subprocess_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not (tmp_path / "sig" / "metrics.csv").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(sig)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == code, out
    assert f"{sig.name} received" in out and "held-out top-1" not in out
    last = [line for line in out.splitlines() if line.startswith("t2t-vit train: stopped at epoch")]
    assert last and last[0].endswith("--resume auto") and " --name sig " in last[0], out
    state = last_checkpoint(tmp_path / "sig")
    assert 1 <= state["epoch"] < 30 and not (tmp_path / "sig" / ".lock").exists()
    from t2t_vit.cli import main

    assert (
        main([*cmd[3:], "--resume", "auto", "--stop-after-epochs", "1"]) == 0
    )  # the command it printed, less 29 epochs
    assert last_checkpoint(tmp_path / "sig")["epoch"] == state["epoch"] + 1


# ----------------------------------------------------------------------------------------------- bad input


def test_corrupt_images_are_skipped_and_counted(tmp_path, caplog):
    data = image_folder(tmp_path / "data", corrupt=1)
    cfg = tiny_train_config(tmp_path, data=str(data), batch_size=4, epochs=1, warmup_epochs=0)
    with caplog.at_level("WARNING"):
        result = train(cfg, progress=False)
    assert result["skipped"] == 1 and "skipping unreadable image" in caplog.text and "broken0.jpg" in caplog.text
    assert ",1," in (Path(result["run_dir"]) / "metrics.csv").read_text().splitlines()[1]


def test_the_papers_recipe_trains_end_to_end_on_an_image_folder(tmp_path):
    """An ImageNet run's pieces together, at 16 px with one tiny block: RandAugment, mixup/cutmix with smoothing,
    random erasing on the device, drop path, EMA (the shipped demos leave most of them off)."""
    data = image_folder(tmp_path / "data", per_class=8)
    overrides = dict(data=str(data), model_kwargs=dict(TINY_MODEL), img_size=16, epochs=2, warmup_epochs=1)
    overrides.update(cooldown_epochs=0, batch_size=4, workers=0, output=str(tmp_path), name="run")
    cfg = resolve_config("t2t_vit_7", overrides)
    assert cfg["aa"] == "rand-m9-mstd0.5-inc1" and cfg["mixup"] > 0 and cfg["reprob"] > 0 and cfg["model_ema"]
    result = train(cfg, progress=False)
    assert len(metrics_rows(result["run_dir"])) == 2 and result["skipped"] == 0 and 0 < result["train_loss"] < 10
    assert 0 <= result["ema_val_top1"] <= 100


def test_missing_or_empty_data_dirs(tmp_path):
    with pytest.raises(InputError, match=r"neither a known dataset.*nor an existing directory"):
        create_dataset(str(tmp_path / "nowhere"), "train")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(InputError, match=r"no images found under .*one sub-folder of images per class'?\)?$"):
        create_dataset(str(tmp_path / "empty"), "train")
    (tmp_path / "flat" / "val").mkdir(parents=True)  # ImageNet's val/ as it ships: 50,000 files, no class folders
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    with pytest.raises(InputError, match=r"per class; its 3 images lie loose in it \(ImageNet's val/ ships so"):
        create_dataset(str(tmp_path / "flat"), "val")
    with pytest.raises(InputError, match=r"has no val/ folder .* beside its training split: hold some images of each"):
        create_dataset(str(tmp_path / "empty"), "val")  # not told that class folders alone would do: for eval only
    with pytest.raises(InputError, match=r"has no val/ folder .*: an ImageFolder root .* class folders alone also do"):
        create_dataset(str(tmp_path / "empty" / "train"), "val")  # class folders, though named as a training split
    with pytest.raises(InputError, match=r"data dir '/nowhere' for fashion-mnist does not exist"):
        create_dataset("fashion-mnist:/nowhere", "train")
    (tmp_path / "idx").mkdir()
    with pytest.raises(InputError, match=r"train-images-idx3-ubyte\[.gz\] not found"):
        create_dataset(f"mnist:{tmp_path / 'idx'}", "train")


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_the_recipes_randaugment_takes_every_op_at_full_magnitude(mode):
    """rand-m9-mstd0.5-inc1 draws magnitude 10 for about 1 image in 660, where increasing posterize keeps 0 bits:
    Pillow 13 raises on that, so the recipe's first epoch ended in a worker's ValueError. The authors' Pillow gave a
    black image, and so does the recipe here; every other op takes magnitude 10 as it is."""
    import numpy as np
    from PIL import Image

    from t2t_vit.data.loader import create_transform

    chans = len(mode)
    data_config = dict(input_size=(chans, 24, 24), mean=(0.5,) * chans, std=(0.5,) * chans, interpolation="bicubic")
    tf = create_transform(dict(DEFAULTS, in_chans=chans), dict(data_config, crop_pct=0.9), training=True, uint8=True)
    (augment,) = [t for t in tf.transforms if hasattr(t, "ops")]
    image = Image.fromarray((np.random.default_rng(0).random((24, 24, chans)) * 255).astype("uint8").squeeze())
    assert image.mode == mode and "PosterizeIncreasing" in [op.name for op in augment.ops]
    for op in augment.ops:
        op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0.0
        out = op(image)
        assert out.size == image.size and out.mode == mode
        if op.name == "PosterizeIncreasing":
            assert not np.asarray(out).any()  # 0 bits kept
    assert tf(image).shape == (chans, 24, 24)


def test_a_timm_dataset_spec_without_its_reader_names_the_install(monkeypatch):
    """timm reads hfds/, wds/ and tfds/ specs with libraries the package does not install: their absence is one
    error naming the pip install, not timm's traceback (found absent whether or not this machine has them)."""
    import importlib.util

    real, absent = importlib.util.find_spec, ("datasets", "webdataset", "tensorflow_datasets")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name, *a))
    for spec, install in (
        ("hfds/beans", "datasets, which is not installed: pip install 't2t-vit[hfds]'"),
        ("wds/shards", "webdataset, which is not installed: pip install webdataset"),
        ("tfds/mnist", "tensorflow_datasets, which is not installed: pip install tensorflow tensorflow-datasets"),
    ):
        with pytest.raises(InputError, match=re.escape(f"--data {spec!r} is read by timm with {install}")):
            create_dataset(spec, "train")


def test_eval_of_a_checkpoint_on_data_of_another_class_count_names_the_fix(tmp_path, tiny_run):
    ckpt = tiny_run / "last.pth.tar"
    with pytest.raises(InputError, match=r"head has 10 classes but .* has 3: .*fine-tune"):
        evaluate_checkpoint(str(ckpt), str(image_folder(tmp_path / "three")), progress=False)
    metrics = evaluate_checkpoint(str(ckpt), "digits", progress=False)  # our checkpoint needs no --model
    assert metrics["n"] == 360 and metrics["model"] == "t2t_vit_7" and 0 <= metrics["top1"] <= 100


def test_eval_without_data_scores_the_data_the_run_trained_on(tiny_run, tiny_checkpoint, capsys):
    from t2t_vit.cli import main

    assert main(["eval", "--checkpoint", str(tiny_run / "last.pth.tar"), "--workers", "0", "--no-progress"]) == 0
    assert " on digits (360 images): top-1 " in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--workers", "0"]) == 2  # weights and meta, no config
    one_line_error(capsys, f"--data is needed: {str(tiny_checkpoint)!r} does not record the data", "Pass --data")


def test_a_directory_holding_a_run_is_not_started_over(tmp_path):
    train(tiny_train_config(tmp_path, epochs=1, warmup_epochs=0), progress=False)
    with pytest.raises(InputError, match=r"already holds a run: pass --resume auto"):
        train(tiny_train_config(tmp_path, epochs=1, warmup_epochs=0), progress=False)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from t2t_vit.cli import main

    assert main(["train", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("t2t-vit train: error: --data") and "\n" not in err and "Traceback" not in err


def test_dense_keys_on_a_classification_run_are_one_line_and_leave_nothing(tmp_path, capsys):
    """A crop window or a detector for a classification run would do nothing: an error naming them, as a dense task
    gets for the classification keys it has no use for."""
    from t2t_vit.cli import main

    out = tmp_path / "runs"
    args = ["train", "--config", "digits", "--output", str(out), "--dense-crop", "96", "--detector", "retinanet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(
        "t2t-vit train: error: classification has no use for the dense-task keys it was given (detector "
        "'retinanet', dense_crop 96): remove them from the command line or config, or pass --task "
        "detection|instance|segmentation"
    )
    assert not out.exists()
    check_config(dict(DEFAULTS, data="digits", detector="fasterrcnn", dense_crop=None))  # at their defaults: left be


def test_log_interval_gives_a_line_where_no_bar_shows(tmp_path, caplog):
    with caplog.at_level("INFO", logger="t2t_vit.training.engine"):
        train(tiny_train_config(tmp_path, epochs=1, warmup_epochs=0, log_interval=10), progress=False)
    lines = [r.message for r in caplog.records if r.name == "t2t_vit.training.engine"]
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/1 step 10/22", "epoch 1/1 step 20/22"]
    assert all("loss " in line and "lr " in line and "img/s" in line for line in lines)


def test_eval_every_skips_epochs_but_never_the_end_of_a_process_or_a_run(tmp_path, caplog):
    cfg = tiny_train_config(tmp_path, epochs=4, eval_every=3, stop_after_epochs=2, model_ema=True)
    with caplog.at_level("INFO", logger="t2t_vit.training.metrics"):
        first = train(cfg, progress=False)  # stops after 2 epochs: the 2nd is evaluated, the 1st not
    assert "epoch 1/4  lr" in caplog.text and "not evaluated (eval_every)" in caplog.text
    m = RunDir(first["run_dir"]).read_metrics()
    assert m["val_top1"][0] != m["val_top1"][0] and first["val_top1"] == m["val_top1"][1]
    assert first["best"]["epoch"] == 2 and (Path(first["run_dir"]) / "best.pth.tar").is_file()
    out = train(dict(cfg, stop_after_epochs=None), resume="auto", progress=False)
    m = RunDir(out["run_dir"]).read_metrics()
    measured = [e for e, v in zip(m["epoch"], m["val_top1"]) if v == v]  # NaN where not evaluated
    assert measured == [2, 3, 4]  # 3: every 3rd; 2: a process's end; 4: the run's end
    assert [e for e, v in zip(m["epoch"], m["ema_val_top1"]) if v == v] == measured
    assert out["best"]["epoch"] in measured and out["val_top1"] == m["val_top1"][-1]
    assert (Path(out["run_dir"]) / "curves.png").is_file()


def test_a_time_budget_ends_the_run_mid_epoch_evaluated_and_finished(tmp_path, caplog):
    cfg = tiny_train_config(tmp_path, epochs=50, eval_every=100, time_budget=0.5)
    out = train(cfg, progress=False)
    m = RunDir(out["run_dir"]).read_metrics()
    assert len(m["epoch"]) < 50 and m["train_s"][-1] >= 0.5 and out["train_seconds"] == m["train_s"][-1]
    assert m["val_top1"][-1] == out["val_top1"]  # evaluated where the budget ended it, though not an eval_every epoch
    assert all(v != v for v in m["val_top1"][:-1])  # the epochs before it: not evaluated
    with caplog.at_level("INFO", logger="t2t_vit.training.run"):
        again = train(cfg, resume="auto", progress=False)  # nothing left: the run is finished
    assert len(RunDir(again["run_dir"]).read_metrics()["epoch"]) == len(m["epoch"])
    # its result is still the run's (the CLI's headline had nothing to print)
    assert again["val_top1"] == out["val_top1"] and again["epoch"] == out["epoch"] == len(m["epoch"])
    assert f"nothing left to train: the run ended after epoch {out['epoch']}" in caplog.text


def test_compiling_is_not_training_time_for_the_time_budget(tmp_path, monkeypatch, caplog):
    """A compiled model's first update compiles it (a minute and more on some machines): a 3 s stand-in for that,
    longer than the whole budget, is left out of the clock, so the run still trains its budget's worth. (How many
    epochs that is depends on the machine: CI's 2 cores have taken more than 1 s for one.)"""

    class CompilesFirst(torch.nn.Module):  # as torch.compile holds the model, its first call slow
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 1:
                time.sleep(3.0)
            return self.module(x)

    monkeypatch.setattr("t2t_vit.training.run.compiled", lambda model, device: CompilesFirst(model))
    cfg = tiny_train_config(tmp_path, epochs=50, eval_every=100, time_budget=1.0, compile=True)
    with caplog.at_level("INFO", logger="t2t_vit.training.engine"):
        out = train(cfg, progress=False)
    m = RunDir(out["run_dir"]).read_metrics()
    assert 1.0 <= m["train_s"][-1] < 3.0  # the budget spent training; counted, the sleep alone would be 3 s
    seconds = float(re.search(r"compiling the model and its first update took ([\d.]+) s", caplog.text)[1])
    assert seconds >= 3.0


def test_an_epoch_bound_that_ends_a_run_before_its_clock_driven_schedule_is_said(tmp_path, caplog):
    """A schedule on time ends at the budget; a faster machine reaching `epochs` first leaves it unfinished."""
    kwargs = dict(schedule_on_time=True, sched_on_updates=True, warmup_epochs=0, model_ema=False)
    with caplog.at_level("WARNING", logger="t2t_vit.training.run"):
        train(tiny_train_config(tmp_path / "bound", epochs=1, time_budget=1000, **kwargs), progress=False)
    said = re.search(
        r"bound of 1 epochs after [\d.]+ s of training, before its time budget of 1000 s.*at (\d+)%", caplog.text
    )
    assert said and int(said[1]) < 5 and "raise --epochs" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="t2t_vit.training.run"):  # the budget ends it: nothing to say
        train(tiny_train_config(tmp_path / "budget", epochs=1000, time_budget=1.0, **kwargs), progress=False)
    assert "raise --epochs" not in caplog.text


@pytest.mark.parametrize("name", [n for n in config_names() if resolve_config(n)["model"]])  # fine-tuning: the
def test_every_shipped_config_resolves_and_its_model_takes_its_images(name):  # checkpoint names the model
    cfg = resolve_config(name)
    with torch.device("meta"):
        model = create_model(
            cfg["model"], num_classes=10, img_size=cfg["img_size"], in_chans=cfg["in_chans"], **cfg["model_kwargs"]
        )  # a dense task's config: its backbone, as a classifier
        logits = model(torch.empty(2, cfg["in_chans"], cfg["img_size"], cfg["img_size"]))
    assert logits.shape == (2, 10)


def test_each_demo_is_a_shipped_config_of_its_task():
    from t2t_vit.cli.demo import DEMOS

    for task, (name, _) in DEMOS.items():
        assert name in config_names() and resolve_config(name)["task"] == task


def test_unwrap_finds_the_model_in_a_compiled_model_inside_a_wrapper():
    model = create_model("t2t_vit_7", num_classes=3, img_size=32)

    class Wrapper(torch.nn.Module):  # as DDP holds the compiled model
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert unwrap(Wrapper(torch.compile(model))) is model
    assert unwrap(torch.compile(Wrapper(model))) is model
