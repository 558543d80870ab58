"""A training run, top to bottom: runtime, run directory, data, model, optimizer and schedule, state (new or
resumed), then the epochs, each saved through the state and logged to the run directory, and the one exit a stop
leaves through.

The command line calls `train`: `t2t-vit train|finetune`, and `torchrun --nproc_per_node=8 -m t2t_vit train`.
"""

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..data import workers_closed
from .budget import Budget
from .divergence import SpikeGuard, exploded
from .engine import EpochTotals, StepContext, epoch_result, train_one_epoch
from .evaluate import evaluate
from .metrics import HELD_OUT, MetricsLog
from .process import StopSignal, seed_everything, setup_distributed
from .rollback import halted, reference_loss, rollback
from .run_dir import RunDir, read_first_good
from .run_parts import Run
from .setup import (
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
    Under torchrun it makes the process group if there is none; `process.end_distributed()` ends it (the CLI does).
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
        run.ctx.save_due = lambda: state.save_due(cfg["checkpoint_minutes"])
        while state.epoch < run.total_epochs:
            budget.restart(state.train_seconds + state.totals.seconds)
            if budget.spent():  # spent at an epoch's end (or before this resume): the run ends there
                stopped, where = "budget", _where(run, state)
                break
            stopped, where = _train_epoch(run, state, progress)
            if stopped == "checkpoint":  # checkpoint_minutes since the last save: save, and go on from here
                state.save(run_dir)
                if run.is_main:
                    _logger.info("saved %s at %s (every %g min)", run_dir.last, where, cfg["checkpoint_minutes"])
                continue
            if stopped == "rollback":
                rollback(run, state, where)
                continue
            if stopped in ("signal", "nonfinite"):
                break
            stopping = bool(stop_after) and state.epoch + 1 - first_epoch >= stop_after
            row = _end_of_epoch(run, state, metrics, ends=stopped == "budget" or stopping)
            if row is None:  # its held-out loss exploded: a divergence, as a non-finite loss is
                stopped, where = "nonfinite", _where(run, state)
                if cfg["nonfinite"] == "rollback":
                    rollback(run, state, where)
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
        elif cfg["schedule_on_time"] and row and state.epoch >= run.total_epochs and run.is_main:
            _schedule_cut_short(state.train_seconds, cfg["time_budget"], run.total_epochs)
        if stopped == "signal":
            return dict(row, run_dir=str(run_dir), stopped=signals.received, at=where)
    if not row and stopped in ("done", "budget") and run.is_main:  # no epoch ended here: the run had ended before
        row = _ended_row(run_dir)
    return dict(row, run_dir=str(run_dir), best=state.best, train_seconds=state.train_seconds)


def _schedule_cut_short(seconds: float, budget: float, epochs: int) -> None:
    """Say that the epoch bound ended a run whose lr schedule follows the clock before its budget had: that
    schedule had not ended, and the last updates took a higher lr than the budget's end would have."""
    _logger.warning(
        "the run ended at its bound of %d epochs after %.0f s of training, before its time budget of %.0f s: the lr "
        "schedule, which follows the clock, stopped at %.0f%% of its course; raise --epochs to end it at the budget",
        epochs,
        seconds,
        budget,
        100 * seconds / budget,
    )


def _ended_row(run_dir: RunDir) -> Dict[str, Any]:
    """The last row of metrics.csv, as numbers: the result of a run resumed with nothing left to train."""
    rows = run_dir.metric_rows()
    last = {key: float(value) for key, value in rows[-1].items() if value} if rows else {}
    ended = f"after epoch {int(last['epoch'])}" if last else "before any epoch ended"
    _logger.info("nothing left to train: the run ended %s", ended)
    return last


def _build(cfg: Dict[str, Any], rank: int, world: int, device: torch.device, run_dir: RunDir) -> Tuple[Run, TrainState]:
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
        compiling=train_model is not model,  # before DDP's wrapper: compiled() may return the model itself
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
    run = Run(
        cfg, run_dir, data, model, train_model, ctx, scheduler, lr, total_epochs, updates_per_epoch, rank == 0, rank
    )
    return run, state


def _start(run: Run, state: TrainState, paths: List[Path]) -> None:
    """Resume from the first of `paths` that reads, with the changes the config makes to it (recorded in the run
    directory's resume history), or start afresh; write the config in effect."""
    cfg, history = run.cfg, run.run_dir.history()
    if paths:
        path, saved = read_first_good(paths)
        changes = resume_changes(saved.get("config"), cfg, path)
        state.load_state_dict(saved)
        state.updates = state.epoch * run.updates_per_epoch + state.totals.batches // cfg["accum_steps"]
        run.schedule_at(state)
        if run.is_main:  # in the words of the stop it continues ("epoch 17 step 11"; 0-based: 16)
            _logger.info("resumed from %s at %s", path, _where(run, state))
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


def _where(run: Run, state: TrainState) -> str:
    return f"epoch {state.epoch + 1} step {state.totals.batches} (of {run.total_epochs} x {len(run.data.train_loader)})"


def _train_epoch(run: Run, state: TrainState, progress: bool) -> Tuple[str, str]:
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


def _end_of_epoch(run: Run, state: TrainState, metrics: MetricsLog, ends: bool) -> Optional[Dict[str, Any]]:
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
    reference = reference_loss(run, state)
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


def _stop(run: Run, state: TrainState, stopped: str, where: str) -> None:
    """Save the state where the run stopped: the budget spent (saved as finished: a resume has nothing left to
    do), a signal (a resume goes on from here), or a non-finite loss or spike (InputError after saving the state
    from before the divergence)."""
    if stopped == "nonfinite":
        raise halted(run, state, where)
    if stopped == "budget":
        state.epoch = run.total_epochs
        _logger.info("time budget of %.0f s spent at %s: the run ends", run.ctx.budget.limit, where)
    state.save(run.run_dir)
    if stopped == "signal" and run.is_main:
        _logger.warning("stopped at %s; saved %s", where, run.run_dir.last)
