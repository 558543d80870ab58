"""A training run, top to bottom: runtime, run directory, data, model, optimizer and schedule, state (new or
resumed), then the epochs, each saved through the state and logged to the run directory, and the one exit a stop
leaves through.

The command line calls `train`: `t2t-vit train|finetune`, and `torchrun --nproc_per_node=8 -m t2t_vit train`.
"""

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..config_keys import DEFAULTS
from ..data import workers_closed
from ..errors import InputError
from .budget import Budget
from .divergence import SpikeGuard, exploded
from .engine import EpochTotals, StepContext, epoch_result, train_one_epoch, unwrap
from .evaluate import evaluate
from .metrics import HELD_OUT, MetricsLog
from .process import StopSignal, rng_state, seed_everything, set_rng_state, setup_distributed
from .run_dir import RunDir, read_first_good
from .setup import (
    Data,
    build_criterion,
    build_ema,
    build_optimizer,
    build_scheduler,
    check_config,
    compiled,
    scaled_lr,
)
from .state import TrainState, resume_changes
from .tasks import DENSE_TASKS, build_data, build_model, classification_loss, dense_loss

__all__ = ["build_criterion", "build_optimizer", "build_scheduler", "scaled_lr", "train"]

_logger = logging.getLogger(__name__)


def train(cfg: Dict[str, Any], resume: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Run (or continue, with `resume` "auto" or a checkpoint path) the training a config describes.

    Returns the last epoch's metrics, the run directory, the best epoch and the training seconds; or, stopped by a
    signal, `stopped` (the signal's number) and `at` (the epoch and step it stopped at), saved in the run directory.
    """
    cfg = check_config(cfg)
    rank, world, device = setup_distributed(cfg["device"])
    if resume is None and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        resume = "auto"  # torchrun restarted the workers: continue where they stopped
        _logger.info("restart %s under torchrun: --resume auto", os.environ["TORCHELASTIC_RESTART_COUNT"])
    run_dir = RunDir.of(cfg)
    with run_dir.opened(rank == 0, world):  # one run at a time; nothing is left behind if the start fails
        paths = run_dir.checkpoints_to_resume(resume)
        seed_everything(cfg["seed"])  # the same weights (and so EMA) on every rank
        return _run(cfg, paths, progress, rank, world, device, run_dir)


@dataclass
class _Run:
    """What the epochs of a run use besides its state."""

    cfg: Dict[str, Any]
    run_dir: RunDir
    data: Data
    model: nn.Module  # evaluated and saved
    train_model: nn.Module  # what the steps run through: compiled, DDP
    ctx: StepContext
    scheduler: Any  # the timm schedule (ctx.scheduler may drive it by the clock)
    lr: float  # the peak lr, scaled to the global batch
    total_epochs: int
    updates_per_epoch: int
    is_main: bool
    rank: int = 0
    tried: List[float] = field(default_factory=list)  # the lrs (as `lr` states them) rollbacks went on at
    judged: Dict[Tuple[str, int], Optional[float]] = field(default_factory=dict)  # held-out losses of saved files
    diverged: Optional[str] = None  # what an epoch's exploded held-out loss was, for the message


def _run(
    cfg: Dict[str, Any], paths: List[Path], progress: bool, rank: int, world: int, device: torch.device, run_dir: RunDir
) -> Dict[str, Any]:
    run, state = _build(cfg, rank, world, device, run_dir)
    _start(run, state, paths)
    budget = run.ctx.budget = Budget(cfg["time_budget"], world, seconds=state.train_seconds + state.totals.seconds)
    if cfg["schedule_on_time"]:  # the lr follows the training seconds: the schedule ends at the budget at any pace
        span = (cfg["schedule_epochs"] or cfg["epochs"]) * run.updates_per_epoch
        run.ctx.scheduler = budget.schedule(run.scheduler, span)

    first_epoch, stop_after = state.epoch, cfg["stop_after_epochs"]
    row: Dict[str, Any] = {}
    stopped, where = "done", ""
    loaders = workers_closed(run.data.train_loader, run.data.val_loader)
    with MetricsLog(run_dir, run.is_main) as metrics, StopSignal() as signals, loaders:
        run.ctx.should_stop = lambda: signals.received is not None
        while state.epoch < run.total_epochs:
            budget.restart(state.train_seconds + state.totals.seconds)
            if budget.spent():  # spent at an epoch's end (or before this resume): the run ends there
                stopped, where = "budget", _where(run, state)
                break
            stopped, where = _train_epoch(run, state, progress)
            if stopped == "rollback":
                _rollback(run, state, where)
                continue
            if stopped in ("signal", "nonfinite"):
                break
            stopping = bool(stop_after) and state.epoch + 1 - first_epoch >= stop_after
            row = _end_of_epoch(run, state, metrics, ends=stopped == "budget" or stopping)
            if row is None:  # its held-out loss exploded: a divergence, as a non-finite loss is
                stopped, where = "nonfinite", _where(run, state)
                if cfg["nonfinite"] == "rollback":
                    _rollback(run, state, where)
                    stopped, row = "done", {}
                    continue
                break
            if stopped == "budget":
                break
            if stopping and state.epoch < run.total_epochs:
                _logger.info("stop_after_epochs=%d reached; resume with --resume auto", stop_after)
                break
        if stopped != "done":  # the one exit of a stop
            _stop(run, state, stopped, where)
        if stopped == "signal":
            return dict(row, run_dir=str(run_dir), stopped=signals.received, at=where)
    return dict(row, run_dir=str(run_dir), best=state.best, train_seconds=state.train_seconds)


def _build(
    cfg: Dict[str, Any], rank: int, world: int, device: torch.device, run_dir: RunDir
) -> Tuple[_Run, TrainState]:
    """Data, model with the wrappers its steps run through, EMA, optimizer, schedule, loss, mixed precision; and
    the state they start from."""
    # data, its batches on the device
    data = build_data(cfg, world, rank, device)
    updates_per_epoch = len(data.train_loader) // cfg["accum_steps"]

    # the task's model with what its checkpoints record to rebuild it, the wrappers the steps run through, its EMA
    # (after DDP has given every rank rank 0's weights)
    model, meta = build_model(cfg, data)
    model, num_classes, arch = model.to(device), meta["num_classes"], meta["arch"]
    train_model = compiled(model, device) if cfg["compile"] else model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(train_model, device_ids=ids)
    ema = build_ema(cfg, model)
    seed_everything(cfg["seed"] + rank)  # each rank's own draws: dropout, drop path, mixup

    # optimizer, schedule, loss, mixed precision
    global_batch, lr = scaled_lr(cfg, world)
    optimizer = build_optimizer(model, cfg, lr)
    scheduler, total_epochs = build_scheduler(optimizer, cfg, updates_per_epoch)
    criterion, mixup = build_criterion(cfg, num_classes)
    amp_dtype = getattr(torch, cfg["amp_dtype"]) if cfg["amp"] and device.type == "cuda" else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    ctx = StepContext(
        optimizer=optimizer,
        criterion=criterion,
        device=device,
        compute_loss=dense_loss if cfg["task"] in DENSE_TASKS else classification_loss,
        scheduler=scheduler,
        sched_on_updates=cfg["sched_on_updates"],
        mixup=mixup,
        ema=ema,
        scaler=scaler,
        amp_dtype=amp_dtype,
        accum_steps=cfg["accum_steps"],
        clip_grad=cfg["clip_grad"],
        nonfinite=cfg["nonfinite"],
        nonfinite_limit=cfg["nonfinite_limit"],
        spike=SpikeGuard(cfg["spike_factor"], cfg["spike_window"], device) if cfg["spike_factor"] else None,
        epochs=total_epochs,
        log_interval=cfg["log_interval"] if rank == 0 else 0,
        sync_every=cfg["log_interval"] or 50,
    )

    # the state a checkpoint saves, with what its readers need to rebuild the model
    state = TrainState(
        model,
        optimizer,
        ema,
        scaler,
        device,
        cfg["batch_size"],
        rank=rank,
        world=world,
        guard=ctx.spike,
        info=dict(config=cfg, meta=meta),
    )
    if rank == 0:
        _logger.info(
            "%s on %s: %d train / %d held-out images, %d classes, %s x %d process(es), global batch %d, lr %.2e",
            arch if cfg["task"] == "classification" else f"{cfg['task']} on {arch}",
            cfg["data"],
            len(data.train_set),
            len(data.val_set),
            num_classes,
            device,
            world,
            global_batch,
            lr,
        )
    run = _Run(
        cfg, run_dir, data, model, train_model, ctx, scheduler, lr, total_epochs, updates_per_epoch, rank == 0, rank
    )
    return run, state


def _start(run: _Run, state: TrainState, paths: List[Path]) -> None:
    """Resume from the first of `paths` that reads, with the changes the config makes to it (recorded in the run
    directory's resume history), or start afresh; write the config in effect."""
    cfg, history = run.cfg, run.run_dir.history()
    if paths:
        path, saved = read_first_good(paths)
        changes = resume_changes(saved.get("config"), cfg, path)
        state.load_state_dict(saved)
        state.updates = state.epoch * run.updates_per_epoch + state.totals.batches // cfg["accum_steps"]
        _schedule_at(run, state)
        _logger.info("resumed from %s at epoch %d, step %d", path, state.epoch, state.totals.batches)
        for key, (old, new) in changes.items():
            _logger.info("resume changes %s: %r -> %r", key, old, new)
        if changes:
            history.append(
                dict(
                    epoch=state.epoch,
                    step=state.totals.batches,
                    time=time.strftime("%Y-%m-%d %H:%M:%S"),
                    changed={k: dict(was=old, now=new) for k, (old, new) in changes.items()},
                )
            )
    if run.is_main:
        run.run_dir.write_config(cfg, history)
    if cfg["nonfinite"] == "rollback" and not paths:
        state.save(run.run_dir)  # a state to roll back to before the first epoch ends


def _where(run: _Run, state: TrainState) -> str:
    return f"epoch {state.epoch + 1} step {state.totals.batches} (of {run.total_epochs} x {len(run.data.train_loader)})"


def _train_epoch(run: _Run, state: TrainState, progress: bool) -> Tuple[str, str]:
    """Train the epoch the state is in, from where it is; (why it ended, where: the epoch and step)."""
    epoch = state.epoch  # counted from 0 here; from 1 in everything a user reads
    state.held_out = None  # the weights move on from the evaluated ones
    if not run.cfg["sched_on_updates"]:
        run.scheduler.step(epoch)
    run.data.train_loader.sampler.set_epoch(epoch, start=state.totals.batches * run.cfg["batch_size"])
    out = train_one_epoch(
        run.train_model,
        run.data.train_loader,
        run.ctx,
        epoch + 1,
        state.totals,
        state.updates,
        progress and run.is_main,
    )
    state.updates = out["updates"]
    return out["stopped"], _where(run, state)


def _end_of_epoch(run: _Run, state: TrainState, metrics: MetricsLog, ends: bool) -> Optional[Dict[str, Any]]:
    """Evaluate the trained epoch (every eval_every-th, and always where this process or the run ends: `ends`, the
    last epoch, the budget spent), keep the best, save, and log its row of metrics; None, nothing saved, where
    the held-out loss exploded."""
    cfg, ctx = run.cfg, run.ctx
    train_stats, t0 = epoch_result(state.totals, ctx.device), time.perf_counter()
    epoch = state.epoch + 1
    ends = ends or epoch == run.total_epochs or ctx.budget.spent()
    val: Dict[str, Any] = {}
    ema_val: Dict[str, Any] = {}
    if ends or epoch % cfg["eval_every"] == 0:
        held_out = dict(task=cfg["task"], num_classes=state.info["meta"]["num_classes"])
        val = evaluate(run.model, run.data.val_loader, ctx.device, ctx.amp_dtype, desc="held-out", **held_out)
        if ctx.ema is not None:
            ema_val = evaluate(
                ctx.ema.module, run.data.val_loader, ctx.device, ctx.amp_dtype, "held-out EMA", **held_out
            )
    reference = _reference(run, state)
    if val and exploded(val.get("loss"), reference, cfg["spike_factor"]):
        run.diverged = f"held-out loss {val['loss']:.4g} over {cfg['spike_factor']:g}x the run's best {reference:.4g}"
        return None
    state.train_seconds += train_stats["seconds"]
    state.epoch, state.totals = epoch, EpochTotals()
    state.record_held_out(val.get("loss") if val else None)
    if val and not exploded(val.get("loss"), state.best_held_out, cfg["spike_factor"]):
        run.tried.clear()  # a healthy epoch: the rollbacks before it are behind the run
    is_best = bool(val) and state.update_best(cfg["best_metric"], dict(val=val, ema=ema_val))
    state.save(run.run_dir, is_best, cfg["checkpoint_every"])
    row = dict(
        epoch=epoch,
        lr=ctx.optimizer.param_groups[0]["lr"],
        train_loss=train_stats["loss"],
        **{f"val_{key}": val.get(key) for key in HELD_OUT},
        **{f"ema_val_{key}": ema_val.get(key) for key in HELD_OUT},
        img_per_s=train_stats["img_per_s"],
        skipped=train_stats["skipped"] + val.get("skipped", 0),
        scaled=train_stats["scaled"],
        nonfinite=train_stats["nonfinite"],
        rollbacks=train_stats["rollbacks"],
        epoch_time_s=train_stats["seconds"] + time.perf_counter() - t0,  # training and evaluation
        train_s=state.train_seconds,  # training so far, evaluations not counted
    )
    metrics.log(row, run.total_epochs)
    return row


def _stop(run: _Run, state: TrainState, stopped: str, where: str) -> None:
    """Save the state where the run stopped: the budget spent (saved as finished: a resume has nothing left to
    do), a signal (a resume goes on from here), or a non-finite loss or spike (InputError after saving the state
    from before the divergence)."""
    if stopped == "nonfinite":
        limit = f"{run.cfg['nonfinite_limit']} failures in a row; " if run.cfg["nonfinite"] == "skip" else ""
        advice = _advice(run, state)
        raise InputError(_nonfinite_message(run, where, limit, _before_divergence(run, state, halted=True), advice))
    if stopped == "budget":
        state.epoch = run.total_epochs
        _logger.info("time budget of %.0f s spent at %s: the run ends", run.ctx.budget.limit, where)
    state.save(run.run_dir)
    if stopped == "signal":
        _logger.warning("stopped at %s; saved %s", where, run.run_dir.last)


def _schedule_at(run: _Run, state: TrainState) -> None:
    """Set the lr the (rebuilt) schedule gives at the state's position, over what the optimizer state loaded."""
    for group in state.optimizer.param_groups:
        group["initial_lr"] = run.lr
    if run.cfg["sched_on_updates"]:
        run.scheduler.step_update(num_updates=state.updates)
    else:
        run.scheduler.step(state.epoch)


def _rollback(run: _Run, state: TrainState, where: str) -> None:
    """Reload the weights and optimizer of the last saved state from before the divergence at a lower lr and go on
    past the failing batch; InputError, that state saved, after nonfinite_limit failures with no good update
    between or rollback_limit rollbacks with no healthy epoch (its held-out loss not exploded) between."""
    cfg, groups = run.cfg, state.optimizer.param_groups
    run.tried.append(cfg["lr"] * max(group.get("lr_scale", 1.0) for group in groups))
    in_a_row = state.totals.nonfinite_in_a_row >= cfg["nonfinite_limit"]
    if in_a_row or len(run.tried) > cfg["rollback_limit"]:
        advice = _advice(run, state)
        lrs = ", ".join(f"{lr:.4g}" for lr in run.tried)
        why = (
            f"{cfg['nonfinite_limit']} failures in a row; "
            if in_a_row
            else f"{len(run.tried) - 1} rollbacks did not get past it (it diverged at lr {lrs}); "
        )
        raise InputError(_nonfinite_message(run, where, why, _before_divergence(run, state, halted=False), advice))
    what = _what_failed(run)
    scales = [group["lr_scale"] for group in groups]
    back_to = _before_divergence(run, state, halted=False, keep=False)
    groups = state.optimizer.param_groups  # new ones, loaded
    for group, scale in zip(groups, scales):
        group["lr_scale"] = scale * cfg["rollback_lr_factor"]
    _schedule_at(run, state)
    state.totals.rollbacks += 1
    _logger.warning(
        "%s at %s: rolled back to %s, lr x %g from here (now %.2e)",
        what,
        where,
        back_to,
        cfg["rollback_lr_factor"],
        groups[0]["lr"],
    )


def _before_divergence(run: _Run, state: TrainState, halted: bool, keep: bool = True) -> str:
    """Load the state from before the divergence into `state` and, with `keep`, leave it on disk as the run's last
    checkpoint; what it is, for a message.

    That state is the halted one (`halted`: the epoch stopped before its failing update) if its held-out loss is
    not exploded, else the newest saved checkpoint's whose is not, else the run's initial weights. Exploded: over
    spike_factor x the run's best held-out loss (before any, chance's). A rollback (not
    `keep`) takes the weights and optimizer only: the position, RNGs and totals stay.
    """
    factor, reference = run.cfg["spike_factor"], _reference(run, state)
    if halted and not exploded(_held_out_loss(run, run.model), reference, factor):
        state.save(run.run_dir)
        return f"{str(run.run_dir.last)!r} holds the state without the failing steps"
    for path in run.run_dir.saved_checkpoints():
        try:
            _, saved = read_first_good([path])
        except InputError:
            continue
        loss = saved.get("held_out_loss")
        if loss is None:  # not evaluated where it was saved: evaluate it now (once)
            key = (str(path), path.stat().st_mtime_ns)
            if key not in run.judged:
                state.load_weights(saved)
                run.judged[key] = _held_out_loss(run, run.model)
            loss = run.judged[key]
        if exploded(loss, reference, factor):
            continue
        step = saved.get("step_in_epoch", 0)
        what = f"{path.name} (epoch {saved['epoch']}{f' step {step}' if step else ''})"
        if not keep:
            state.load_weights(saved)
            return what
        state.load_state_dict(saved)
        if path != run.run_dir.last:
            state.save(run.run_dir)
        return f"{str(run.run_dir.last)!r} holds the state from before the divergence, that of {what}"
    _load_initial(run, state, _initial_model(run), keep)
    if keep:
        state.save(run.run_dir)
    return f"{str(run.run_dir.last)!r} holds the run's initial weights, from before the divergence"


def _reference(run: _Run, state: TrainState) -> Optional[float]:
    """What a held-out loss is exploded against: the run's best, or before any, chance's (ln of the classes)."""
    if state.best_held_out is not None or run.cfg["task"] != "classification":
        return state.best_held_out
    return math.log(state.info["meta"]["num_classes"])


def _held_out_loss(run: _Run, model: nn.Module) -> Optional[float]:
    """The held-out loss of `model` (None for a dense task: its evaluation measures none)."""
    if run.cfg["task"] != "classification":
        return None
    return evaluate(model, run.data.val_loader, run.ctx.device, run.ctx.amp_dtype, desc="held-out")["loss"]


def _initial_model(run: _Run) -> nn.Module:
    """The run's model as its first update found it: built again from the seed (and its init checkpoint)."""
    rng = rng_state(run.ctx.device)
    seed_everything(run.cfg["seed"])
    model, _ = build_model(run.cfg, run.data)
    set_rng_state(rng, run.ctx.device)
    return model.to(run.ctx.device)


def _load_initial(run: _Run, state: TrainState, initial: nn.Module, keep: bool) -> None:
    """The initial weights into model and EMA, the optimizer's state cleared; with `keep`, the position too (a
    fresh run's, its RNGs seeded as one's)."""
    unwrap(state.model).load_state_dict(initial.state_dict())
    if state.ema is not None:
        state.ema.module.load_state_dict(initial.state_dict())
    state.optimizer.state.clear()
    if keep:
        state.epoch = state.updates = 0
        state.totals, state.train_seconds, state.best, state.best_held_out = EpochTotals(), 0.0, None, None
        seed_everything(run.cfg["seed"] + run.rank)


def _what_failed(run: _Run) -> str:
    """What halted the epoch: the guard's latest spike, or a non-finite loss (a host read)."""
    guard, diverged = run.ctx.spike, run.diverged
    if diverged:
        run.diverged = None
        return diverged
    if guard is not None and guard.fired():
        what = f"loss spike ({guard.describe()})"
        guard.clear()
        return what
    return "non-finite loss"


def _advice(run: _Run, state: TrainState) -> str:
    """The --lr to continue with: a tenth of the failing update's lr, as `lr` states it (for the run's global
    batch), and for the Adam family at most the recipe's (an lr a tenth of a diverging one's still kills a ViT
    silently, at chance, far below where the loss explodes)."""
    _schedule_at(run, state)  # the lr the failing update took (the schedule ran on to the end of the interval)
    lr = max(group["lr"] for group in state.optimizer.param_groups) * run.cfg["lr"] / run.lr
    recipe = DEFAULTS["lr"] if "adam" in run.cfg["opt"].lower() or run.cfg["opt"] == "lamb" else math.inf
    if lr / 10 <= recipe:
        return f"--lr {lr / 10:.2g} (a tenth of the {lr:.2g} it diverged at)"
    return f"--lr {recipe:.2g} (the recipe's for {run.cfg['opt']}; it diverged at {lr:.2g})"


def _nonfinite_message(run: _Run, where: str, why: str, held: str, advice: str) -> str:
    return (
        f"{_what_failed(run)} after {where}: {why}the run stopped and {held}. Continue from it with --resume auto and "
        f"a lower --lr: {advice}; or check the data"
    )
