"""The training state: what a checkpoint saves and a resume loads back, through one `state_dict` pair.

A checkpoint holds model, model_ema, optimizer, scaler, epoch (epochs done), step_in_epoch (batches done by each
rank in the next one), samples_in_epoch (the same over all ranks), updates, best, held_out_loss (of these weights,
when evaluated at this position), best_held_out_loss (the run's lowest), spike_guard (its recent losses), ranks
(each rank's RNG states and running epoch totals), and, for readers such as `load_model` and for resuming, config
and meta. The schedule is not saved: it is a function of the config and the step, rebuilt on resume (so a resume
can change it).
"""

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..config_keys import RESUME_CHANGEABLE, unused_keys
from ..errors import InputError
from .divergence import SpikeGuard
from .engine import EpochTotals, unwrap
from .process import gather, rng_state, set_rng_state
from .run_dir import RunDir

_logger = logging.getLogger(__name__)

# best_metric -> (which evaluation, which number, +1 if higher is better else -1)
BEST_METRICS = {
    "top1": ("val", "top1", 1),
    "ema_top1": ("ema", "top1", 1),
    "loss": ("val", "loss", -1),
    "ema_loss": ("ema", "loss", -1),
    "map": ("val", "map", 1),
    "ema_map": ("ema", "map", 1),
    "miou": ("val", "miou", 1),
    "ema_miou": ("ema", "miou", 1),
}


@dataclass
class TrainState:
    """Model, EMA, optimizer, scaler and the run's position, saved and resumed as one."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: Optional[nn.Module] = None  # timm ModelEmaV3
    scaler: Optional[torch.amp.GradScaler] = None
    device: torch.device = torch.device("cpu")
    batch_size: int = 1  # per rank, to turn the position in batches into samples
    epoch: int = 0  # epochs done
    totals: EpochTotals = field(default_factory=EpochTotals)  # this rank's part of epoch `epoch` + 1 so far
    updates: int = 0  # optimizer updates done
    train_seconds: float = 0.0  # training time of the finished epochs, over all sessions (for `time_budget`)
    best: Optional[Dict[str, Any]] = None  # {metric, value, epoch}
    held_out: Optional[float] = None  # the held-out loss of the weights at this position; None: not measured here
    best_held_out: Optional[float] = None  # the run's lowest held-out loss so far
    guard: Optional[SpikeGuard] = None
    rank: int = 0
    world: int = 1
    info: Dict[str, Any] = field(default_factory=dict)  # config and meta, for readers and for resuming
    saved_at: float = field(default_factory=time.monotonic)  # when this process last saved (or started)

    def state_dict(self) -> Dict[str, Any]:
        """Everything, every rank's RNG and totals included (a collective when world > 1: every rank calls it)."""
        ranks = gather(dict(rng=rng_state(self.device), totals=self.totals.state_dict()), self.world)
        return dict(
            model=unwrap(self.model).state_dict(),
            model_ema=self.ema.module.state_dict() if self.ema is not None else None,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            epoch=self.epoch,
            step_in_epoch=self.totals.batches,
            samples_in_epoch=self.totals.batches * self.batch_size * self.world,
            updates=self.updates,
            train_seconds=self.train_seconds,
            best=self.best,
            held_out_loss=self.held_out,
            best_held_out_loss=self.best_held_out,
            spike_guard=self.guard.state_dict() if self.guard is not None else None,
            ranks=ranks,
            **self.info,
        )

    def load_weights(self, state: Dict[str, Any]) -> None:
        """Model, EMA, optimizer and scaler from a checkpoint; the position, RNGs and totals stay (a rollback)."""
        try:
            unwrap(self.model).load_state_dict(state["model"])
            if self.ema is not None and state.get("model_ema") is not None:
                self.ema.module.load_state_dict(state["model_ema"])
            fused = [group.get("fused") for group in self.optimizer.param_groups]
            self.optimizer.load_state_dict(state["optimizer"])
            for group, keep in zip(self.optimizer.param_groups, fused):  # as built here, whatever wrote the file
                group["fused"] = keep
        except (RuntimeError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[-1].strip()
            raise InputError(
                f"the checkpoint does not fit this model and optimizer ({first}): resume with the config it was "
                "trained with, or start a new run with --init-checkpoint"
            ) from None
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """The inverse of `state_dict`. This rank takes its own RNG state and totals; when the number of ranks or
        the batch size changed, the position carries over in samples and the totals go to rank 0."""
        self.load_weights(state)
        self.epoch, self.updates, self.best = state["epoch"], state["updates"], state["best"]
        self.train_seconds = state.get("train_seconds", 0.0)  # absent: written before time budgets
        self.held_out, self.best_held_out = state.get("held_out_loss"), state.get("best_held_out_loss")
        if self.guard is not None:
            self.guard.load_state_dict(state.get("spike_guard"))
        ranks = state.get("ranks") or [dict(rng=r) for r in state["rng"]]  # "rng": written by earlier versions
        mine = ranks[self.rank] if self.rank < len(ranks) else ranks[0]
        set_rng_state(mine["rng"], self.device)
        samples = state.get("samples_in_epoch", state["step_in_epoch"] * self.batch_size * len(ranks))
        if len(ranks) == self.world and samples == state["step_in_epoch"] * self.batch_size * self.world:
            self.totals = EpochTotals.from_state_dict(mine.get("totals"), self.device)
            self.totals.batches = state["step_in_epoch"]
            return
        self.totals = EpochTotals(batches=samples // (self.batch_size * self.world))
        if self.rank == 0:  # the epoch's totals so far, summed, so the epoch's row still counts them
            for r in ranks:
                t = EpochTotals.from_state_dict(r.get("totals"), self.device)
                self.totals.loss = t.loss if self.totals.loss is None else self.totals.loss + t.loss
                for key in ("skipped", "scaled", "nonfinite", "rollbacks"):
                    setattr(self.totals, key, getattr(self.totals, key) + getattr(t, key))
                self.totals.seconds = max(self.totals.seconds, t.seconds)
        _logger.info(
            "the position in epoch %d carries over as %d samples (batch %d x %d ranks now)",
            self.epoch + 1,
            samples,
            self.batch_size,
            self.world,
        )

    def save(self, run_dir: RunDir, is_best: bool = False, keep_every: int = 0) -> None:
        """Save to `run_dir` as its last checkpoint, also its best if `is_best` and, at the end of every
        `keep_every`-th epoch, that epoch's. Every rank calls it; rank 0 writes."""
        state = self.state_dict()
        self.saved_at = time.monotonic()
        if self.rank != 0:
            return
        kept = keep_every and self.epoch % keep_every == 0 and self.totals.batches == 0
        run_dir.save(state, is_best, self.epoch if kept else None)

    def save_due(self, minutes: Optional[float]) -> bool:
        """Whether `minutes` of wall time (None: never) have passed since this process last saved."""
        return minutes is not None and time.monotonic() - self.saved_at >= 60 * minutes

    def update_best(self, metric: str, evals: Dict[str, Dict[str, float]]) -> bool:
        """Record epoch `self.epoch`'s `metric` (a BEST_METRICS name, read from evals["val"] or evals["ema"]) if it
        beats the best so far; True if it did."""
        which, key, sign = BEST_METRICS[metric]
        value = evals[which][key]
        if math.isnan(value) or (self.best is not None and sign * (value - self.best["value"]) <= 0):
            return False
        self.best = dict(metric=metric, value=value, epoch=self.epoch)
        return True

    def record_held_out(self, loss: Optional[float]) -> None:
        """The held-out loss of the weights now (None: not evaluated), and the run's lowest."""
        self.held_out = loss
        if loss is not None and math.isfinite(loss):
            self.best_held_out = loss if self.best_held_out is None else min(self.best_held_out, loss)


def resume_changes(saved: Optional[Dict[str, Any]], cfg: Dict[str, Any], path: Path) -> Dict[str, Tuple[Any, Any]]:
    """The config keys a resume changes, {key: (checkpoint's value, new value)}; InputError if one of them may not
    change (the model, the data, the image size, the recipe's other keys: RESUME_CHANGEABLE lists those that may).
    Keys the run's task has no use for may change too: they change nothing."""
    if not saved:
        return {}
    unused = unused_keys(cfg.get("task", "classification"))
    changed = {k: (saved[k], v) for k, v in cfg.items() if k in saved and saved[k] != v}
    fixed = {k: c for k, c in changed.items() if k not in RESUME_CHANGEABLE and k not in unused}
    if fixed:
        what = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in fixed.items())
        raise InputError(
            f"cannot resume {str(path)!r} with {what}: a resume may change only {', '.join(sorted(RESUME_CHANGEABLE))}."
            " Start a new run (--name NAME) from these weights with --init-checkpoint instead"
        )
    return changed
