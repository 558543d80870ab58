"""Training and evaluation runs. `train` reads top to bottom: runtime, data, model, optimizer and schedule, state
(new or resumed), then the epochs, each saved through the state and logged to the run directory.

The command line calls these: `t2t-vit train|finetune|eval`, and `torchrun --nproc_per_node=8 -m t2t_vit train`.
"""
import logging
import time
from typing import Any, Dict, Optional

import torch
from torch import nn

from . import data as data_lib
from .config import save_config
from .engine import StepContext, evaluate, train_one_epoch, unwrap
from .errors import InputError
from .factory import load_model
from .train_metrics import MetricsLog
from .train_runtime import StopSignal, pick_device, seed_everything, setup_distributed
from .train_setup import (
    build_criterion,
    build_data,
    build_ema,
    build_model,
    build_optimizer,
    build_scheduler,
    check_config,
    run_dir_of,
    scaled_lr,
)
from .train_state import LAST, TrainState, checkpoint_to_resume

__all__ = ["build_criterion", "build_optimizer", "build_scheduler", "evaluate_checkpoint", "scaled_lr", "train"]

_logger = logging.getLogger(__name__)


def train(cfg: Dict[str, Any], resume: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Run (or continue, with `resume` "auto" or a checkpoint path) the training a resolved config describes.

    Returns the last epoch's metrics, the run directory and the best epoch.
    """
    # runtime: ranks, device, seeds
    check_config(cfg)
    rank, world, local_rank = setup_distributed()
    is_main = rank == 0
    device = pick_device(cfg["device"], local_rank)
    seed_everything(cfg["seed"] + rank)

    # data
    pin = device.type == "cuda"
    data = build_data(cfg, world, rank, pin)
    num_classes = cfg["num_classes"] or len(data.classes)
    steps_per_epoch = len(data.train_loader)

    # model, its EMA, and the wrappers the steps run through
    arch, model, model_kwargs = build_model(cfg, num_classes)
    model = model.to(device)
    ema = build_ema(cfg, model)
    train_model = torch.compile(model) if cfg["compile"] else model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(train_model, device_ids=[local_rank] if pin else None)

    # optimizer, schedule, loss, mixed precision
    global_batch, lr = scaled_lr(cfg, world)
    optimizer = build_optimizer(model, cfg, lr)
    scheduler, total_epochs = build_scheduler(optimizer, cfg, steps_per_epoch // cfg["accum_steps"])
    criterion, mixup = build_criterion(cfg, num_classes)
    amp_dtype = getattr(torch, cfg["amp_dtype"]) if cfg["amp"] and device.type == "cuda" else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    # state: new, or resumed from a checkpoint
    run_dir = run_dir_of(cfg)
    net = unwrap(model)
    meta = dict(arch=arch, model_kwargs=model_kwargs, class_names=data.classes, data_config=data.config,
                grid_size=list(net.grid_size) if hasattr(net, "grid_size") else None)  # fmt: skip
    state = TrainState(model, optimizer, scheduler, ema, scaler, rank=rank, world=world,
                       info=dict(config=cfg, meta=meta))  # fmt: skip
    resume_path = checkpoint_to_resume(run_dir, resume)
    if resume_path is not None:
        state.load(resume_path, cfg["data"])
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        _logger.info(
            "%s on %s: %d train / %d held-out images, %d classes, %s x %d process(es), global batch %d, lr %.2e",
            arch, cfg["data"], len(data.train_set), len(data.val_set), num_classes, device, world, global_batch, lr,
        )  # fmt: skip
    metrics = MetricsLog(run_dir, is_main)

    # the epochs
    ctx = StepContext(
        optimizer=optimizer, criterion=criterion, device=device, scheduler=scheduler,
        sched_on_updates=cfg["sched_on_updates"], mixup=mixup, ema=ema, scaler=scaler, amp_dtype=amp_dtype,
        accum_steps=cfg["accum_steps"], clip_grad=cfg["clip_grad"], epochs=total_epochs,
        log_interval=cfg["log_interval"] if is_main else 0,
    )  # fmt: skip
    row: Dict[str, Any] = {}
    first_epoch, stop_after = state.epoch, cfg["stop_after_epochs"]
    with StopSignal() as stop:
        ctx.should_stop = lambda: stop.received is not None
        for epoch in range(state.epoch, total_epochs):  # counted from 0 here; from 1 in everything a user reads
            if not cfg["sched_on_updates"]:
                scheduler.step(epoch)
            data.train_loader.sampler.set_epoch(epoch, start=state.step_in_epoch * cfg["batch_size"])
            t0 = time.perf_counter()
            stats = train_one_epoch(
                train_model, data.train_loader, ctx, epoch + 1, state.updates, progress and is_main, state.step_in_epoch
            )
            state.updates, state.step_in_epoch = stats["updates"], state.step_in_epoch + stats["batches"]
            if stats["stopped"] == "nonfinite":
                metrics.close()
                raise InputError(
                    f"non-finite loss at epoch {epoch + state.step_in_epoch / steps_per_epoch:.2f} (epoch "
                    f"{epoch + 1}/{total_epochs}, step {state.step_in_epoch}/{steps_per_epoch}): the run stopped; the "
                    f"last good checkpoint is {str(run_dir / LAST)!r}. Lower lr, set clip_grad, or check the data"
                )
            if stats["stopped"] == "signal":
                state.save(run_dir)
                metrics.close()
                _logger.warning("stopped by signal in epoch %d/%d at step %d/%d; resume with --resume auto",
                                epoch + 1, total_epochs, state.step_in_epoch, steps_per_epoch)  # fmt: skip
                return dict(row, run_dir=str(run_dir), stopped="signal")
            val = evaluate(model, data.val_loader, device, amp_dtype, desc="held-out")
            ema_val = evaluate(ema.module, data.val_loader, device, amp_dtype, desc="held-out EMA") if ema else {}
            state.epoch, state.step_in_epoch = epoch + 1, 0
            is_best = state.update_best(cfg["best_metric"], dict(val=val, ema=ema_val))
            state.save(run_dir, is_best, cfg["checkpoint_every"])
            row = dict(
                epoch=epoch + 1, lr=optimizer.param_groups[0]["lr"], train_loss=stats["loss"],
                val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"],
                ema_val_loss=ema_val.get("loss"), ema_val_top1=ema_val.get("top1"), ema_val_top5=ema_val.get("top5"),
                img_per_s=stats["img_per_s"], skipped=stats["skipped"] + val["skipped"],
                epoch_time_s=time.perf_counter() - t0,
            )  # fmt: skip
            metrics.log(row, total_epochs)
            if stop_after and state.epoch - first_epoch >= stop_after and state.epoch < total_epochs:
                _logger.info("stop_after_epochs=%d reached; resume with --resume auto", stop_after)
                break
    metrics.close()
    return dict(row, run_dir=str(run_dir), best=state.best)


def evaluate_checkpoint(
    checkpoint: str,
    data: str,
    model_name: Optional[str] = None,
    batch_size: int = 128,
    workers: int = 4,
    use_ema: bool = True,
    device: str = "auto",
    download: bool = False,
    progress: bool = True,
) -> Dict[str, Any]:
    """Top-1, top-5, loss and img/s of a checkpoint (ours, or the authors' with `model_name`) on a dataset's
    held-out split, with the checkpoint's preprocessing (the release's: crop 0.9, bicubic, ImageNet mean/std)."""
    model, meta = load_model(checkpoint, model_name, use_ema=use_ema)
    dev = pick_device(device)
    data_config = meta["data_config"]
    val_set = data_lib.create_dataset(data, "val", download, data_config["input_size"][0])
    classes = data_lib.dataset_classes(val_set)
    head = model.get_classifier()
    num_classes = getattr(head, "out_features", 0)
    if num_classes != len(classes):
        raise InputError(
            f"the checkpoint's head has {num_classes} classes but {data} has {len(classes)}: evaluate on the "
            "data it was trained on, or fine-tune it first (t2t-vit finetune)"
        )
    val_set.transform = data_lib.create_transform({}, data_config, training=False)
    loader = data_lib.create_loader(val_set, batch_size, False, workers, pin_memory=dev.type == "cuda")
    return dict(evaluate(model.to(dev), loader, dev, progress=progress), model=meta["arch"])
