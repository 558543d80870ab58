"""Runs that resume exactly from any stop, restart on their own, and never lose or hide work."""

import errno
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2t_vit import InputError
from t2t_vit.cli import main
from t2t_vit.config import parse_overrides, resolve_config
from t2t_vit.data import create_dataset
from t2t_vit.training.run import build_scheduler, train
from t2t_vit.training.run_dir import RunDir

from .helpers import (
    TINY_MODEL,
    Killed,
    assert_same_run,
    hook_criterion,
    image_folder,
    last_checkpoint,
    metrics_rows,
    one_line_error,
    tiny_train_config,
)

# Every source of randomness on: augmentation, mixup/cutmix, drop path, dropout, EMA; 11 steps an epoch.
RANDOM = dict(
    scale=[0.6, 1.0],
    aa="rand-m5-mstd0.5",
    reprob=0.25,
    mixup=0.2,
    cutmix=0.2,
    drop_path=0.1,
    drop=0.1,
    model_ema=True,
    model_ema_decay=0.9,
    train_subset=704,
)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must end equal to (with workers 0; per-sample augmentation
    seeds make the worker count irrelevant)."""
    return Path(train(tiny_train_config(tmp_path_factory.mktemp("straight"), **RANDOM), progress=False)["run_dir"])


# ----------------------------------------------------------------------------------------------- config values


def test_config_values_parse_as_users_write_them():
    assert parse_overrides(["--lr", "2e-3", "--epochs", "1e3", "--batch-size", "1_000", "--min-lr=1E-5"]) == dict(
        lr=2e-3, epochs=1000.0, batch_size=1000, min_lr=1e-5
    )
    cfg = resolve_config("digits", parse_overrides(["--lr", "2e-3", "--epochs", "1e3", "--workers", "1_0"]))
    assert (cfg["lr"], cfg["epochs"], cfg["workers"]) == (2e-3, 1000, 10) and isinstance(cfg["epochs"], int)
    for short, name in (("fp16", "float16"), ("bf16", "bfloat16")):  # as `eval --precision` takes them
        assert resolve_config("digits", parse_overrides(["--amp-dtype", short]))["amp_dtype"] == name


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "0"], "batch_size = 0 (from the command line) is not allowed: expected an integer >= 1"),
        (["--batch-size", "-4"], "batch_size = -4"),
        (["--lr", "-1"], "lr = -1 (from the command line) is not allowed: expected a number > 0"),
        (["--lr", "abc"], "lr = 'abc'"),
        (["--epochs", "abc"], "epochs = 'abc'"),
        (["--epochs", "0"], "epochs = 0"),
        (["--epochs", "1.5"], "epochs = 1.5 (from the command line) is not allowed: expected an integer >= 1"),
        (["--workers", "-1"], "workers = -1"),
        (["--nonfinite", "ignore"], "expected one of stop, skip, rollback"),
        (["--scale", "[0.5]"], "expected a list of 2 numbers"),
        (
            ["--model-kwargs", "{depth:0}"],
            "{'depth:0': None} (from the command line) is not allowed: expected a space "
            "after each colon, as YAML needs: {depth: 0}",
        ),
    ],
)
def test_bad_config_values_are_one_line_and_leave_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "runs"
    assert main(["train", "--config", "digits", "--output", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("t2t-vit train: error: config key ") and message in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--accum-steps", "23"], "accum_steps 23 is more than the 22 batches of 64 an epoch gives this process"),
        (["--train-subset", "9"], "train_subset 9 is fewer than the 10 classes it keeps: pass 10 or more"),
        (["--opt", "adamx"], "opt 'adamx' is not an optimizer timm knows"),
        (["--sched", "cosin"], "sched 'cosin' is not a schedule timm knows"),
        (["--aa", "rand-x9"], "aa 'rand-x9' is not an augmentation policy timm reads (Unknown RandAugment config"),
        (["--aa", "trivialaugment"], "aa 'trivialaugment' is not an augmentation policy timm reads (Unknown AA"),
    ],
)
def test_settings_no_run_can_use_are_one_line_and_leave_nothing(tmp_path, capsys, args, message):
    """Not a traceback from timm or scikit-learn: an error naming the key and the fix, before the run directory."""
    out = tmp_path / "runs"
    assert main(["train", "--config", "digits", "--output", str(out), *args]) == 2
    one_line_error(capsys, f"t2t-vit train: error: {message}")
    assert not out.exists()


def test_those_settings_at_their_limits_are_allowed():
    from t2t_vit.training.setup import build_data, check_config

    overrides = dict(train_subset=10, batch_size=2, accum_steps=5, opt="lookahead_adamw", sched="step", aa="v0")
    data = build_data(check_config(resolve_config("digits", overrides)), 1, 0, False)
    assert len(data.train_set) == 10 and len(data.train_loader) == 5


def test_output_that_is_a_file_or_read_only_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["train", "--config", "digits", "--output", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert "output " in err and "is a file, not a directory" in err and err.count("\n") == 1
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        assert main(["train", "--config", "digits", "--output", str(tmp_path / "ro" / "runs")]) == 2
        assert "is not writable" in capsys.readouterr().err


def test_a_failed_start_leaves_no_run_directory(tmp_path):
    with pytest.raises(InputError, match=r"unknown model 't2t_vit_99'"):
        train(tiny_train_config(tmp_path, model="t2t_vit_99"), progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(InputError, match=r"checkpoint to start from '.*nowhere.pth' does not exist"):
        train(tiny_train_config(tmp_path, init_checkpoint=str(tmp_path / "nowhere.pth")), progress=False)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------- resume


def test_resume_applies_the_keys_that_may_change(tmp_path, caplog):
    first = train(tiny_train_config(tmp_path, epochs=3, stop_after_epochs=1), progress=False)
    new = tiny_train_config(tmp_path, epochs=4, lr=5e-4, clip_grad=1.0, stop_after_epochs=1)
    with caplog.at_level("INFO", logger="t2t_vit.training.run"):
        train(new, resume="auto", progress=False)
    assert "resume changes lr: 0.001 -> 0.0005" in caplog.text and "resume changes epochs: 3 -> 4" in caplog.text
    # the lr of epoch 2 is the new schedule's at 2 x 22 updates, not the old one's
    opt = torch.optim.AdamW(torch.nn.Linear(1, 1).parameters(), lr=5e-4 * 64 / 64)
    sched, _ = build_scheduler(opt, new, updates_per_epoch=22)
    sched.step_update(num_updates=44)
    assert float(metrics_rows(first["run_dir"])[1]["lr"]) == opt.param_groups[0]["lr"]
    history = json.loads(json.dumps(__import__("yaml").safe_load((tmp_path / "run" / "config.yaml").read_text())))
    assert history["lr"] == 5e-4 and history["epochs"] == 4
    assert history["resumes"][0]["epoch"] == 1 and history["resumes"][0]["changed"]["lr"] == dict(was=1e-3, now=5e-4)
    assert resolve_config(tmp_path / "run" / "config.yaml")["lr"] == 5e-4  # a run's config.yaml is a config


@pytest.mark.parametrize(
    "change, says",
    [
        (dict(img_size=24), "img_size 16 -> 24"),
        (dict(model_kwargs=dict(TINY_MODEL, depth=2)), "model_kwargs {"),
        (dict(model="t2t_vit_t_14"), "model 't2t_vit_7' -> 't2t_vit_t_14'"),
        (dict(data="three classes", batch_size=4), "data 'digits' -> '"),
    ],
    ids=["img_size", "model_kwargs", "model", "data"],
)
def test_resume_refuses_a_key_that_may_not_change_and_names_the_fix(tmp_path, tiny_run, change, says):
    if "data" in change:
        change = dict(change, data=str(image_folder(tmp_path / "three")))
    cfg = tiny_train_config(tmp_path, **change)
    with pytest.raises(InputError, match=rf"cannot resume .* with {re.escape(says)}.*--init-checkpoint instead"):
        train(cfg, resume=str(tiny_run / "last.pth.tar"), progress=False)
    assert not (tmp_path / "run" / "last.pth.tar").exists()


def test_resume_lets_go_of_a_key_the_task_has_no_use_for():
    """A classification run saved with a dense-task key (accepted, and ignored, before check_config refused one)
    resumes once the key is dropped: it changes nothing. The same key on a dense task may not change."""
    from t2t_vit.config_keys import DEFAULTS
    from t2t_vit.training.state import resume_changes

    saved = dict(DEFAULTS, data="digits", dense_crop=96)
    assert resume_changes(saved, dict(saved, dense_crop=None), Path("last.pth.tar")) == dict(dense_crop=(96, None))
    dense = dict(saved, task="detection", mixup=0.0)
    assert resume_changes(dense, dict(dense, mixup=0.5), Path("last.pth.tar")) == dict(mixup=(0.0, 0.5))
    with pytest.raises(InputError, match=r"cannot resume 'last.pth.tar' with dense_crop 96 -> None"):
        resume_changes(dense, dict(dense, dense_crop=None), Path("last.pth.tar"))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_signal_mid_epoch_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, straight, workers, caplog):
    hook_criterion(monkeypatch, {15: signal.SIGTERM})  # epoch 2, step 4 of 11
    stopped = train(tiny_train_config(tmp_path, **RANDOM, workers=workers), progress=False)
    assert stopped["stopped"] == signal.SIGTERM and stopped["at"].startswith("epoch 2 step 4 ")
    state = last_checkpoint(stopped["run_dir"])
    assert (state["epoch"], state["step_in_epoch"]) == (1, 4)
    monkeypatch.undo()
    caplog.set_level(logging.INFO, "t2t_vit")
    train(tiny_train_config(tmp_path, **RANDOM, workers=workers), resume="auto", progress=False)
    assert_same_run(straight, tmp_path / "run")
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed from")]
    assert resumed == [f"resumed from {tmp_path / 'run' / 'last.pth.tar'} at {stopped['at']}"]  # it said epoch 1


def test_a_nonfinite_stop_saves_the_state_before_it_and_resumes_exactly(tmp_path, monkeypatch, straight):
    hook_criterion(monkeypatch, {5: "nan"})  # epoch 1: no checkpoint existed yet
    with pytest.raises(InputError, match=r"non-finite loss after epoch 1 step 4 .*--resume auto and a lower --lr"):
        train(tiny_train_config(tmp_path, **RANDOM), progress=False)
    state = last_checkpoint(tmp_path / "run")
    assert (state["epoch"], state["step_in_epoch"]) == (0, 4)
    monkeypatch.undo()
    train(tiny_train_config(tmp_path, **RANDOM), resume="auto", progress=False)
    assert_same_run(straight, tmp_path / "run")


def test_kill_after_a_save_resumes_to_the_uninterrupted_run(tmp_path, straight):
    """What a SIGKILL leaves: the last checkpoint of a finished epoch (the process never saw the signal)."""
    train(tiny_train_config(tmp_path, **RANDOM, workers=2, stop_after_epochs=1), progress=False)
    train(tiny_train_config(tmp_path, **RANDOM, workers=2), resume="auto", progress=False)
    assert_same_run(straight, tmp_path / "run")


def test_saves_on_the_clock_change_nothing_and_a_kill_after_one_loses_only_what_followed(
    tmp_path, monkeypatch, straight
):
    """checkpoint_minutes saves within an epoch (here after every update: the save is always due) and the run goes
    on as if it had not; a kill without warning (nothing runs after it) resumes from the latest save."""
    saves, real_save = [], RunDir.save

    def save(self, state, *args, **kwargs):
        saves.append((state["epoch"], state["step_in_epoch"]))
        real_save(self, state, *args, **kwargs)

    monkeypatch.setattr(RunDir, "save", save)
    hook_criterion(monkeypatch, {15: "kill"})  # epoch 2, step 4 of 11
    cfg = tiny_train_config(tmp_path, **RANDOM, workers=2, checkpoint_minutes=1e-9)
    with pytest.raises(Killed):
        train(cfg, progress=False)
    # every update but an epoch's last (its end saves), then epoch 2 up to the update before the kill
    assert saves == [(0, step) for step in range(1, 11)] + [(1, 0), (1, 1), (1, 2), (1, 3)]
    monkeypatch.undo()
    train(cfg, resume="auto", progress=False)
    assert_same_run(straight, tmp_path / "run")


def test_train_and_eval_leave_no_loader_workers_behind(tmp_path, monkeypatch):
    """Loader workers ignore SIGTERM (a preemption's signal is the main process's to act on), so one still alive at
    interpreter exit hangs it: multiprocessing's exit handler sends them SIGTERM and waits (seen on Python 3.12 with
    torch 2.11, where the loaders outlived `t2t-vit train`). train() and evaluate_checkpoint end their persistent
    workers before they return, however long their loaders live: here the test keeps them."""
    import multiprocessing

    from t2t_vit import data
    from t2t_vit.training.evaluate import evaluate_checkpoint

    kept, real = [], data.create_loader
    monkeypatch.setattr(data, "create_loader", lambda *a, **k: kept.append(real(*a, **k)) or kept[-1])
    before = set(multiprocessing.active_children())
    try:
        result = train(tiny_train_config(tmp_path, aa="rand-m5-mstd0.5", workers=2, epochs=1), progress=False)
        assert len(kept) == 2 and all(loader.num_workers == 2 for loader in kept)
        assert set(multiprocessing.active_children()) == before
        evaluate_checkpoint(str(Path(result["run_dir"]) / "last.pth.tar"), "digits", workers=2, progress=False)
        assert len(kept) == 3 and set(multiprocessing.active_children()) == before
    finally:  # a failure here must not hang pytest's own exit
        for worker in set(multiprocessing.active_children()) - before:
            worker.kill()


def test_the_cli_ends_loader_workers_a_command_left_running(monkeypatch, caplog):
    """The backstop behind `workers_closed`: a command that forgets it still exits, its workers killed (they ignore
    the SIGTERM of multiprocessing's exit handler) and the count logged."""
    import multiprocessing

    from torch.utils.data import DataLoader

    from t2t_vit.cli import main, models
    from t2t_vit.data.loader import _worker_init

    kept, handler = [], None

    def leaky(args) -> int:
        loader = DataLoader(range(8), batch_size=2, num_workers=2, persistent_workers=True, worker_init_fn=_worker_init)
        next(iter(loader))
        kept.append(loader)
        nonlocal handler
        handler = signal.getsignal(signal.SIGCHLD)
        return 0

    monkeypatch.setattr(models, "_models", leaky)
    before = set(multiprocessing.active_children())
    try:
        with caplog.at_level("WARNING", logger="t2t_vit.cli"):
            assert main(["models"]) == 0
        assert len(kept) == 1 and set(multiprocessing.active_children()) == before
        # torch's SIGCHLD handler, put back: it reports loader workers that die later
        assert callable(handler) and signal.getsignal(signal.SIGCHLD) is handler
        assert "ended 2 worker process(es) the command left running" in caplog.text
    finally:
        for worker in set(multiprocessing.active_children()) - before:
            worker.kill()


# ----------------------------------------------------------------------------------------------- non-finite steps


def test_nonfinite_skip_drops_the_update_counts_it_and_stops_after_the_limit(tmp_path, monkeypatch):
    hook_criterion(monkeypatch, {3: "nan", 4: "nan", 25: "nan"})
    result = train(tiny_train_config(tmp_path, nonfinite="skip"), progress=False)
    rows = metrics_rows(result["run_dir"])
    assert [r["nonfinite"] for r in rows] == ["2", "1"] and result["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in last_checkpoint(result["run_dir"])["model"].values())
    monkeypatch.undo()
    hook_criterion(monkeypatch, {n: "nan" for n in range(5, 100)})
    with pytest.raises(InputError, match=r"3 failures in a row"):
        train(tiny_train_config(tmp_path, name="limit", nonfinite="skip", nonfinite_limit=3), progress=False)


def test_nonfinite_rollback_reloads_the_last_checkpoint_at_a_lower_lr(tmp_path, monkeypatch, caplog):
    plain = train(tiny_train_config(tmp_path, name="plain"), progress=False)
    hook_criterion(monkeypatch, {30: "nan"})  # epoch 2, step 8
    with caplog.at_level("WARNING", logger="t2t_vit.training.rollback"):
        result = train(tiny_train_config(tmp_path, nonfinite="rollback", rollback_lr_factor=0.5), progress=False)
    assert "rolled back to" in caplog.text and "last.pth.tar (epoch 1), lr x 0.5" in caplog.text
    rows, plain_rows = metrics_rows(result["run_dir"]), metrics_rows(plain["run_dir"])
    assert rows[0] == plain_rows[0]  # epoch 1 untouched
    assert (rows[1]["nonfinite"], rows[1]["rollbacks"]) == ("1", "1")
    assert float(rows[1]["lr"]) == pytest.approx(0.5 * float(plain_rows[1]["lr"]), rel=1e-12)


# ----------------------------------------------------------------------------------------------- one run per directory


def test_a_busy_run_directory_is_refused_and_a_stale_lock_taken_over(tmp_path, caplog):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / ".lock").write_text(
            json.dumps(dict(pid=holder.pid, host=socket.gethostname(), since="2026-11-25 10:00:00"))
        )
        with pytest.raises(InputError, match=rf"in use by pid {holder.pid} on {socket.gethostname()} .*--name NAME"):
            train(tiny_train_config(tmp_path, epochs=1, warmup_epochs=0), progress=False)
        assert (tmp_path / "run" / ".lock").exists() and not (tmp_path / "run" / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    with caplog.at_level("WARNING"):
        train(tiny_train_config(tmp_path, epochs=1, warmup_epochs=0), progress=False)  # the holder is gone
    assert f"taking over the stale lock {tmp_path / 'run' / '.lock'} of pid {holder.pid}" in caplog.text
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_torchrun_restart_resumes_without_being_asked(tmp_path, monkeypatch):
    train(tiny_train_config(tmp_path, stop_after_epochs=1), progress=False)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    result = train(tiny_train_config(tmp_path), progress=False)
    assert result["epoch"] == 2 and len(metrics_rows(result["run_dir"])) == 2


# ----------------------------------------------------------------------------------------------- checkpoints in trouble


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    import t2t_vit.checkpoint as ckpt

    train(tiny_train_config(tmp_path, epochs=2, stop_after_epochs=1), progress=False)
    last = tmp_path / "run" / "last.pth.tar"
    before = last.read_bytes()

    def full_disk(obj, f):
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(InputError, match=r"could not write checkpoint '.*last.pth.tar': disk full .* in '.*run'"):
        train(tiny_train_config(tmp_path, epochs=2), resume="auto", progress=False)
    assert last.read_bytes() == before and not list((tmp_path / "run").glob("*.tmp"))
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_truncated_last_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    train(tiny_train_config(tmp_path, epochs=3, stop_after_epochs=2), progress=False)
    last = tmp_path / "run" / "last.pth.tar"
    last.write_bytes(last.read_bytes()[: len(last.read_bytes()) // 2])
    with caplog.at_level("WARNING"):
        result = train(tiny_train_config(tmp_path, epochs=3, stop_after_epochs=1), resume="auto", progress=False)
    assert "last.pth.tar' could not be read" in caplog.text and "resuming from" in caplog.text
    assert "previous.pth.tar" in caplog.text and result["epoch"] == 2  # epoch 2 again, from epoch 1's checkpoint


# ----------------------------------------------------------------------------------------------- images as they are


def test_16_bit_images_are_scaled_not_clipped_and_counted(tmp_path):
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(4):
                ramp = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
                Image.fromarray(ramp if i % 2 else ramp[::-1].copy()).save(tmp_path / split / c / f"{i}.png")
    sample = create_dataset(str(tmp_path), "train")[1]
    img, scaled = np.asarray(sample[0]), sample[2]
    assert scaled == 1 and img.dtype == np.uint8 and img.shape == (16, 16, 3)
    expected = np.round(np.linspace(0, 65535, 256) * 255 / 65535).reshape(16, 16)
    assert np.array_equal(img[..., 0], expected) and (img[..., 0] < 255).mean() > 0.99
    result = train(
        tiny_train_config(tmp_path, data=str(tmp_path), batch_size=4, epochs=1, warmup_epochs=0, name="deep"),
        progress=False,
    )
    assert metrics_rows(result["run_dir"])[0]["scaled"] == "8"  # two batches of 4 a rank, every image 16-bit


def test_loader_workers_default_to_the_cores_of_this_process_shared_on_its_node(monkeypatch):
    from t2t_vit.training.setup import loader_workers

    assert resolve_config("t2t_vit_14")["workers"] == "auto" and loader_workers(3) == 3
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert loader_workers("auto") == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores + 1))
    assert loader_workers("auto") == 0  # more processes than cores: each loads its own batches
