"""Training and evaluation runs: config, distributed setup, EMA, checkpoints, logs.

Single process:  t2t-vit train --config t2t_vit_14 --data /path/to/imagenet
Many processes:  torchrun --nproc_per_node=8 -m t2t_vit.train --config t2t_vit_14 --data /path/to/imagenet
"""
import argparse
import csv
import logging
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import data as data_lib
from .checkpoint import extract_state_dict, read_checkpoint, save_checkpoint
from .config import resolve_config, parse_overrides, save_config
from .engine import StepContext, evaluate, train_one_epoch, unwrap
from .errors import InputError
from .factory import create_model, load_model
from .visualize import METRICS_COLUMNS, plot_curves

_logger = logging.getLogger(__name__)

# best_metric -> (which model, which number, +1 if higher is better else -1)
BEST_METRICS = {"top1": ("val", "top1", 1), "ema_top1": ("ema", "top1", 1),
                "loss": ("val", "loss", -1), "ema_loss": ("ema", "loss", -1)}  # fmt: skip


# ----------------------------------------------------------------------------------------------- setup


def setup_distributed() -> Tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group under torchrun (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    return rank, world, local_rank


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"device {name!r} is not a torch device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for but CUDA is not available here: use --device cpu")
    return device


def data_config_of(cfg: Dict[str, Any]) -> Dict[str, Any]:
    size = cfg["img_size"] if isinstance(cfg["img_size"], (list, tuple)) else (cfg["img_size"], cfg["img_size"])
    return dict(
        input_size=[cfg["in_chans"], *size],
        interpolation=cfg["interpolation"],
        mean=list(cfg["mean"]),
        std=list(cfg["std"]),
        crop_pct=cfg["crop_pct"],
    )


def rng_state() -> Dict[str, Any]:
    """Every RNG the run draws from, as plain types (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = dict(
        python=random.getstate(),
        numpy=dict(keys=torch.from_numpy(np_state[1].astype(np.int64)), pos=np_state[2],
                   has_gauss=np_state[3], cached_gaussian=np_state[4]),  # fmt: skip
        torch=torch.get_rng_state(),
    )
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopSignal:
    """SIGTERM / SIGINT set a flag so the loop can checkpoint and leave; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        _logger.warning("%s received: finishing this step, then writing a checkpoint", signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------------------------- the run


class Run:
    """The run directory: resolved config, checkpoints (written atomically), metrics.csv, TensorBoard, curves."""

    def __init__(self, path: Path, is_main: bool) -> None:
        self.path, self.is_main = path, is_main
        self.tb = None
        if is_main:
            path.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path / "tb"))
            except ImportError:
                pass

    @property
    def last(self) -> Path:
        return self.path / "last.pth.tar"

    def save(self, state: Dict[str, Any], epoch_done: int, is_best: bool, every: int) -> None:
        if not self.is_main:
            return
        save_checkpoint(state, self.last)
        if is_best:
            _copy_atomic(self.last, self.path / "best.pth.tar")
        if every and epoch_done % every == 0 and state["step_in_epoch"] == 0:
            _copy_atomic(self.last, self.path / f"epoch_{epoch_done}.pth.tar")

    def log_epoch(self, row: Dict[str, Any]) -> None:
        if not self.is_main:
            return
        path = self.path / "metrics.csv"
        rows = []
        if path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < row["epoch"]]  # resumed: drop re-run epochs
        rows.append({k: ("" if row.get(k) is None else row[k]) for k in METRICS_COLUMNS})
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRICS_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        if self.tb is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and not math.isnan(v):
                    self.tb.add_scalar(k, v, row["epoch"])

    def finish(self) -> None:
        if not self.is_main:
            return
        if (self.path / "metrics.csv").is_file():
            plot_curves([self.path], self.path / "curves.png")
        if self.tb is not None:
            self.tb.close()


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def run_dir_of(cfg: Dict[str, Any]) -> Path:
    model = cfg["model"] or Path(str(cfg["init_checkpoint"])).name.split(".")[0]
    name = cfg["name"] or f"{model}-{str(cfg['data']).split(':')[0].replace('/', '_')}"
    return Path(cfg["output"]) / name


def scaled_lr(cfg: Dict[str, Any], world: int) -> Tuple[int, float]:
    """(global batch, lr): cfg lr is stated for a global batch of lr_base_batch and scaled linearly."""
    global_batch = cfg["batch_size"] * world * cfg["accum_steps"]
    return global_batch, cfg["lr"] * global_batch / cfg["lr_base_batch"]


def param_groups(model: nn.Module, cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Parameter groups: no weight decay on norms, biases, the class token and the position table (fixed tensors
    are left out); lr_scale = backbone_lr_ratio off the head, times layer_decay ** depth-from-top if set.

    With freeze_backbone only the head trains (the rest stops requiring gradients).
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    block_of = {n: int(m.group(1)) for n, _ in model.named_parameters() if (m := re.match(r"blocks\.(\d+)\.", n))}
    top = max(block_of.values(), default=-1) + 2  # layers: 0 the stem (T2T module, tokens), then blocks, then norm

    def layer_of(name: str) -> int:
        if name in block_of:
            return block_of[name] + 1
        return 0 if name.split(".")[0] in ("cls_token", "pos_embed", "tokens_to_token") else top

    groups: Dict[Tuple[float, float], Dict[str, Any]] = {}
    for name, p in model.named_parameters():
        head = name.startswith("head.")
        if cfg["freeze_backbone"] and not head:
            p.requires_grad_(False)
        if not p.requires_grad:
            continue
        decay = 0.0 if p.ndim <= 1 or name in skip else cfg["weight_decay"]
        scale = 1.0 if head else cfg["backbone_lr_ratio"]
        if cfg["layer_decay"] is not None:
            scale *= cfg["layer_decay"] ** (top - layer_of(name))
        group = groups.setdefault((decay, scale), dict(params=[], weight_decay=decay, lr_scale=scale))
        group["params"].append(p)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: Dict[str, Any], lr: float) -> torch.optim.Optimizer:
    """AdamW (or cfg opt, e.g. sgd) over `param_groups`."""
    from timm.optim import create_optimizer_v2

    kwargs = dict(eps=cfg["opt_eps"]) if cfg["opt"] in ("adamw", "adam", "lamb") else dict(momentum=cfg["momentum"])
    return create_optimizer_v2(param_groups(model, cfg), opt=cfg["opt"], lr=lr, weight_decay=0.0, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Dict[str, Any], updates_per_epoch: int) -> Tuple[Any, int]:
    """The cosine schedule with warmup from warmup_lr and cooldown at min_lr; returns it and the total epochs."""
    from timm.scheduler import create_scheduler_v2

    return create_scheduler_v2(
        optimizer,
        sched=cfg["sched"],
        num_epochs=cfg["epochs"],
        warmup_epochs=cfg["warmup_epochs"],
        warmup_lr=cfg["warmup_lr"],
        min_lr=cfg["min_lr"],
        cooldown_epochs=cfg["cooldown_epochs"],
        step_on_epochs=not cfg["sched_on_updates"],
        updates_per_epoch=updates_per_epoch,
    )


def build_criterion(cfg: Dict[str, Any], num_classes: int) -> Tuple[nn.Module, Any]:
    """The training loss and the mixup/cutmix function (None when off); label smoothing lives in either."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if cfg["mixup"] > 0 or cfg["cutmix"] > 0:
        mixup = Mixup(
            mixup_alpha=cfg["mixup"],
            cutmix_alpha=cfg["cutmix"],
            prob=cfg["mixup_prob"],
            switch_prob=cfg["mixup_switch_prob"],
            mode=cfg["mixup_mode"],
            label_smoothing=cfg["smoothing"],
            num_classes=num_classes,
        )
        return SoftTargetCrossEntropy(), mixup
    if cfg["smoothing"] > 0:
        return LabelSmoothingCrossEntropy(cfg["smoothing"]), None
    return nn.CrossEntropyLoss(), None


def _check_config(cfg: Dict[str, Any]) -> None:
    if cfg["data"] is None:
        raise InputError("no data: pass --data (digits, fashion-mnist:DIR, an ImageFolder root, ...)")
    if cfg["best_metric"] not in BEST_METRICS:
        raise InputError(f"best_metric {cfg['best_metric']!r} is not one of {sorted(BEST_METRICS)}")
    if cfg["best_metric"].startswith("ema") and not cfg["model_ema"]:
        raise InputError(f"best_metric {cfg['best_metric']!r} needs model_ema: true")
    if (cfg["mixup"] > 0 or cfg["cutmix"] > 0) and cfg["batch_size"] % 2:
        raise InputError(f"batch_size {cfg['batch_size']} must be even with mixup/cutmix on")
    if cfg["amp_dtype"] not in ("bfloat16", "float16"):
        raise InputError(f"amp_dtype {cfg['amp_dtype']!r} must be bfloat16 or float16")
    if int(cfg["accum_steps"]) < 1:
        raise InputError(f"accum_steps {cfg['accum_steps']} must be >= 1")


@dataclass
class Data:
    """The datasets and loaders of a run."""

    train_set: Any
    val_set: Any
    classes: List[str]
    config: Dict[str, Any]  # input_size, interpolation, mean, std, crop_pct
    train_loader: Any
    val_loader: Any


def build_data(cfg: Dict[str, Any], world: int, rank: int, pin: bool) -> Data:
    """Training and held-out splits with the recipe's transforms, each rank's share in its loader."""
    train_set = data_lib.create_dataset(cfg["data"], "train", cfg["download"], cfg["in_chans"])
    val_set = data_lib.create_dataset(cfg["data"], "val", cfg["download"], cfg["in_chans"])
    classes = data_lib.dataset_classes(train_set)
    data_config = data_config_of(cfg)
    train_set.transform = data_lib.create_transform(cfg, data_config, training=True)
    val_set.transform = data_lib.create_transform(cfg, data_config, training=False)
    if cfg["train_subset"]:
        train_set = data_lib.stratified_subset(train_set, int(cfg["train_subset"]))
    train_loader = data_lib.create_loader(train_set, cfg["batch_size"], True, cfg["workers"], world, rank, cfg["seed"], pin)
    val_loader = data_lib.create_loader(val_set, cfg["val_batch_size"] or 2 * cfg["batch_size"], False,
                                        cfg["workers"], world, rank, cfg["seed"], pin)  # fmt: skip
    if len(train_loader) == 0:
        raise InputError(
            f"{len(train_set)} training images are fewer than one batch of {cfg['batch_size']} per process: "
            "lower --batch-size"
        )
    return Data(train_set, val_set, classes, data_config, train_loader, val_loader)


def build_model(cfg: Dict[str, Any], num_classes: int) -> Tuple[str, nn.Module, Dict[str, Any]]:
    """(model name, model, its constructor kwargs): a new model, or `init_checkpoint`'s weights refitted."""
    model_kwargs = dict(
        num_classes=num_classes, img_size=cfg["img_size"], in_chans=cfg["in_chans"],
        drop_rate=cfg["drop"], drop_path_rate=cfg["drop_path"], **cfg["model_kwargs"],
    )  # fmt: skip
    if str(cfg["model"]).startswith("timm:"):  # a timm baseline: CNNs take any input size
        model_kwargs.pop("img_size")
    if cfg["init_checkpoint"]:  # fine-tuning: a new head and position table where the sizes differ
        model, meta = load_model(cfg["init_checkpoint"], cfg["model"], **model_kwargs)
        return meta["arch"], model, meta["model_kwargs"]
    if cfg["model"] is None:
        raise InputError("no model: pass --model NAME, or --init-checkpoint PATH to start from weights")
    return cfg["model"], create_model(cfg["model"], **model_kwargs), model_kwargs


def train(cfg: Dict[str, Any], resume: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Run (or continue, with `resume` "auto" or a checkpoint path) the training a resolved config describes.

    Returns the last epoch's metrics and the run directory.
    """
    _check_config(cfg)
    rank, world, local_rank = setup_distributed()
    is_main = rank == 0
    device = pick_device(cfg["device"], local_rank)
    random.seed(cfg["seed"] + rank)
    np.random.seed(cfg["seed"] + rank)
    torch.manual_seed(cfg["seed"] + rank)
    pin = device.type == "cuda"
    data = build_data(cfg, world, rank, pin)
    train_loader, val_loader = data.train_loader, data.val_loader
    num_classes = cfg["num_classes"] or len(data.classes)
    arch, model, model_kwargs = build_model(cfg, num_classes)
    model = model.to(device)
    ema = None
    if cfg["model_ema"]:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg["model_ema_decay"])
    global_batch, lr = scaled_lr(cfg, world)
    optimizer = build_optimizer(model, cfg, lr)
    scheduler, total_epochs = build_scheduler(optimizer, cfg, len(train_loader) // cfg["accum_steps"])
    criterion, mixup = build_criterion(cfg, num_classes)
    amp_dtype = getattr(torch, cfg["amp_dtype"]) if cfg["amp"] and device.type == "cuda" else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    train_model = torch.compile(model) if cfg["compile"] else model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(train_model, device_ids=[local_rank] if pin else None)

    # run directory and resume
    run = Run(run_dir_of(cfg), is_main)
    start_epoch, start_step, updates, best = 0, 0, 0, None
    resume_path = _resume_path(run, resume)
    if resume_path is None and run.last.is_file():
        raise InputError(
            f"run directory {str(run.path)!r} already holds a run: pass --resume auto to continue it, or "
            "--name NAME to start another"
        )
    if resume_path is not None:
        state = read_checkpoint(resume_path)
        if not isinstance(state, dict) or "optimizer" not in state:
            raise InputError(f"{str(resume_path)!r} is not a training checkpoint of ours (no optimizer state)")
        head = state["model"].get("head.weight")
        if head is not None and head.shape[0] != num_classes:
            raise InputError(
                f"{str(resume_path)!r} has a {head.shape[0]}-class head but {cfg['data']} has {num_classes} "
                "classes: resume on the same data, or start a fine-tune with --init-checkpoint"
            )
        model.load_state_dict(state["model"])
        if ema is not None and state.get("model_ema") is not None:
            ema.module.load_state_dict(state["model_ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, start_step, updates, best = state["epoch"], state["step_in_epoch"], state["updates"], state["best"]
        set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        _logger.info("resumed from %s at epoch %d, step %d", resume_path, start_epoch, start_step)
    if is_main:
        save_config(cfg, run.path / "config.yaml")
        _logger.info(
            "%s on %s: %d train / %d held-out images, %d classes, %s x %d process(es), global batch %d, lr %.2e",
            arch, cfg["data"], len(data.train_set), len(data.val_set), num_classes, device, world, global_batch, lr,
        )  # fmt: skip

    meta = dict(arch=arch, model_kwargs=model_kwargs, class_names=data.classes, data_config=data.config,
                grid_size=list(unwrap(model).grid_size) if hasattr(unwrap(model), "grid_size") else None)  # fmt: skip
    ctx = StepContext(
        optimizer=optimizer, criterion=criterion, device=device, scheduler=scheduler,
        sched_on_updates=cfg["sched_on_updates"], mixup=mixup, ema=ema, scaler=scaler, amp_dtype=amp_dtype,
        accum_steps=cfg["accum_steps"], clip_grad=cfg["clip_grad"],
    )  # fmt: skip
    last_metrics: Dict[str, Any] = {}
    stop_after = cfg["stop_after_epochs"]
    epochs_this_run = 0

    def checkpoint_state(epoch: int, step_in_epoch: int) -> Dict[str, Any]:
        rngs = [None] * world
        if world > 1:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        return dict(
            model=unwrap(model).state_dict(),
            model_ema=ema.module.state_dict() if ema is not None else None,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict() if scaler is not None else None,
            epoch=epoch, step_in_epoch=step_in_epoch, updates=updates, best=best,
            rng=rngs, config=cfg, meta=meta,
        )  # fmt: skip

    with StopSignal() as stop:
        ctx.should_stop = lambda: stop.received is not None
        for epoch in range(start_epoch, total_epochs):
            if not cfg["sched_on_updates"]:
                scheduler.step(epoch)
            train_loader.sampler.set_epoch(epoch, start=start_step * cfg["batch_size"])
            t0 = time.perf_counter()
            stats = train_one_epoch(train_model, train_loader, ctx, epoch, updates, progress and is_main)
            steps_done = start_step + stats["batches"]
            updates = stats["updates"]
            start_step = 0
            if stats["stopped"] == "nonfinite":
                run.finish()
                raise InputError(
                    f"non-finite loss at epoch {epoch}: the run stopped; the last good checkpoint is "
                    f"{str(run.last)!r}. Lower lr, set clip_grad, or check the data"
                )
            if stats["stopped"] == "signal":
                run.save(checkpoint_state(epoch, steps_done), epoch, False, 0)
                run.finish()
                _logger.warning("stopped by signal at epoch %d step %d; resume with --resume auto", epoch, steps_done)
                return dict(last_metrics, run_dir=str(run.path), stopped="signal")
            val = evaluate(model, val_loader, device, amp_dtype, desc="held-out")
            ema_val = evaluate(ema.module, val_loader, device, amp_dtype, desc="held-out EMA") if ema else {}
            row = dict(
                epoch=epoch + 1, lr=optimizer.param_groups[0]["lr"], train_loss=stats["loss"],
                val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"],
                ema_val_loss=ema_val.get("loss"), ema_val_top1=ema_val.get("top1"), ema_val_top5=ema_val.get("top5"),
                img_per_s=stats["img_per_s"], skipped=stats["skipped"] + val["skipped"],
                epoch_time_s=time.perf_counter() - t0,
            )  # fmt: skip
            kind, key, sign = BEST_METRICS[cfg["best_metric"]]
            value = (val if kind == "val" else ema_val)[key]
            is_best = not math.isnan(value) and (best is None or sign * (value - best["value"]) > 0)
            if is_best:
                best = dict(metric=cfg["best_metric"], value=value, epoch=epoch + 1)
            run.save(checkpoint_state(epoch + 1, 0), epoch + 1, is_best, cfg["checkpoint_every"])
            run.log_epoch(row)
            if is_main:
                _logger.info(_summary(row, total_epochs))
            last_metrics = row
            epochs_this_run += 1
            if stop_after and epochs_this_run >= stop_after and epoch + 1 < total_epochs:
                _logger.info("stop_after_epochs=%d reached; resume with --resume auto", stop_after)
                break
    run.finish()
    return dict(last_metrics, run_dir=str(run.path), best=best)


def _resume_path(run: Run, resume: Optional[str]) -> Optional[Path]:
    if resume is None:
        return None
    if resume == "auto":
        if run.last.is_file():
            return run.last
        _logger.info("--resume auto: no checkpoint in %s yet, starting fresh", run.path)
        return None
    path = Path(resume)
    if not path.is_file():
        raise InputError(f"--resume {resume!r}: no such checkpoint file (or use --resume auto)")
    return path


def _summary(row: Dict[str, Any], total_epochs: int) -> str:
    text = (
        f"epoch {row['epoch']}/{total_epochs}  lr {row['lr']:.2e}  train loss {row['train_loss']:.4f}  "
        f"held-out loss {row['val_loss']:.4f}  top-1 {row['val_top1']:.2f}%  top-5 {row['val_top5']:.2f}%"
    )
    if row["ema_val_top1"] is not None:
        text += f"  EMA top-1 {row['ema_val_top1']:.2f}%"
    return text + f"  {row['img_per_s']:.0f} img/s  skipped {row['skipped']}  {row['epoch_time_s']:.1f} s"


# ----------------------------------------------------------------------------------------------- evaluation


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


# ----------------------------------------------------------------------------------------------- command line


def add_parser(subparsers: Any) -> None:
    """Register `train` and `eval` on the `t2t-vit` command."""
    p = subparsers.add_parser(
        "train",
        help="train a model (the paper's recipe by default)",
        description="Train with DEFAULTS < --config YAML < --key value overrides (any config key, e.g. "
        "--data digits --epochs 30 --batch-size 64 --model-kwargs '{embed_dim: 128}').",
    )
    p.add_argument("--config", help="YAML file, or a name from configs/ (e.g. t2t_vit_14)")
    p.add_argument("--resume", help="'auto' (continue the run directory's last.pth.tar) or a checkpoint path")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal)")
    p.set_defaults(func=_train_command, takes_overrides=True)

    f = subparsers.add_parser(
        "finetune",
        help="fine-tune our or the authors' weights on a dataset (new head, new resolution, backbone lr ratio)",
        description="Fine-tune with DEFAULTS < --config (default: the authors' CIFAR recipe) < --key value "
        "overrides, e.g. --data cifar10:DIR --img-size 384 --backbone-lr-ratio 0.1 --layer-decay 0.75 "
        "--freeze-backbone true.",
    )
    f.add_argument("--checkpoint", required=True, help="weights to start from: ours, or an authors' file with --model")
    f.add_argument("--model", help="model name (only for the authors' files)")
    f.add_argument("--config", default="finetune_cifar", help="YAML file or configs/ name (default: finetune_cifar)")
    f.add_argument("--resume", help="'auto' (continue the run directory's last.pth.tar) or a checkpoint path")
    f.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal)")
    f.set_defaults(func=_train_command, takes_overrides=True)

    e = subparsers.add_parser("eval", help="evaluate a checkpoint: top-1, top-5, loss, img/s")
    e.add_argument("--checkpoint", required=True, help="our checkpoint, or an authors' release file with --model")
    e.add_argument("--data", required=True, help="dataset spec; its held-out split is used")
    e.add_argument("--model", help="model name (only for the authors' files)")
    e.add_argument("--batch-size", type=int, default=128)
    e.add_argument("--workers", type=int, default=4)
    e.add_argument("--device", default="auto")
    e.add_argument("--no-ema", action="store_true", help="the raw weights, not the EMA ones")
    e.add_argument("--download", action="store_true")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_eval_command)


def _train_command(args: argparse.Namespace, overrides: List[str]) -> None:
    cfg = resolve_config(args.config, parse_overrides(overrides))
    if args.command == "finetune":
        cfg["init_checkpoint"] = args.checkpoint
        cfg["model"] = args.model
    result = train(cfg, resume=args.resume, progress=not args.no_progress)
    if "val_top1" in result and int(os.environ.get("RANK", "0")) == 0:
        print(f"held-out top-1: {result['val_top1']:.2f}%  (run directory: {result['run_dir']})")


def _eval_command(args: argparse.Namespace) -> None:
    r = evaluate_checkpoint(args.checkpoint, args.data, args.model, args.batch_size, args.workers,
                            not args.no_ema, args.device, args.download, not args.no_progress)  # fmt: skip
    print(
        f"{r['model']} on {args.data} ({r['n']} images): top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  "
        f"loss {r['loss']:.4f}  {r['img_per_s']:.0f} img/s" + (f"  skipped {r['skipped']}" if r["skipped"] else "")
    )


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m t2t_vit.train ...` (for torchrun): the same arguments as `t2t-vit train`."""
    from .cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
