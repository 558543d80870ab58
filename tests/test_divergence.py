"""Divergence caught before it is saved: the loss-spike guard, the state a stop saves and a rollback returns to (from
before the divergence, not merely finite), a rollback that runs out, and advice that works when followed."""

import json
import math
import re

import pytest
import torch

from t2t_vit.cli import main
from t2t_vit.training.divergence import SpikeGuard
from t2t_vit.training.run import train

from .helpers import TINY_MODEL, last_checkpoint, metrics_rows, tiny_train_config


def tiny_command(tmp_path, *args: str) -> list:
    """`t2t-vit train` of TINY_MODEL on digits at 16 px, 2 epochs (22 updates each), into tmp_path/run."""
    return [
        *("train", "--config", "digits", "--output", str(tmp_path), "--name", "run", "--no-progress"),
        *("--model-kwargs", json.dumps(TINY_MODEL), "--img-size", "16", "--epochs", "2", "--warmup-epochs", "1"),
        *("--log-interval", "1000", *args),
    ]


def max_weight(state: dict) -> float:
    return max(v.abs().max().item() for v in state["model"].values() if v.is_floating_point())


def spike_criterion(monkeypatch, at_call: int, times: float) -> None:
    """Multiply the training loss by `times` at its `at_call`-th call (finite: a spike, not a NaN)."""
    import t2t_vit.training.run as run_mod

    real = run_mod.build_criterion

    def hooked(cfg, num_classes):
        criterion, mixup = real(cfg, num_classes)
        calls = {"n": 0}

        def loss(logits, target):
            calls["n"] += 1
            return criterion(logits, target) * (times if calls["n"] == at_call else 1.0)

        return loss, mixup

    monkeypatch.setattr(run_mod, "build_criterion", hooked)


def test_the_guard_watches_after_its_window_and_stays_above_the_early_level():
    guard = SpikeGuard(factor=10.0, window=4, device=torch.device("cpu"))
    fired = []
    for value in [2.3, 2.2, 2.1, 2.0, 50.0, 1.9, 30.0, 0.05, 0.05, 0.05, 0.05, 0.9]:
        loss = torch.tensor(value)
        spike = guard.check(loss)
        guard.accept(loss, 1 - spike)
        fired.append(bool(spike))
    # 50 and 30 are over 10x the median; 0.9 is 18x the late median 0.05 but under the early level (2.1)
    assert fired == [False] * 4 + [True, False, True] + [False] * 5
    assert guard.early.item() == pytest.approx(2.1) and "loss 30 over 10x its running median 2" in guard.describe()


def test_the_guard_fires_on_a_spike_and_not_on_a_normal_run(tmp_path, monkeypatch):
    normal = train(tiny_train_config(tmp_path, name="normal"), progress=False)
    assert [r["nonfinite"] for r in metrics_rows(normal["run_dir"])] == ["0", "0"]
    assert last_checkpoint(normal["run_dir"])["spike_guard"]["count"] == 44  # it watched every update of epoch 2
    spike_criterion(monkeypatch, at_call=30, times=100.0)  # epoch 2, step 8: finite, 100x the loss
    spiked = train(tiny_train_config(tmp_path, name="spiked", nonfinite="skip"), progress=False)
    assert [r["nonfinite"] for r in metrics_rows(spiked["run_dir"])] == ["0", "1"]


def test_stop_saves_the_state_from_before_the_divergence(tmp_path, capsys):
    """--lr 1000 blows the weights up a step before the loss is non-finite: the finite state before the failing
    step is no state to continue from. In epoch 1 that is the initial weights; later, the last healthy epoch's."""
    assert main(tiny_command(tmp_path, "--lr", "1000")) == 2
    err = capsys.readouterr().err
    assert "holds the run's initial weights, from before the divergence" in err and err.count("\n") == 1
    state = last_checkpoint(tmp_path / "run")
    assert (state["epoch"], state["step_in_epoch"], state["updates"]) == (0, 0, 0) and max_weight(state) < 3

    assert main(tiny_command(tmp_path, "--name", "later", "--stop-after-epochs", "1")) == 0
    healthy = last_checkpoint(tmp_path / "later")
    assert main(tiny_command(tmp_path, "--name", "later", "--resume", "auto", "--lr", "1000")) == 2
    err = capsys.readouterr().err
    assert re.search(r"loss spike \(loss .*\) after epoch 2 .*that of last\.pth\.tar \(epoch 1\)", err), err
    state = last_checkpoint(tmp_path / "later")
    assert state["epoch"] == 1 and state["held_out_loss"] == healthy["held_out_loss"]
    assert all(torch.equal(state["model"][k], v) for k, v in healthy["model"].items())


def test_rollback_that_runs_out_exits_nonzero_naming_the_lrs_tried(tmp_path, capsys):
    args = ("--lr", "1000", "--nonfinite", "rollback", "--rollback-limit", "2")
    assert main(tiny_command(tmp_path, *args)) == 2
    err = capsys.readouterr().err
    assert "2 rollbacks did not get past it (it diverged at lr 1000, 500, 250)" in err, err
    assert max_weight(last_checkpoint(tmp_path / "run")) < 3  # the initial weights saved, not the blown-up ones


def test_following_the_printed_advice_gives_a_run_that_learns(tmp_path, capsys):
    """The issue's case: --lr 1000 stops; resuming with the flags the message names learns from the saved state."""
    command = tiny_command(tmp_path, "--lr", "1000", "--epochs", "4")
    assert main(command) == 2
    err = capsys.readouterr().err
    advice = re.search(r"Continue from it with (--resume auto) and a lower --lr: (--lr \S+) \(", err)
    assert advice, err
    assert main(command + [*advice.group(1).split(), *advice.group(2).split()]) == 0, capsys.readouterr().err
    last = metrics_rows(tmp_path / "run")[-1]
    assert float(last["val_top1"]) > 20 and float(last["val_loss"]) < math.log(10)  # chance: 10%, ln 10
