"""The loops: one training epoch and one evaluation pass. No argument parsing, no file I/O."""
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

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
    should_stop: Callable[[], bool] = field(default=lambda: False)  # e.g. SIGTERM received
    epochs: int = 0  # of the whole run, for "epoch 3/25" (0: not shown)
    log_interval: int = 0  # without a progress bar, log a line every this many updates (0: never)


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
    updates_done: int = 0,
    progress: bool = True,
    start_step: int = 0,
) -> Dict[str, Any]:
    """Train epoch `epoch` (counted from 1) over `loader`, from its sampler's start (batch `start_step` of the epoch
    when resumed): loss, img/s, skipped images, updates, batches this call, why it ended.

    `updates_done` counts optimizer updates before this call (for a per-update schedule). The epoch ends early
    with `stopped="signal"` when `ctx.should_stop()` turns true, or `stopped="nonfinite"` on a NaN/inf loss
    (before that update is applied). With `progress`, a bar shows on a terminal (tqdm leaves it out of logs);
    without a bar, every `ctx.log_interval` updates log a line: the epoch's mean loss so far (this process), lr and
    img/s (all processes).
    """
    model.train()
    device = ctx.device
    loss_sum = torch.zeros(2, device=device)  # (sum of losses x samples, samples)
    skipped, seen, stopped = 0, 0, None
    micro = 0
    name = f"epoch {epoch}/{ctx.epochs}" if ctx.epochs else f"epoch {epoch}"
    bar = tqdm(loader, desc=name, disable=None if progress else True, leave=False, dynamic_ncols=True)
    steps = start_step + len(loader)
    start = time.perf_counter()
    ctx.optimizer.zero_grad(set_to_none=True)
    batches = 0
    for images, targets, n_skipped in bar:
        batches += 1
        skipped += n_skipped
        if ctx.mixup is not None and len(images) % 2:
            images, targets = images[:-1], targets[:-1]  # a skipped image left an odd batch: mixup pairs them
        if len(images) == 0:
            continue
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if ctx.mixup is not None:
            images, targets = ctx.mixup(images, targets)
        micro += 1
        last_micro = micro % ctx.accum_steps == 0
        sync = model.no_sync() if hasattr(model, "no_sync") and not last_micro else contextlib.nullcontext()
        with sync:
            with _autocast(device, ctx.amp_dtype):
                loss = ctx.criterion(model(images), targets)
            # one collective per step: any rank with a non-finite loss, any rank asked to stop
            flags = torch.tensor([0.0 if torch.isfinite(loss) else 1.0, float(ctx.should_stop())], device=device)
            nonfinite, stop = _all_reduce(flags, dist.ReduceOp.MAX).tolist()
            if nonfinite:
                stopped = "nonfinite"
                break
            scaled = loss / ctx.accum_steps
            (ctx.scaler.scale(scaled) if ctx.scaler is not None else scaled).backward()
        loss_sum += torch.stack([loss.detach() * len(images), torch.tensor(float(len(images)), device=device)])
        seen += len(images)
        if last_micro:
            _update(model, ctx)
            updates_done += 1
            if ctx.scheduler is not None and ctx.sched_on_updates:
                ctx.scheduler.step_update(num_updates=updates_done)
            if bar.disable and ctx.log_interval and updates_done % ctx.log_interval == 0:
                _logger.info(
                    "%s step %d/%d  loss %.4f  lr %.2e  %.0f img/s", name, start_step + batches, steps,
                    (loss_sum[0] / loss_sum[1]).item(), ctx.optimizer.param_groups[0]["lr"],
                    seen * _world() / (time.perf_counter() - start),
                )  # fmt: skip
        if not bar.disable:
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{loss.item():.4f}", lr=f"{ctx.optimizer.param_groups[0]['lr']:.2e}", img_s=f"{seen / elapsed:.0f}"
            )
        if stop:
            stopped = "signal"
            break
    bar.close()
    elapsed = time.perf_counter() - start
    totals = _all_reduce(torch.cat([loss_sum, torch.tensor([float(skipped)], device=device)]))
    return dict(
        loss=(totals[0] / totals[1].clamp(min=1)).item(),
        img_per_s=totals[1].item() / max(elapsed, 1e-9),
        skipped=int(totals[2].item()),
        updates=updates_done,
        batches=batches,
        stopped=stopped,
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
    for images, targets, n_skipped in bar:
        sums[4] += n_skipped
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
