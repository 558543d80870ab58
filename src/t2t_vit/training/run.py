"""Training and evaluation runs. `train` reads top to bottom: runtime, run directory, data, model, optimizer and
schedule, state (new or resumed), then the epochs, each saved through the state and logged to the run directory.

The command line calls these: `t2t-vit train|finetune`, and `torchrun --nproc_per_node=8 -m t2t_vit train`.
"""

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from ..data.device_batches import DeviceBatches
from ..errors import InputError
from .engine import (
    EpochTotals,
    StepContext,
    epoch_result,
    evaluate,
    train_one_epoch,
    unwrap,
)
from .metrics import MetricsLog
from .process import StopSignal, seed_everything, setup_distributed
from .run_dir import RunDir, read_first_good
from .setup import (
    TimeSchedule,
    build_criterion,
    build_data,
    build_ema,
    build_model,
    build_optimizer,
    build_scheduler,
    check_config,
    compiled,
    scaled_lr,
)
from .state import TrainState, resume_changes

__all__ = ["build_criterion", "build_optimizer", "build_scheduler", "scaled_lr", "train"]

_logger = logging.getLogger(__name__)


def train(cfg: Dict[str, Any], resume: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Run (or continue, with `resume` "auto" or a checkpoint path) the training a config describes.

    Returns the last epoch's metrics, the run directory and the best epoch; or, stopped by a signal, `stopped`
    (the signal's number) with the epoch and step it stopped at, all saved in the run directory.
    """
    # runtime: ranks, device; the same seed everywhere for the weights (and so the EMA) every rank starts from
    cfg = check_config(cfg)
    rank, world, device = setup_distributed(cfg["device"])
    is_main = rank == 0
    if resume is None and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        resume = "auto"  # torchrun restarted the workers: continue where they stopped
        _logger.info("restart %s under torchrun: --resume auto", os.environ["TORCHELASTIC_RESTART_COUNT"])

    run_dir = RunDir.of(cfg)
    with run_dir.opened(is_main, world):  # one run at a time; nothing is left behind if the start fails
        paths = run_dir.checkpoints_to_resume(resume)
        seed_everything(cfg["seed"])
        return _run(cfg, paths, progress, rank, world, device, run_dir)


def _run(
    cfg: Dict[str, Any], paths: List[Path], progress: bool, rank: int, world: int, device: torch.device, run_dir: RunDir
) -> Dict[str, Any]:
    is_main = rank == 0
    # data
    pin = device.type == "cuda"
    data = build_data(cfg, world, rank, pin)
    data.train_loader = DeviceBatches(
        data.train_loader, device, data.config, (cfg["reprob"], cfg["remode"], cfg["recount"]), cfg["seed"]
    )
    data.val_loader = DeviceBatches(data.val_loader, device, data.config)
    num_classes = cfg["num_classes"] or len(data.classes)
    steps_per_epoch = len(data.train_loader)
    updates_per_epoch = steps_per_epoch // cfg["accum_steps"]

    # model, the wrappers the steps run through, its EMA (after DDP has given every rank rank 0's weights)
    arch, model, model_kwargs = build_model(cfg, num_classes)
    model = model.to(device)
    train_model = compiled(model, device) if cfg["compile"] else model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(train_model, device_ids=[device.index] if pin else None)
    ema = build_ema(cfg, model)
    seed_everything(cfg["seed"] + rank)  # each rank's own draws: dropout, drop path, mixup

    # optimizer, schedule, loss, mixed precision
    global_batch, lr = scaled_lr(cfg, world)
    optimizer = build_optimizer(model, cfg, lr)
    scheduler, total_epochs = build_scheduler(optimizer, cfg, updates_per_epoch)
    criterion, mixup = build_criterion(cfg, num_classes)
    amp_dtype = getattr(torch, cfg["amp_dtype"]) if cfg["amp"] and device.type == "cuda" else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    # state: new, or resumed from a checkpoint with what the command line changes applied
    net = unwrap(model)
    meta = dict(
        arch=arch,
        model_kwargs=model_kwargs,
        class_names=data.classes,
        data_config=data.config,
        grid_size=list(net.grid_size) if hasattr(net, "grid_size") else None,
    )
    state = TrainState(
        model,
        optimizer,
        ema,
        scaler,
        device,
        cfg["batch_size"],
        rank=rank,
        world=world,
        info=dict(config=cfg, meta=meta),
    )
    history = run_dir.history()
    if paths:
        path, saved = read_first_good(paths)
        changes = resume_changes(saved.get("config"), cfg, path)
        state.load_state_dict(saved)
        state.updates = state.epoch * updates_per_epoch + state.totals.batches // cfg["accum_steps"]
        _schedule_at(scheduler, optimizer, lr, cfg, state)
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
    if is_main:
        run_dir.write_config(cfg, history)
        _logger.info(
            "%s on %s: %d train / %d held-out images, %d classes, %s x %d process(es), global batch %d, lr %.2e",
            arch,
            cfg["data"],
            len(data.train_set),
            len(data.val_set),
            num_classes,
            device,
            world,
            global_batch,
            lr,
        )
    if cfg["nonfinite"] == "rollback" and not paths:
        state.save(run_dir)  # a state to roll back to before the first epoch ends
    metrics = MetricsLog(run_dir, is_main)

    # the epochs
    ctx = StepContext(
        optimizer=optimizer,
        criterion=criterion,
        device=device,
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
        epochs=total_epochs,
        log_interval=cfg["log_interval"] if is_main else 0,
        sync_every=cfg["log_interval"] or 50,
    )
    row: Dict[str, Any] = {}
    first_epoch, stop_after, budget = state.epoch, cfg["stop_after_epochs"], cfg["time_budget"]
    clock = [0.0, 0.0]  # (when this epoch's session started, training seconds before it)
    ctx.clock = lambda: clock[1] + time.perf_counter() - clock[0]
    ctx.agreed_seconds = state.train_seconds + state.totals.seconds
    # the seconds that the lr and the budget's end follow: this process's clock, or with many processes the one
    # they agree on at each host read (every log_interval updates), so that every rank takes the same lr and ends
    # at the same epoch
    seconds = ctx.clock if world == 1 else (lambda: ctx.agreed_seconds)
    if cfg["schedule_on_time"]:  # the lr follows the training seconds: the schedule ends at the budget at any pace
        span = (cfg["schedule_epochs"] or cfg["epochs"]) * updates_per_epoch
        ctx.scheduler = TimeSchedule(scheduler, span, budget, seconds)

    def over_budget(now: Callable[[], float] = seconds) -> bool:
        return budget is not None and now() >= budget

    try:
        with StopSignal() as stop:  # mid-epoch, ranks agree on a stop at the next read: each may see its own clock
            ctx.should_stop = lambda: stop.received is not None or over_budget(ctx.clock)
            while state.epoch < total_epochs:
                epoch = state.epoch  # counted from 0 here; from 1 in everything a user reads
                clock[:] = time.perf_counter(), state.train_seconds + state.totals.seconds
                if over_budget():  # spent at an epoch's end: the run ends with that epoch's evaluation
                    state.epoch = total_epochs
                    state.save(run_dir)
                    break
                if not cfg["sched_on_updates"]:
                    scheduler.step(epoch)
                data.train_loader.sampler.set_epoch(epoch, start=state.totals.batches * cfg["batch_size"])
                out = train_one_epoch(
                    train_model, data.train_loader, ctx, epoch + 1, state.totals, state.updates, progress and is_main
                )
                state.updates = out["updates"]
                where = f"epoch {epoch + 1} step {state.totals.batches} (of {total_epochs} x {steps_per_epoch})"
                if out["stopped"] == "rollback":
                    _rollback(state, run_dir, scheduler, lr, cfg, where)
                    continue
                if out["stopped"] == "nonfinite":
                    state.save(run_dir)
                    limit = f"{cfg['nonfinite_limit']} failures in a row; " if cfg["nonfinite"] == "skip" else ""
                    raise InputError(_nonfinite_message(where, run_dir, limit))
                capped = out["stopped"] == "signal" and stop.received is None  # the time budget, mid-epoch
                if out["stopped"] == "signal" and not capped:
                    state.save(run_dir)
                    _logger.warning("stopped at %s; saved %s", where, run_dir.last)
                    return dict(row, run_dir=str(run_dir), stopped=stop.received, at=where)
                train_stats, t0 = epoch_result(state.totals, device), time.perf_counter()
                stopping = stop_after and epoch + 1 - first_epoch >= stop_after
                ends = capped or stopping or epoch + 1 == total_epochs or over_budget()
                val: Dict[str, Any] = {}
                ema_val: Dict[str, Any] = {}
                if ends or (epoch + 1) % cfg["eval_every"] == 0:
                    val = evaluate(model, data.val_loader, device, amp_dtype, desc="held-out")
                    if ema:
                        ema_val = evaluate(ema.module, data.val_loader, device, amp_dtype, desc="held-out EMA")
                state.train_seconds += train_stats["seconds"]
                state.epoch, state.totals = epoch + 1, EpochTotals()
                is_best = bool(val) and state.update_best(cfg["best_metric"], dict(val=val, ema=ema_val))
                if capped:  # saved as finished: a resume has nothing left to do
                    state.epoch = total_epochs
                    _logger.info("time budget of %.0f s spent at %s: evaluated there, the run ends", budget, where)
                state.save(run_dir, is_best, cfg["checkpoint_every"])
                row = dict(
                    epoch=epoch + 1,
                    lr=optimizer.param_groups[0]["lr"],
                    train_loss=train_stats["loss"],
                    val_loss=val.get("loss"),
                    val_top1=val.get("top1"),
                    val_top5=val.get("top5"),
                    ema_val_loss=ema_val.get("loss"),
                    ema_val_top1=ema_val.get("top1"),
                    ema_val_top5=ema_val.get("top5"),
                    img_per_s=train_stats["img_per_s"],
                    skipped=train_stats["skipped"] + val.get("skipped", 0),
                    scaled=train_stats["scaled"],
                    nonfinite=train_stats["nonfinite"],
                    rollbacks=train_stats["rollbacks"],
                    epoch_time_s=train_stats["seconds"] + time.perf_counter() - t0,  # training and evaluation
                    train_s=state.train_seconds,  # training so far, evaluations not counted
                )
                metrics.log(row, total_epochs)
                if stopping and state.epoch < total_epochs:
                    _logger.info("stop_after_epochs=%d reached; resume with --resume auto", stop_after)
                    break
    finally:
        metrics.close()
    return dict(row, run_dir=str(run_dir), best=state.best, train_seconds=state.train_seconds)


def _schedule_at(
    scheduler: Any, optimizer: torch.optim.Optimizer, lr: float, cfg: Dict[str, Any], state: TrainState
) -> None:
    """Set the lr the (rebuilt) schedule gives at the state's position, over what the optimizer state loaded."""
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
    if cfg["sched_on_updates"]:
        scheduler.step_update(num_updates=state.updates)
    else:
        scheduler.step(state.epoch)


def _rollback(state: TrainState, run_dir: RunDir, scheduler: Any, lr: float, cfg: Dict[str, Any], where: str) -> None:
    """Reload the weights and optimizer of the last good checkpoint at a lower lr and go on past the failing batch;
    InputError after nonfinite_limit failures with no good update between."""
    if state.totals.nonfinite_in_a_row >= cfg["nonfinite_limit"]:
        raise InputError(_nonfinite_message(where, run_dir, f"{cfg['nonfinite_limit']} failures in a row; "))
    path, saved = run_dir.read_saved()
    scales = [group["lr_scale"] for group in state.optimizer.param_groups]
    state.load_weights(saved)
    for group, scale in zip(state.optimizer.param_groups, scales):
        group["lr_scale"] = scale * cfg["rollback_lr_factor"]
    _schedule_at(scheduler, state.optimizer, lr, cfg, state)
    state.totals.rollbacks += 1
    _logger.warning(
        "non-finite loss at %s: rolled back to %s (epoch %d), lr x %g from here (now %.2e)",
        where,
        path,
        saved["epoch"],
        cfg["rollback_lr_factor"],
        state.optimizer.param_groups[0]["lr"],
    )


def _nonfinite_message(where: str, run_dir: RunDir, why: str = "") -> str:
    return (
        f"non-finite loss after {where}: {why}the run stopped and {str(run_dir.last)!r} holds the state without the "
        "failing steps. Continue with --resume auto and a lower --lr, --clip-grad 1.0, or --nonfinite skip|rollback; "
        "or check the data"
    )
