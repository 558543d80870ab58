"""The loops: one training epoch and one evaluation pass. No argument parsing, no file I/O."""
import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .train_runtime import rng_state, set_rng_state

_logger = logging.getLogger(__name__)


@dataclass
class StepContext:
    """What a training step needs besides the model and the batch."""

    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    device: torch.device
    scheduler: Any = None  # timm scheduler; stepped per update when sched_on_updates
    sched_on_updates: bool = False
    mixup: Optional[Callable] = None
    ema: Optional[nn.Module] = None
    scaler: Optional[torch.amp.GradScaler] = None
    amp_dtype: Optional[torch.dtype] = None  # None: fp32
    accum_steps: int = 1
    clip_grad: Optional[float] = None
    nonfinite: str = "stop"  # on a NaN/inf loss: stop, skip (drop the update) or rollback (the caller reloads)
    nonfinite_limit: int = 10  # skip: stop after this many non-finite steps in a row
    should_stop: Callable[[], bool] = field(default=lambda: False)  # e.g. SIGTERM received
    epochs: int = 0  # of the whole run, for "epoch 3/25" (0: not shown)
    log_interval: int = 0  # without a progress bar, log a line every this many updates (0: never)


@dataclass
class EpochTotals:
    """One rank's running totals of a training epoch. A mid-epoch stop saves them with the checkpoint, so the
    resumed epoch continues them and its metrics row is the uninterrupted run's."""

    batches: int = 0  # batches consumed this epoch by this rank (the data position)
    loss: Optional[torch.Tensor] = None  # (sum of loss x samples, samples), float32 on the device
    skipped: int = 0  # unreadable images (substituted in training)
    scaled: int = 0  # high-depth images scaled to 8 bits
    nonfinite: int = 0  # non-finite steps (skipped, or rolled back)
    rollbacks: int = 0
    nonfinite_in_a_row: int = 0
    seconds: float = 0.0  # training time in this epoch, over all its sessions

    def state_dict(self) -> Dict[str, Any]:
        return dict(vars(self), loss=None if self.loss is None else self.loss.cpu())

    @classmethod
    def from_state_dict(cls, state: Optional[Dict[str, Any]], device: torch.device) -> "EpochTotals":
        totals = cls(**(state or {}))
        totals.loss = None if totals.loss is None else totals.loss.to(device)
        return totals


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def _all_reduce(values: torch.Tensor, op: Any = None) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=op or dist.ReduceOp.SUM)
    return values


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def train_one_epoch(
    model: nn.Module,
    loader: Any,
    ctx: StepContext,
    epoch: int,
    totals: EpochTotals,
    updates_done: int = 0,
    progress: bool = True,
) -> Dict[str, Any]:
    """Train epoch `epoch` (counted from 1) over `loader`, from its sampler's position (`totals.batches` batches
    in, when resumed), adding to `totals`. Returns the updates done in the run so far and why it ended: None (the
    epoch is done), "signal" (`ctx.should_stop()` turned true; at an update boundary), "nonfinite" (a NaN/inf loss
    with ctx.nonfinite "stop", or ctx.nonfinite_limit in a row with "skip"), or "rollback" (a NaN/inf loss with
    "rollback"; the caller reloads the last checkpoint and calls again to go on past the failing batch).

    With "stop", the state is rewound to before the failing update (RNG and totals too), so a checkpoint saved
    then resumes as if the update had never been tried. With a progress bar on a terminal (tqdm leaves it out of
    logs), else every `ctx.log_interval` updates, a line shows the epoch's mean loss so far, lr and img/s.
    """
    model.train()
    device = ctx.device
    if totals.loss is None:
        totals.loss = torch.zeros(2, device=device)
    name = f"epoch {epoch}/{ctx.epochs}" if ctx.epochs else f"epoch {epoch}"
    bar = tqdm(loader, desc=name, disable=None if progress else True, leave=False, dynamic_ncols=True)
    steps = totals.batches + len(loader)
    start, seconds_before, seen = time.perf_counter(), totals.seconds, 0
    ctx.optimizer.zero_grad(set_to_none=True)
    micro, poisoned, stopped, rewind = 0, False, None, None
    for images, targets, counts in bar:
        if micro % ctx.accum_steps == 0 and ctx.nonfinite == "stop":  # where a failing update rewinds to
            rewind = (rng_state(device), dataclasses.replace(totals, loss=totals.loss.clone()))
        micro += 1
        last_micro = micro % ctx.accum_steps == 0
        totals.batches += 1
        totals.skipped, totals.scaled = totals.skipped + int(counts[0]), totals.scaled + int(counts[1])
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if ctx.mixup is not None:
            images, targets = ctx.mixup(images, targets)
        sync = model.no_sync() if hasattr(model, "no_sync") and not last_micro else contextlib.nullcontext()
        with sync:
            with _autocast(device, ctx.amp_dtype):
                loss = ctx.criterion(model(images), targets)
            # one collective per step: any rank with a non-finite loss, any rank asked to stop
            flags = torch.tensor([0.0 if torch.isfinite(loss) else 1.0, float(ctx.should_stop())], device=device)
            nonfinite, stop = _all_reduce(flags, dist.ReduceOp.MAX).tolist()
            if not nonfinite:
                scaled = loss / ctx.accum_steps
                (ctx.scaler.scale(scaled) if ctx.scaler is not None else scaled).backward()
        if nonfinite:
            totals.nonfinite += 1
            totals.nonfinite_in_a_row += 1
            if ctx.nonfinite == "stop":
                set_rng_state(rewind[0], device)
                totals.__dict__.update(vars(rewind[1]))
                ctx.optimizer.zero_grad(set_to_none=True)
                stopped = "nonfinite"
                break
            if ctx.nonfinite == "rollback":
                ctx.optimizer.zero_grad(set_to_none=True)
                updates_done += 1  # the failing update is dropped; the schedule follows the data past it
                stopped = "rollback"
                break
            poisoned = True  # skip: this update is dropped at its boundary
            if totals.nonfinite_in_a_row >= ctx.nonfinite_limit:
                stopped = "nonfinite"
                break
        else:
            n = torch.tensor(float(len(images)), device=device)
            totals.loss += torch.stack([loss.detach().float() * n, n])
            seen += len(images)
        if last_micro:
            if poisoned:
                ctx.optimizer.zero_grad(set_to_none=True)
                poisoned = False
            else:
                _update(model, ctx)
                totals.nonfinite_in_a_row = 0
            updates_done += 1  # the schedule follows the data, also over a dropped update
            if ctx.scheduler is not None and ctx.sched_on_updates:
                ctx.scheduler.step_update(num_updates=updates_done)
            if bar.disable and ctx.log_interval and updates_done % ctx.log_interval == 0:
                _logger.info(
                    "%s step %d/%d  loss %.4f  lr %.2e  %.0f img/s", name, totals.batches, steps,
                    (totals.loss[0] / totals.loss[1].clamp(min=1)).item(), ctx.optimizer.param_groups[0]["lr"],
                    seen * _world() / (time.perf_counter() - start),
                )  # fmt: skip
        if not bar.disable:
            elapsed = time.perf_counter() - start
            lr = ctx.optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", img_s=f"{seen / elapsed:.0f}")
        if stop and last_micro:
            stopped = "signal"
            break
    bar.close()
    totals.seconds = seconds_before + time.perf_counter() - start
    return dict(updates=updates_done, stopped=stopped)


def epoch_result(totals: EpochTotals, device: torch.device) -> Dict[str, Any]:
    """An epoch's training numbers over all ranks: mean loss, img/s, unreadable and high-depth images, non-finite
    steps and rollbacks (a collective when distributed)."""
    loss = totals.loss if totals.loss is not None else torch.zeros(2, device=device)
    counts = [float(totals.skipped), float(totals.scaled), float(totals.nonfinite)]
    sums = _all_reduce(torch.cat([loss, torch.tensor(counts, device=device)]))
    return dict(
        loss=(sums[0] / sums[1].clamp(min=1)).item(),
        img_per_s=sums[1].item() / max(totals.seconds, 1e-9),
        skipped=int(sums[2].item()),
        scaled=int(sums[3].item()),
        nonfinite=int(sums[4].item()) // _world(),  # every rank counts each non-finite step
        rollbacks=totals.rollbacks,
        seconds=totals.seconds,
    )


def _update(model: nn.Module, ctx: StepContext) -> None:
    if ctx.scaler is not None:
        ctx.scaler.unscale_(ctx.optimizer)
    if ctx.clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), ctx.clip_grad)
    if ctx.scaler is not None:
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    else:
        ctx.optimizer.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.ema is not None:
        ctx.ema.update(unwrap(model))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    progress: bool = False,
    desc: str = "eval",
) -> Dict[str, float]:
    """Top-1, top-5 (%), cross-entropy loss and img/s over `loader`, summed over all ranks."""
    model.eval()
    sums = torch.zeros(5, device=device)  # loss x n, top-1 hits, top-5 hits, n, skipped
    criterion = nn.CrossEntropyLoss(reduction="sum")
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=None if progress else True, leave=False, dynamic_ncols=True)
    for images, targets, counts in bar:
        sums[4] += counts[0].item()
        if len(images) == 0:
            continue
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == targets[:, None]
        sums[0] += criterion(logits, targets)
        sums[1] += hits[:, 0].sum()
        sums[2] += hits.any(dim=1).sum()
        sums[3] += len(targets)
    elapsed = time.perf_counter() - start
    sums = _all_reduce(sums)
    n = sums[3].item()
    if n == 0:
        return dict(loss=math.nan, top1=math.nan, top5=math.nan, img_per_s=0.0, n=0, skipped=int(sums[4].item()))
    return dict(
        loss=sums[0].item() / n,
        top1=100.0 * sums[1].item() / n,
        top5=100.0 * sums[2].item() / n,
        img_per_s=n / max(elapsed, 1e-9),
        n=int(n),
        skipped=int(sums[4].item()),
    )
