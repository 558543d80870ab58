"""The training state: what a checkpoint saves and a resume loads back, through one `state_dict` pair.

A checkpoint holds model, model_ema, optimizer, scheduler, scaler, epoch (epochs done), step_in_epoch (batches done
in the next one), updates, best, rng (one state per rank), and, for readers such as `load_model`, config and meta.
"""
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from .checkpoint import read_checkpoint, save_checkpoint
from .engine import unwrap
from .errors import InputError
from .train_runtime import all_rng_states, set_rng_state

_logger = logging.getLogger(__name__)

LAST, BEST = "last.pth.tar", "best.pth.tar"

# best_metric -> (which evaluation, which number, +1 if higher is better else -1)
BEST_METRICS = {"top1": ("val", "top1", 1), "ema_top1": ("ema", "top1", 1),
                "loss": ("val", "loss", -1), "ema_loss": ("ema", "loss", -1)}  # fmt: skip


@dataclass
class TrainState:
    """Model, EMA, optimizer, schedule, scaler and the run's position, saved and resumed as one."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm scheduler
    ema: Optional[nn.Module] = None  # timm ModelEmaV3
    scaler: Optional[torch.amp.GradScaler] = None
    epoch: int = 0  # epochs done
    step_in_epoch: int = 0  # batches done in epoch `epoch` + 1 (0 between epochs)
    updates: int = 0  # optimizer updates done
    best: Optional[Dict[str, Any]] = None  # {metric, value, epoch}
    rank: int = 0
    world: int = 1
    info: Dict[str, Any] = field(default_factory=dict)  # config and meta: written for readers, not read back

    def state_dict(self) -> Dict[str, Any]:
        """Everything, every rank's RNG included (a collective when world > 1: every rank must call it)."""
        return dict(
            model=unwrap(self.model).state_dict(),
            model_ema=self.ema.module.state_dict() if self.ema is not None else None,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            epoch=self.epoch, step_in_epoch=self.step_in_epoch, updates=self.updates, best=self.best,
            rng=all_rng_states(self.world), **self.info,
        )  # fmt: skip

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """The inverse of `state_dict`; this rank takes its own RNG state (rank 0's if the run had fewer ranks)."""
        unwrap(self.model).load_state_dict(state["model"])
        if self.ema is not None and state.get("model_ema") is not None:
            self.ema.module.load_state_dict(state["model_ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch, self.updates = state["epoch"], state["step_in_epoch"], state["updates"]
        self.best = state["best"]
        rngs = state["rng"]
        set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])

    def save(self, run_dir: Path, is_best: bool = False, keep_every: int = 0) -> None:
        """Write `run_dir`/last.pth.tar, copied to best.pth.tar and, at the end of every `keep_every`-th epoch, to
        epoch_N.pth.tar; all atomically. Every rank calls it; rank 0 writes."""
        state = self.state_dict()
        if self.rank != 0:
            return
        last = Path(run_dir) / LAST
        save_checkpoint(state, last)
        if is_best:
            _copy_atomic(last, last.with_name(BEST))
        if keep_every and self.epoch % keep_every == 0 and self.step_in_epoch == 0:
            _copy_atomic(last, last.with_name(f"epoch_{self.epoch}.pth.tar"))

    def load(self, path: Path, data: str) -> None:
        """Continue from our training checkpoint `path`; InputError if it is not one or its head does not fit `data`."""
        state = read_checkpoint(path)
        if not isinstance(state, dict) or "optimizer" not in state:
            raise InputError(f"{str(path)!r} is not a training checkpoint of ours (no optimizer state)")
        head, own = state["model"].get("head.weight"), unwrap(self.model).state_dict().get("head.weight")
        if head is not None and own is not None and head.shape[0] != own.shape[0]:
            raise InputError(
                f"{str(path)!r} has a {head.shape[0]}-class head but {data} has {own.shape[0]} "
                "classes: resume on the same data, or start a fine-tune with --init-checkpoint"
            )
        self.load_state_dict(state)
        _logger.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step_in_epoch)

    def update_best(self, metric: str, evals: Dict[str, Dict[str, float]]) -> bool:
        """Record epoch `self.epoch`'s `metric` (a BEST_METRICS name, read from evals["val"] or evals["ema"]) if it
        beats the best so far; True if it did."""
        which, key, sign = BEST_METRICS[metric]
        value = evals[which][key]
        if math.isnan(value) or (self.best is not None and sign * (value - self.best["value"]) <= 0):
            return False
        self.best = dict(metric=metric, value=value, epoch=self.epoch)
        return True


def checkpoint_to_resume(run_dir: Path, resume: Optional[str]) -> Optional[Path]:
    """The checkpoint `resume` names ("auto": `run_dir`'s last, if any; or a path); None to start afresh, which
    a run directory already holding a run refuses."""
    last = Path(run_dir) / LAST
    if resume is None:
        if last.is_file():
            raise InputError(
                f"run directory {str(run_dir)!r} already holds a run: pass --resume auto to continue it, or "
                "--name NAME to start another"
            )
        return None
    if resume == "auto":
        if last.is_file():
            return last
        _logger.info("--resume auto: no checkpoint in %s yet, starting fresh", run_dir)
        return None
    path = Path(resume)
    if not path.is_file():
        raise InputError(f"--resume {resume!r}: no such checkpoint file (or use --resume auto)")
    return path


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
