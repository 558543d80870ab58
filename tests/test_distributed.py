"""What the ranks of a multi-process run share, checked with 2 gloo processes (a defect shows as a mismatch, an
error or a hang, which the timeouts turn into a failure)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp
from PIL import Image

from t2t_vit.checkpoint import read_checkpoint
from t2t_vit.training.process import rng_state, set_rng_state

from .helpers import DIGIT_CLASSES, ROOT, free_port, image_folder, metrics_rows, subprocess_env, tiny_train_config


def _train_on_two_ranks(cfg: dict, out: Path) -> list:
    """`train(cfg)` under torchrun with 2 gloo processes (tests/ddp_probe.py); each rank's last weights and EMA."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tests.ddp_probe"]
    done = subprocess.run(
        [*cmd, json.dumps(cfg), str(out)], env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(out / f"rank{rank}.pt") for rank in (0, 1)]


def test_ranks_share_one_ema_and_no_batch_is_ever_empty(tmp_path):
    # 8 training images, one unreadable: with a batch of 1 a rank, one rank meets it alone in its batch
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(4):
                pixels = (torch.rand(12, 12, 3, generator=torch.Generator().manual_seed(i)) * 255).byte().numpy()
                Image.fromarray(pixels).save(tmp_path / "data" / split / c / f"{i}.png")
    (tmp_path / "data" / "train" / "a" / "3.png").write_bytes(b"not a png")
    cfg = tiny_train_config(
        tmp_path,
        data=str(tmp_path / "data"),
        batch_size=1,
        mixup=0.0,
        cutmix=0.0,
        drop_path=0.1,
        model_ema=True,
        model_ema_decay=0.5,
        epochs=2,
        warmup_epochs=0,
    )
    r0, r1 = _train_on_two_ranks(cfg, tmp_path)
    for key in ("model", "ema"):  # identical, bitwise: the EMA starts from the weights DDP gave every rank
        assert all(torch.equal(r0[key][k], r1[key][k]) for k in r0[key]), key
    assert [r["skipped"] for r in metrics_rows(tmp_path / "run")] == ["1", "1"]  # the unreadable image, each epoch


def _backend_of_a_cpu_run(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from t2t_vit.training.process import setup_distributed

    torch.cuda.is_available = lambda: True  # a machine with GPUs, where the user asked for the CPU
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    _, _, device = setup_distributed("cpu")
    Path(out, f"{rank}.txt").write_text(f"{dist.get_backend()} {device}")
    dist.destroy_process_group()


def test_device_cpu_uses_gloo_on_a_machine_with_gpus(tmp_path):
    ctx, port = mp.get_context("spawn"), free_port()
    procs = [ctx.Process(target=_backend_of_a_cpu_run, args=(r, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        if p.is_alive():
            p.kill()
    assert [(tmp_path / f"{r}.txt").read_text() for r in range(2) if (tmp_path / f"{r}.txt").exists()] == [
        "gloo cpu",
        "gloo cpu",
    ]


def test_resuming_on_fewer_gpus_takes_this_devices_cuda_rng_only(monkeypatch):
    """A checkpoint from 8 GPUs (earlier versions saved every visible GPU's CUDA RNG) resumes on a machine with one;
    a new checkpoint holds the CUDA RNG of its rank's device only."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: torch.tensor([7, int(device.index)]))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: calls.append((state, device)))

    def set_all(states):
        if len(states) > torch.cuda.device_count():
            raise IndexError("list index out of range")

    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.tensor([i]) for i in range(8)])
    old = dict(rng_state(), cuda=[torch.tensor([i]) for i in range(8)])
    set_rng_state(old, torch.device("cuda:0"))
    assert len(calls) == 1 and torch.equal(calls[0][0], torch.tensor([0]))
    new = rng_state(torch.device("cuda:0"))
    assert torch.equal(new["cuda"], torch.tensor([7, 0]))
    assert "cuda" not in rng_state(torch.device("cpu"))


def test_ranks_on_a_time_budget_take_the_same_lr_and_end_together(tmp_path):
    # the lr follows the clock: each rank's own clock would give each its own lr, and weights that drift apart
    cfg = tiny_train_config(
        tmp_path, epochs=1000, time_budget=2, schedule_on_time=True, log_interval=1, model_ema=False, warmup_epochs=0
    )
    r0, r1 = _train_on_two_ranks(cfg, tmp_path)
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert 1 < len(rows) < 1001 and rows[-1].split(",")[4]  # ended by the budget, evaluated there


def test_ranks_agree_on_saves_on_the_clock_and_go_on_together(tmp_path):
    # each rank's clock says a save is due at each update; they agree at each read (every update here), all save
    # (a collective) and go on: a rank that went on alone would hang its peers or drift from them
    cfg = tiny_train_config(tmp_path, checkpoint_minutes=1e-9, log_interval=1, model_ema=False)
    r0, r1 = _train_on_two_ranks(cfg, tmp_path)
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])
    last, before = (read_checkpoint(tmp_path / "run" / f"{name}.pth.tar") for name in ("last", "previous"))
    steps = last["updates"] // 2  # of an epoch
    assert (before["epoch"], before["step_in_epoch"], len(before["ranks"])) == (1, steps - 1, 2)  # epoch 2's
    assert [row["epoch"] for row in metrics_rows(tmp_path / "run")] == ["1", "2"]


def test_eval_under_torchrun_scores_each_image_once_and_says_it_once(tmp_path, tiny_checkpoint):
    data = image_folder(tmp_path / "data", classes=DIGIT_CLASSES, per_class=1)
    (data / "val" / "9" / "0.png").unlink()  # 9 images: the ranks' shares are 5 and 4
    argv = ["-m", "t2t_vit", "eval", "--checkpoint", str(tiny_checkpoint), "--data", str(data), "--workers", "0"]
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = [
        subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=240)
        for cmd in ([*run, *argv], [sys.executable, *argv])
    ]
    assert all(d.returncode == 0 for d in done), done[0].stderr[-3000:] + done[1].stderr[-3000:]
    said = [re.findall(r"\((\d+) images\): top-1 (\S+)%  top-5 (\S+)%  loss (\S+)", d.stdout) for d in done]
    assert len(said[0]) == 1 and len(said[1]) == 1, done[0].stdout  # rank 0 prints the totals; rank 1 nothing
    (two, one) = said[0][0], said[1][0]
    assert two[:3] == one[:3] == ("9", one[1], one[2])  # the same images counted once: the same hits
    assert abs(float(two[3]) - float(one[3])) <= 1e-4  # the loss, as printed (4 decimals), summed in another order


def test_a_command_under_torchrun_ends_the_process_group_it_made_and_only_that(tmp_path, tiny_checkpoint, monkeypatch):
    """Left to the interpreter's exit, gloo's threads can abort a finished rank (SIGABRT, 'terminate called without an
    active exception') and NCCL warns of leaked communicators; a group the caller made is the caller's."""
    import torch.distributed as dist

    from t2t_vit.cli import main

    data = image_folder(tmp_path / "data", classes=DIGIT_CLASSES, per_class=1)
    env = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", TORCHELASTIC_RUN_ID="test")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = ["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(data), "--workers", "0", "--device", "cpu"]
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    assert main(argv) == 0 and not dist.is_initialized()
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo")
    try:
        assert main(argv) == 0 and dist.is_initialized()
    finally:
        dist.destroy_process_group()
