"""The training loop: one epoch, its device-side update and its totals. No argument parsing, no file I/O."""

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .budget import Budget
from .divergence import SpikeGuard
from .process import all_reduce, rng_state, set_rng_state, world_size
from .tasks import classification_loss

_logger = logging.getLogger(__name__)


@dataclass
class StepContext:
    """What a training step needs besides the model and the batch."""

    optimizer: torch.optim.Optimizer
    criterion: Callable  # of the model's output and the targets
    device: torch.device
    compute_loss: Callable = classification_loss  # the task's step: (model, images, targets, ctx) -> loss
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
    spike: Optional[SpikeGuard] = None  # a loss spike counts as a non-finite step; None: no guard
    should_stop: Callable[[], bool] = field(default=lambda: False)  # a stop asked from outside: SIGTERM, SIGINT
    save_due: Callable[[], bool] = field(default=lambda: False)  # a save within the epoch is due (checkpoint_minutes)
    budget: Budget = field(default_factory=Budget)  # the training clock and the time budget
    epochs: int = 0  # of the whole run, for "epoch 3/25" (0: not shown)
    log_interval: int = 0  # without a progress bar, log a line at each read (0: never)
    sync_every: int = 50  # updates between the host's reads of the device's flags (the same on every rank)
    compiling: bool = False  # the model is compiled and its first update here is yet to run (and compile it)


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
    while True:  # no truth test of a module: a compiled one refuses len()
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module"):
            model = model.module
        else:
            return model


@dataclass
class _Mark:
    """An update boundary the host can put the epoch back to: RNGs, totals and the device's pending flags."""

    rng: Dict[str, Any]
    totals: EpochTotals
    pending: torch.Tensor
    updates: int
    seen: int

    @classmethod
    def take(cls, totals: EpochTotals, pending: torch.Tensor, updates: int, seen: int) -> "_Mark":
        copy = dataclasses.replace(totals, loss=totals.loss.clone())  # type: ignore[union-attr]
        return cls(rng_state(pending.device), copy, pending.clone(), updates, seen)


# The device's pending flags since the host last read them: non-finite updates, failures in a row, whether the epoch
# is halted (every later update dropped) and the index of the update it halted at.
NONFINITE, IN_A_ROW, HALTED, HALTED_AT = range(4)
# Why a process asks to stop, in rising precedence: the ranks agree on the highest any of them asks. "checkpoint"
# stops the epoch for a save that the caller makes before it goes on.
ASKED = (None, "checkpoint", "budget", "signal")


# GradScaler's scale at or below which an overflow is the gradients' own, not the scale's: a failure, like a
# non-finite loss. Above it, dynamic loss scaling overflows by design (at the start, after each growth interval).
SCALE_FLOOR = 1.0


def _fresh_flags(in_a_row: float, device: torch.device) -> torch.Tensor:
    """[0, in_a_row, 0, -1], filled on the device: torch.tensor(list, device=cuda) copies from the host, a sync."""
    flags = torch.zeros(4, device=device)
    flags[1].fill_(in_a_row)
    flags[3].fill_(-1.0)
    return flags


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
    in, when resumed), adding to `totals`. Returns the updates done in the run so far and why it ended: "done"
    (the epoch is), "budget" (the time budget spent by a process's own clock), "signal" (`ctx.should_stop()` turned
    true), "checkpoint" (`ctx.save_due()` turned true: the caller saves and calls again to go on), all at an update
    boundary, "nonfinite" (a NaN/inf gradient, or a loss spike to ctx.spike, with ctx.nonfinite "stop", or
    ctx.nonfinite_limit in a row with "skip"), or "rollback" (one with "rollback"; the caller reloads a checkpoint
    from before the divergence and calls again to go on past it).

    The host never waits for the device within an interval of `ctx.sync_every` updates. A non-finite gradient drops
    its update on the device, as GradScaler does with `found_inf`, and is counted there; with "stop" and
    "rollback", and after the limit with "skip", the epoch halts: every later update is dropped too. At the
    interval's end (or the epoch's) the host reads the flags once and, if halted, puts the epoch back to the update
    boundary before the failing update ("stop") or after it, RNGs and totals too, so a checkpoint saved then
    resumes as if nothing past it had run. A signal, the budget or a due save stops one process at the next update
    boundary; ranks agree on it (and on the clock, into `ctx.budget`) at the reads. The progress bar, or without one
    a log line per read, shows the mean loss so far, lr, img/s.
    """
    model.train()
    device = ctx.device
    if totals.loss is None:
        totals.loss = torch.zeros(2, device=device)
    name = f"epoch {epoch}/{ctx.epochs}" if ctx.epochs else f"epoch {epoch}"
    steps = totals.batches + len(loader)
    bar = tqdm(  # from the position in the epoch, where a resume or a save within it goes on
        loader,
        desc=name,
        initial=totals.batches,
        total=steps,
        disable=None if progress else True,
        leave=False,
        dynamic_ncols=True,
    )
    start, seconds_before = time.perf_counter(), totals.seconds
    every, distributed = ctx.sync_every or 50, world_size() > 1
    params = [p for p in unwrap(model).parameters() if p.requires_grad]
    device_skip = takes_found_inf(ctx.optimizer)
    pending = _fresh_flags(totals.nonfinite_in_a_row, device)
    marks = [_Mark.take(totals, pending, updates_done, 0)]
    ctx.optimizer.zero_grad(set_to_none=True)
    micro, seen, stopped, compile_start = 0, 0, "done", 0.0
    finite = torch.ones((), device=device)  # 1 while every loss of this update's micro-batches is finite
    update_loss = torch.zeros((), device=device)  # the sum of this update's micro-batch losses

    def read(asked: Optional[str]) -> bool:
        """The interval's one host read; True when the epoch stops here."""
        nonlocal pending, marks, updates_done, seen, stopped
        full = len(marks) > every  # a whole interval: the bar refreshes, or a log line
        halted, asked, mean_loss = _read(ctx, totals, marks, pending, asked)
        updates_done, seen = marks[-1].updates, marks[-1].seen
        pending = _fresh_flags(totals.nonfinite_in_a_row, device)
        marks = [_Mark.take(totals, pending, updates_done, seen)]
        if full or not bar.disable:
            _show(bar, ctx, name, totals.batches, steps, mean_loss, seen * world_size() / (time.perf_counter() - start))
        stopped = halted or asked or "done"
        if stopped == "checkpoint" and totals.batches == steps:  # the epoch's end saves anyway
            stopped = "done"
        return stopped != "done"

    for images, targets, counts in bar:
        if ctx.compiling and micro == 0:
            compile_start = time.perf_counter()
        micro += 1
        last_micro = micro % ctx.accum_steps == 0
        totals.batches += 1
        totals.skipped, totals.scaled = totals.skipped + counts[0], totals.scaled + counts[1]
        sync = model.no_sync() if hasattr(model, "no_sync") and not last_micro else contextlib.nullcontext()
        with sync:
            loss = ctx.compute_loss(model, images, targets, ctx)
            scaled = loss / ctx.accum_steps
            (ctx.scaler.scale(scaled) if ctx.scaler is not None else scaled).backward()
        loss = loss.detach().float()
        finite = finite * torch.isfinite(loss).float()
        update_loss = update_loss + loss
        n = torch.isfinite(loss).float() * len(images)  # images, in a batch or a list; a non-finite loss adds nothing
        totals.loss += torch.stack([torch.nan_to_num(loss, 0.0, 0.0, 0.0) * n, n])
        seen += len(images)
        if not last_micro:
            continue
        _update(model, params, ctx, pending, device_skip, len(marks) - 1, _failed(ctx, update_loss, finite))
        if ctx.compiling:
            start += _untime_compile(ctx, time.perf_counter() - compile_start)
        finite, update_loss = torch.ones((), device=device), torch.zeros((), device=device)
        updates_done += 1  # the schedule follows the data, also over a dropped update
        if ctx.scheduler is not None and ctx.sched_on_updates:
            ctx.scheduler.step_update(num_updates=updates_done)
        marks.append(_Mark.take(totals, pending, updates_done, seen))
        asked = _asked(ctx)
        if (len(marks) > every or (asked and not distributed) or totals.batches == steps) and read(asked):
            break
    if stopped == "done" and len(marks) > 1:  # batches left over that made no update: read what the last ones did
        read(None)
    bar.close()
    totals.seconds = seconds_before + time.perf_counter() - start
    return dict(updates=updates_done, stopped=stopped)


def _asked(ctx: StepContext) -> Optional[str]:
    """What this process asks for at an update boundary (one of ASKED): a stop, the budget's end, a save, or none."""
    if ctx.should_stop():
        return "signal"
    if ctx.budget.spent(ctx.budget.seconds()):
        return "budget"
    return "checkpoint" if ctx.save_due() else None


def _untime_compile(ctx: StepContext, seconds: float) -> float:
    """Leave the first update of a compiled model, which compiles it, out of the training clock: a time budget and
    its lr schedule count training, whatever the compile costs on this machine. Returns `seconds`."""
    ctx.compiling = False
    ctx.budget.restart(ctx.budget.seconds() - seconds)
    _logger.info("compiling the model and its first update took %.1f s: not counted as training time", seconds)
    return seconds


def _read(
    ctx: StepContext, totals: EpochTotals, marks: List[_Mark], pending: torch.Tensor, asked: Optional[str]
) -> Tuple[Optional[str], Optional[str], float]:
    """Read the device's flags, the running loss, the stop any rank asked for (ASKED) and the latest clock of any
    rank (into `ctx.budget`; both a collective when distributed), in one transfer; fold the flags into `totals`. A
    halted epoch goes back to its mark before ("stop") or after the failing update, which becomes the last of
    `marks`. Returns (why the epoch halted, the stop asked, mean loss)."""
    device = pending.device
    agreed = torch.tensor([float(ASKED.index(asked)), ctx.budget.seconds()], device=device)
    agreed = all_reduce(agreed, dist.ReduceOp.MAX)
    values = torch.cat([pending, totals.loss, agreed]).tolist()  # type: ignore[list-item]
    flags, (loss_sum, n), asked = values[:4], values[4:6], ASKED[int(values[6])]
    ctx.budget.agreed = values[7]
    halted = None
    if flags[HALTED]:
        back = int(flags[HALTED_AT]) + (0 if ctx.nonfinite == "stop" else 1)
        mark = marks[back]
        del marks[back + 1 :]
        set_rng_state(mark.rng, device)
        totals.__dict__.update(vars(dataclasses.replace(mark.totals, loss=mark.totals.loss.clone())))
        flags = mark.pending.tolist()
        loss_sum, n = totals.loss.tolist()  # type: ignore[union-attr]
        halted = "rollback" if ctx.nonfinite == "rollback" else "nonfinite"
    totals.nonfinite += int(flags[NONFINITE])
    totals.nonfinite_in_a_row = int(flags[IN_A_ROW])
    return halted, asked, loss_sum / max(n, 1.0)


def _failed(ctx: StepContext, update_loss: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """1.0 where the update failed by its loss: non-finite, or a spike to ctx.spike (the loss averaged over the
    ranks: a collective when distributed, so that every rank decides alike); the guard takes a good loss in."""
    failed = 1 - finite
    if ctx.spike is None:
        return failed
    loss = all_reduce(update_loss.reshape(1) / ctx.accum_steps).reshape(()) / world_size()
    failed = torch.maximum(failed, ctx.spike.check(loss))
    ctx.spike.accept(loss, 1 - failed)
    return failed


def _show(bar: Any, ctx: StepContext, name: str, step: int, steps: int, loss: float, img_per_s: float) -> None:
    """The running loss, lr and img/s: on the progress bar, or in a log line when there is none."""
    lr = ctx.optimizer.param_groups[0]["lr"]
    if not bar.disable:
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{img_per_s:.0f}")
    elif ctx.log_interval:
        _logger.info("%s step %d/%d  loss %.4f  lr %.2e  %.0f img/s", name, step, steps, loss, lr, img_per_s)


def epoch_result(totals: EpochTotals, device: torch.device) -> Dict[str, Any]:
    """An epoch's training numbers over all ranks: mean loss, img/s, unreadable and high-depth images, non-finite
    steps and rollbacks (a collective when distributed)."""
    loss = totals.loss if totals.loss is not None else torch.zeros(2, device=device)
    counts = [float(totals.skipped), float(totals.scaled), float(totals.nonfinite)]
    sums = all_reduce(torch.cat([loss, torch.tensor(counts, device=device)]))
    return dict(
        loss=(sums[0] / sums[1].clamp(min=1)).item(),
        img_per_s=sums[1].item() / max(totals.seconds, 1e-9),
        skipped=int(sums[2].item()),
        scaled=int(sums[3].item()),
        nonfinite=int(sums[4].item()) // world_size(),  # every rank counts each non-finite step
        rollbacks=totals.rollbacks,
        seconds=totals.seconds,
    )


def takes_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer.step` drops an update on the device when told `found_inf` (the fused AdamW/Adam/SGD)."""
    fused = all(group.get("fused") for group in optimizer.param_groups)
    return getattr(optimizer, "_step_supports_amp_scaling", False) and fused


def _update(
    model: nn.Module,
    params: List[torch.Tensor],
    ctx: StepContext,
    pending: torch.Tensor,
    device_skip: bool,
    k: int,
    loss_failed: Optional[torch.Tensor] = None,
) -> None:
    """One optimizer update, dropped on the device when the gradient is not finite or the epoch is halted; updates
    `pending` (failures, failures in a row, halted, the update index `k` it halted at) without a host read.

    A failure is a non-finite gradient (with a GradScaler, only an overflow at the scale's floor: above it the
    scaler's own overflow drops the update and halves the scale, as `GradScaler.step` would, and the run goes on),
    or a failed loss (`loss_failed`, 1 or 0 on the device: non-finite, or a spike).
    """
    opt = ctx.optimizer
    if ctx.scaler is not None:
        ctx.scaler.unscale_(opt)
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=ctx.device)
    if ctx.clip_grad:
        torch.nn.utils.clip_grads_with_norm_(params, ctx.clip_grad, norm)
    bad = (~torch.isfinite(norm)).float()  # the same on every rank: the gradients are all-reduced
    loss_failed = loss_failed if loss_failed is not None else torch.zeros_like(bad)
    failed = bad
    if ctx.scaler is not None:  # the scale as a device tensor (get_scale() would read it on the host)
        failed = bad * (ctx.scaler._scale.reshape(()) <= SCALE_FLOOR).float()
    failed = torch.maximum(failed, loss_failed)
    halted = pending[HALTED]
    in_a_row = (pending[IN_A_ROW] + 1) * failed
    halt_now = failed if ctx.nonfinite != "skip" else (in_a_row >= ctx.nonfinite_limit).float()
    drop = torch.maximum(torch.maximum(bad, loss_failed), halted)
    running = 1 - halted
    pending[NONFINITE] += failed * running
    pending[IN_A_ROW] = torch.where(halted > 0, pending[IN_A_ROW], in_a_row)
    pending[HALTED_AT] = torch.where((halt_now * running) > 0, float(k), pending[HALTED_AT])
    pending[HALTED] = torch.maximum(halted, halt_now)
    if device_skip:
        opt.grad_scale, opt.found_inf = None, drop  # type: ignore[attr-defined]
        opt.step()
    elif not drop.item():  # an optimizer without found_inf: one host read per update
        opt.step()
    if ctx.scaler is not None:
        ctx.scaler.update()
    opt.zero_grad(set_to_none=True)
    if ctx.ema is not None:
        update_ema(ctx.ema, unwrap(model), 1 - drop)


def update_ema(ema: nn.Module, model: nn.Module, keep: torch.Tensor) -> None:
    """timm's ModelEmaV3 update (floating-point entries lerp towards the model's, the others copied), its weight
    times `keep` (1, or 0 for a dropped update) so that the device decides without the host."""
    with torch.no_grad():
        ema_values, values = [], []
        for ema_v, v in zip(ema.module.state_dict().values(), model.state_dict().values()):
            if ema_v.is_floating_point():
                ema_values.append(ema_v)
                values.append(v)
            else:
                ema_v.copy_(v)
        weight = (1.0 - ema.decay) * keep
        torch._foreach_lerp_(ema_values, values, [weight] * len(values))
