"""The builders of a run, each from the resolved config: data, model, optimizer with its parameter groups, schedule,
loss with mixup/cutmix; plus the config checks."""

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .. import data as data_lib
from .. import hub
from ..config import ConfigError, check_values
from ..config_keys import DEFAULTS, unused_keys
from ..data import tensor_batches as tensor_data
from ..device import launched_rank
from ..errors import InputError, missing_file
from ..factory import constructor_keywords, create_model, load_model
from ..models.vit import init_weights

_logger = logging.getLogger(__name__)

# what a task's held-out pass measures that best_metric may keep (the first: the default); each also of the EMA
TASK_METRICS = {
    "classification": ("top1", "loss"),
    "detection": ("map",),
    "instance": ("map",),
    "segmentation": ("miou",),
}


def check_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The config with every value checked against its key's rule (and normalised, 1e3 -> 1000 for an int), or an
    InputError for a config no run can start from; before anything is built or written: besides each key's rule,
    mean/std against in_chans and model_kwargs against the model's constructor (a ConfigError naming the keys).
    best_metric null becomes the task's own."""
    cfg = check_values(cfg)
    task = cfg["task"]
    if cfg["data"] is None:
        raise InputError("no data: pass --data (digits, fashion-mnist:DIR, an ImageFolder root, ...)")
    cfg["best_metric"] = cfg["best_metric"] or TASK_METRICS[task][0]
    if cfg["best_metric"].removeprefix("ema_") not in TASK_METRICS[task]:
        measured = ", ".join(f"{m}, ema_{m}" for m in TASK_METRICS[task])
        raise InputError(f"best_metric {cfg['best_metric']!r} is not measured for {task}: use one of {measured}")
    if cfg["best_metric"].startswith("ema") and not cfg["model_ema"]:
        raise InputError(f"best_metric {cfg['best_metric']!r} needs model_ema: true")
    if task == "classification" and (cfg["mixup"] > 0 or cfg["cutmix"] > 0) and cfg["batch_size"] % 2:
        raise InputError(f"batch_size {cfg['batch_size']} must be even with mixup/cutmix on")
    _check_unused(cfg)
    if task != "classification":
        _check_dense(cfg)
    if task == "classification":
        _check_channels(cfg)
        _check_auto_augment(cfg["aa"])
        if cfg["train_crop"] == "pad":
            _warn_unused_by_pad(cfg)
    _check_model_kwargs(cfg)
    _check_opt_and_sched(cfg)
    start = cfg["init_checkpoint"]
    if start and not (_is_file(start) or hub.is_hub_source(start)):  # a file, a hub folder or an hf-hub: name
        raise ConfigError(str(missing_file("checkpoint to start from", start)), ["init_checkpoint"])
    if cfg["schedule_on_time"] and not (cfg["time_budget"] and cfg["sched_on_updates"]):
        raise InputError(
            "schedule_on_time steps the lr by the seconds of a time budget, every update: set "
            "--time-budget SECONDS and --sched-on-updates true, or --schedule-on-time false"
        )
    return cfg


def _is_file(path: str) -> bool:
    """Whether `path` (~ expanded) is a file; False for a name no file can have (a NUL byte, an unknown ~user)."""
    try:
        return Path(path).expanduser().is_file()
    except (ValueError, RuntimeError, OSError):
        return False


def _check_channels(cfg: Dict[str, Any]) -> None:
    """mean and std: one value per input channel, or one for all."""
    for key in ("mean", "std"):
        if len(cfg[key]) not in (1, cfg["in_chans"]):
            example = ", ".join(["0.5"] * cfg["in_chans"])
            raise ConfigError(
                f"{key} {cfg[key]} has {len(cfg[key])} values for {cfg['in_chans']} input channels (in_chans): give "
                f"one per channel, e.g. --{key} '[{example}]', or one for all",
                [key, "in_chans"],
            )


def _check_auto_augment(aa: Optional[str]) -> None:
    """aa: a policy timm's create_transform reads (rand-..., augmix-..., or an AutoAugment name), tried on a small
    training transform; a ConfigError instead of timm's AssertionError when the run builds its loader."""
    if not aa:
        return
    from timm.data import create_transform

    try:
        create_transform(32, is_training=True, auto_augment=aa)
    except (AssertionError, ValueError, KeyError, IndexError) as e:
        raise ConfigError(
            f"aa {aa!r} is not an augmentation policy timm reads ({str(e) or type(e).__name__}): e.g. "
            "rand-m9-mstd0.5-inc1 (the recipe's), rand-m7-n2, augmix-m5-w4-d2, v0 or original; null for none",
            ["aa"],
        ) from None


# constructor keywords the run sets from config keys, which model_kwargs may not set again
SET_BY_KEYS = dict(num_classes="num_classes", img_size="img_size", in_chans="in_chans", drop_rate="drop")
SET_BY_KEYS.update(drop_path_rate="drop_path")
# what timm.create_model takes besides the model's constructor keywords
TIMM_KEYWORDS = ("pretrained_cfg", "pretrained_cfg_overlay", "features_only", "out_indices", "output_stride")


def _check_model_kwargs(cfg: Dict[str, Any]) -> None:
    """model_kwargs: keywords the model's constructor takes (read from its signature), none a config key sets."""
    if cfg["model"] is None:
        return
    kwargs = cfg["model_kwargs"]
    for keyword, key in SET_BY_KEYS.items():
        if keyword in kwargs:
            raise ConfigError(
                f"model_kwargs sets {keyword}, which config key {key} sets: use --{key.replace('_', '-')} instead",
                ["model_kwargs"],
            )
    accepted = constructor_keywords(cfg["model"])
    if accepted is None:  # not a registered model (create_model names it), or keywords that cannot be read
        return
    unknown = [k for k in kwargs if k not in accepted and k not in TIMM_KEYWORDS]
    if unknown:
        import difflib

        def hinted(keyword: str) -> str:
            close = difflib.get_close_matches(str(keyword), accepted, n=1)
            return f"{keyword} (did you mean {close[0]}?)" if close else str(keyword)

        own = ", ".join(k for k in accepted if k not in SET_BY_KEYS)
        drop = ", ".join(f"{k}: null" for k in unknown)
        raise ConfigError(
            f"model_kwargs {', '.join(map(hinted, unknown))}: not a keyword of {cfg['model']}, which takes {own}; "
            f"drop them with --model-kwargs '{{{drop}}}'",
            ["model", *(f"model_kwargs.{k}" for k in unknown)],
        )


def _check_opt_and_sched(cfg: Dict[str, Any]) -> None:
    """opt and sched name an optimizer and a schedule timm builds (ConfigErrors naming them)."""
    from timm.optim import list_optimizers
    from timm.scheduler import create_scheduler_v2

    if cfg["opt"].lower().removeprefix("lookahead_") not in list_optimizers():
        raise ConfigError(
            f"opt {cfg['opt']!r} is not an optimizer timm knows: e.g. adamw, sgd, lamb, lookahead_adamw "
            "(timm.optim.list_optimizers() lists them)",
            ["opt"],
        )
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        create_scheduler_v2(probe, sched=cfg["sched"], num_epochs=1, updates_per_epoch=1)
    except ValueError:
        raise ConfigError(
            f"sched {cfg['sched']!r} is not a schedule timm knows: e.g. cosine, step, multistep, poly, plateau, "
            "constant",
            ["sched"],
        ) from None


def _warn(message: str, *args: Any) -> None:
    """A warning about the config, which every torchrun rank would repeat: logged by rank 0 only."""
    if launched_rank() == 0:
        _logger.warning(message, *args)


def _warn_unused_by_pad(cfg: Dict[str, Any]) -> None:
    """A warning naming the augmentation keys that train_crop pad does not apply, where they would do something
    (aa, color_jitter) or were moved from their defaults (the random resized crop's scale, ratio, interpolation)."""
    unused = [key for key in ("aa", "color_jitter") if cfg[key]]
    unused += [key for key in ("scale", "ratio", "train_interpolation") if cfg[key] != DEFAULTS[key]]
    if unused:
        _warn(
            "%s: not applied with train_crop pad (resize, padded random crop, flip: the authors' CIFAR fine-tuning); "
            "pass --train-crop random_resized to apply them",
            ", ".join(unused),
        )


def _check_unused(cfg: Dict[str, Any]) -> None:
    """An InputError naming the keys the run's task has no use for (`unused_keys`) set away from their defaults."""
    task = cfg["task"]
    moved = [key for key in unused_keys(task) if cfg[key] != DEFAULTS[key]]
    if moved:
        given = ", ".join(f"{key} {cfg[key]!r}" for key in moved)
        kind, fix = (
            ("dense-task keys", ", or pass --task detection|instance|segmentation")
            if task == "classification"
            else ("classification keys", "")
        )
        raise InputError(
            f"{task} has no use for the {kind} it was given ({given}): remove them from the command line or config{fix}"
        )


def _check_dense(cfg: Dict[str, Any]) -> None:
    """A dense task's keys: a detector that exists (instance: Mask R-CNN's), no detector option a config key sets."""
    from ..dense.detectors import DETECTORS

    task = cfg["task"]
    if cfg["detector"] not in DETECTORS:
        raise InputError(f"detector {cfg['detector']!r} is not one of {', '.join(DETECTORS)}")
    named = {"min_size", "max_size", "pyramid", "detector", "backbone_kwargs"} & set(cfg["dense_kwargs"])
    if named:
        raise InputError(f"dense_kwargs {', '.join(sorted(named))}: set by config keys (detector_min_size, ...)")
    if task == "instance" and cfg["detector"] != "fasterrcnn":
        raise InputError(f"instance is Mask R-CNN, a fasterrcnn with masks: drop --detector {cfg['detector']}")


def data_config_of(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The evaluation preprocessing a checkpoint stores (timm's data config keys)."""
    size = cfg["img_size"] if isinstance(cfg["img_size"], (list, tuple)) else (cfg["img_size"], cfg["img_size"])
    return dict(
        input_size=[cfg["in_chans"], *size],
        interpolation=cfg["interpolation"],
        mean=list(cfg["mean"]),
        std=list(cfg["std"]),
        crop_pct=cfg["crop_pct"],
    )


def scaled_lr(cfg: Dict[str, Any], world: int) -> Tuple[int, float]:
    """(global batch, lr): cfg lr is stated for a global batch of lr_base_batch and scaled linearly."""
    global_batch = cfg["batch_size"] * world * cfg["accum_steps"]
    return global_batch, cfg["lr"] * global_batch / cfg["lr_base_batch"]


def param_groups(model: nn.Module, cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Parameter groups: no weight decay on norms, biases, the class token and the position table (fixed tensors
    are left out); lr_scale = backbone_lr_ratio off the head, times layer_decay ** depth-from-top if set. A dense
    model's neck and heads, the parameters `backbone_parameter_name` places outside its T2T-ViT, count as the head.

    With freeze_backbone only the head trains (the rest stops requiring gradients).
    """
    classifier = (
        model.get_classifier() if cfg["task"] == "classification" and hasattr(model, "get_classifier") else None
    )
    in_head = {id(p) for p in classifier.parameters()} if isinstance(classifier, nn.Module) else set()
    inner = {  # None: the head (a timm baseline's too, a ResNet's fc)
        name: None if id(p) in in_head else _backbone_name(cfg["task"], name) for name, p in model.named_parameters()
    }
    skip = no_weight_decay(model)
    block_of = {n: int(m.group(1)) for n, b in inner.items() if b and (m := re.match(r"blocks\.(\d+)\.", b))}
    top = max(block_of.values(), default=-1) + 2  # layers: 0 the stem (T2T module, tokens), then blocks, then norm

    def layer_of(name: str) -> int:
        if name in block_of:
            return block_of[name] + 1
        return 0 if (inner[name] or "").split(".")[0] in ("cls_token", "pos_embed", "tokens_to_token") else top

    groups: Dict[Tuple[float, float], Dict[str, Any]] = {}
    for name, p in model.named_parameters():
        head = inner[name] is None
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


def _backbone_name(task: str, name: str) -> Optional[str]:
    """A parameter's name inside the T2T-ViT (the classifier: itself), or None for the head (a dense model's neck and
    heads)."""
    if task == "classification":
        return None if name.startswith("head.") else name
    from ..dense import backbone_parameter_name

    return backbone_parameter_name(name)


def no_weight_decay(model: nn.Module) -> set:
    """The full names of the parameters that `no_weight_decay()` of the model or of a module inside it names (timm's
    convention: a dense model's T2T-ViT names its class token and position table)."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if hasattr(module, "no_weight_decay")
        for name in module.no_weight_decay()
    }


FUSED = ("adamw", "adam", "sgd", "momentum")  # torch's optimizers that drop an update on the device (found_inf)


def build_optimizer(model: nn.Module, cfg: Dict[str, Any], lr: float) -> torch.optim.Optimizer:
    """AdamW (or cfg opt, e.g. sgd) over `param_groups`; fused where torch has it, so that a non-finite update is
    dropped without the host reading the device."""
    from timm.optim import create_optimizer_v2

    adam_like = cfg["opt"] in ("adamw", "adam", "lamb")
    kwargs: Dict[str, Any] = dict(eps=cfg["opt_eps"]) if adam_like else dict(momentum=cfg["momentum"])
    if cfg["opt"] in FUSED:
        kwargs["fused"] = True
    return create_optimizer_v2(param_groups(model, cfg), opt=cfg["opt"], lr=lr, weight_decay=0.0, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Dict[str, Any], updates_per_epoch: int) -> Tuple[Any, int]:
    """The cosine schedule with warmup from warmup_lr and cooldown at min_lr, spanning `schedule_epochs` where set
    (then min_lr until `epochs` end); returns it and the epochs to train (epochs + cooldown_epochs)."""
    from timm.scheduler import create_scheduler_v2

    span = cfg["schedule_epochs"] or cfg["epochs"]
    if cfg["warmup_epochs"] >= span:
        _warn(
            "warmup_epochs %s is not below %s %s: the lr warms up from warmup_lr all the way and never reaches lr; "
            "pass --warmup-epochs below %s",
            cfg["warmup_epochs"],
            "schedule_epochs" if cfg["schedule_epochs"] else "epochs",
            span,
            span,
        )
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg["sched"],
        num_epochs=span,
        warmup_epochs=cfg["warmup_epochs"],
        warmup_lr=cfg["warmup_lr"],
        min_lr=cfg["min_lr"],
        cooldown_epochs=cfg["cooldown_epochs"],
        step_on_epochs=not cfg["sched_on_updates"],
        updates_per_epoch=updates_per_epoch,
    )
    return scheduler, cfg["epochs"] + cfg["cooldown_epochs"]


def build_criterion(cfg: Dict[str, Any], num_classes: int) -> Tuple[Callable, Any]:
    """The training loss and the mixup/cutmix function (None when off); label smoothing lives in either. A dense
    task's loss is the sum of the losses its model returns."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if cfg["task"] != "classification":
        return sum_of_losses, None
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


def sum_of_losses(losses: Dict[str, torch.Tensor], targets: Any) -> torch.Tensor:
    """A dense model's training losses (classifier, box regression, objectness, mask, ...) summed, as torchvision's
    references train them."""
    return torch.stack([loss.float() for loss in losses.values()]).sum()


@dataclass
class Data:
    """The datasets and loaders of a run."""

    train_set: Any
    val_set: Any
    classes: List[str]
    config: Dict[str, Any]  # input_size, interpolation, mean, std, crop_pct
    train_loader: Any
    val_loader: Any


def check_class_count(cfg: Dict[str, Any], classes: Sequence[str]) -> None:
    """A ConfigError where num_classes leaves out some of the data's classes (a dense task's background counted):
    their targets would fall outside the head."""
    if cfg["num_classes"] and cfg["num_classes"] < len(classes):
        raise ConfigError(
            f"num_classes {cfg['num_classes']} is fewer than the {len(classes)} classes of {cfg['data']}: pass "
            f"--num-classes {len(classes)}, or leave num_classes null for the data's count",
            ["num_classes", "data"],
        )


def build_data(cfg: Dict[str, Any], world: int, rank: int, pin: bool) -> Data:
    """Training and held-out splits with the recipe's transforms, each rank's share in its loader: uint8 images (or
    the in-memory path's normalised floats), which `device_batches.DeviceBatches` finishes on the device."""
    train_set = data_lib.create_dataset(cfg["data"], "train", cfg["download"], cfg["in_chans"])
    val_set = data_lib.create_dataset(cfg["data"], "val", cfg["download"], cfg["in_chans"])
    classes = data_lib.dataset_classes(train_set)
    if len(classes) < 2:  # softmax over one class: the loss is 0 and nothing is learned
        raise InputError(
            f"--data {cfg['data']!r}: the training split has one class ({classes[0] if classes else 'none'}), and a "
            "classifier needs two or more: its train/ and val/ each hold one sub-folder of images per class"
        )
    data_lib.align_classes(val_set, classes, cfg["data"], "the training split", warn=rank == 0)
    check_class_count(cfg, classes)
    data_config = data_config_of(cfg)
    train_set.transform = data_lib.create_transform(cfg, data_config, training=True, uint8=True)
    val_set.transform = data_lib.create_transform(cfg, data_config, training=False, uint8=True)
    if cfg["train_subset"]:
        train_set = data_lib.stratified_subset(train_set, int(cfg["train_subset"]))
    workers = loader_workers(cfg["workers"])
    if tensor_data.supports(cfg, train_set):  # crop and flip of in-memory images: a batch at a time, no PIL
        train_loader: Any = tensor_data.TensorBatches(train_set, cfg, data_config, world, rank)
    else:
        train_loader = data_lib.create_loader(
            train_set, cfg["batch_size"], True, workers, world, rank, cfg["seed"], pin
        )
    val_loader = data_lib.create_loader(
        val_set, cfg["val_batch_size"] or 2 * cfg["batch_size"], False, workers, world, rank, cfg["seed"], pin
    )
    check_batches(train_set, train_loader, cfg["batch_size"], cfg["accum_steps"])
    return Data(train_set, val_set, classes, data_config, train_loader, val_loader)


def check_batches(train_set: Any, train_loader: Any, batch_size: int, accum_steps: int = 1) -> None:
    """InputError if the training split gives this process no batch, or no update of accum_steps batches."""
    if len(train_loader) == 0:
        raise InputError(
            f"{len(train_set)} training images are fewer than one batch of {batch_size} per process: lower --batch-size"
        )
    if len(train_loader) < accum_steps:
        raise InputError(
            f"accum_steps {accum_steps} is more than the {len(train_loader)} batches of {batch_size} an epoch gives "
            f"this process: an update needs accum_steps batches; pass --accum-steps {len(train_loader)} or fewer"
        )


def loader_workers(workers: Any) -> int:
    """The loader processes `workers` asks for; "auto": the cores this process may use, divided among the
    training processes on its node (torchrun's LOCAL_WORLD_SIZE)."""
    if workers != "auto":
        return int(workers)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 0)


def build_model(
    cfg: Dict[str, Any], num_classes: int, classes: Optional[Sequence[str]] = None
) -> Tuple[str, nn.Module, Dict[str, Any]]:
    """(model name, model, its constructor kwargs): a new model, or `init_checkpoint`'s weights refitted; a head it
    keeps has its rows in the order of the data's `classes` (`keep_head_classes`)."""
    model_kwargs = dict(
        num_classes=num_classes,
        img_size=cfg["img_size"],
        in_chans=cfg["in_chans"],
        drop_rate=cfg["drop"],
        drop_path_rate=cfg["drop_path"],
        **cfg["model_kwargs"],
    )
    if str(cfg["model"]).startswith("timm:") and "img_size" not in (constructor_keywords(cfg["model"]) or []):
        model_kwargs.pop("img_size")  # a timm baseline without one: CNNs take any input size
    if cfg["init_checkpoint"] is None and cfg["model"] is None:
        raise InputError("no model: pass --model NAME, or --init-checkpoint PATH to start from weights")
    sizes = ["model", "model_kwargs", "img_size", "in_chans"]
    try:
        if cfg["init_checkpoint"]:  # fine-tuning: a new head and position table where the sizes differ
            model, meta = load_model(cfg["init_checkpoint"], cfg["model"], **model_kwargs)
            if classes is not None:
                keep_head_classes(model, cfg["init_checkpoint"], classes, cfg["data"])
            return meta["arch"], model, meta["model_kwargs"]
        return cfg["model"], create_model(cfg["model"], **model_kwargs), model_kwargs
    except ConfigError:
        raise
    except InputError as e:  # a size the model cannot take, or a checkpoint it does not fit
        raise ConfigError(str(e), ["init_checkpoint", *sizes] if cfg["init_checkpoint"] else sizes) from None


def meta_names(saved: Any) -> Optional[List[str]]:
    """The class names a checkpoint of ours stores with its weights (None for the authors' files)."""
    meta = saved.get("meta") if isinstance(saved, dict) else None
    names = meta.get("class_names") if isinstance(meta, dict) else None
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else None


def _few(names: Sequence[str], most: int = 4) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return f"[{shown}{f' and {len(names) - most} more' if len(names) > most else ''}]"


def class_order(
    saved: Optional[Sequence[str]], data: Sequence[str], source: str, data_name: str
) -> Optional[List[int]]:
    """How the data's classes map to a checkpoint's head: None where the names agree (or the checkpoint stores
    none); where they are the same names in another order, `order` with data class i the head's row order[i];
    InputError, listing a few of each, where they are other names."""
    data = [str(c) for c in data]
    if saved is None or list(saved) == data or len(saved) != len(data):  # a count that differs is checked apart
        return None
    if sorted(saved) == sorted(data) and len(set(data)) == len(data):
        return [list(saved).index(c) for c in data]
    theirs = [c for c in saved if c not in data]
    ours = [c for c in data if c not in saved]
    raise InputError(
        f"{source} was trained on classes {_few(theirs)} that {data_name} lacks, and {data_name} has {_few(ours)} it "
        "was not: give the data its class names (e.g. rename the class folders) or fine-tune it (t2t-vit finetune)"
    )


def keep_head_classes(model: nn.Module, checkpoint: str, classes: Sequence[str], data: str) -> None:
    """Where `model` keeps `checkpoint`'s head (as many classes as the data's), fit it to the data's class names:
    rows reordered where the names are the same in another order; a new head, as one for another class count is,
    where they are other names (digits to Fashion-MNIST: 10 classes each)."""
    from ..checkpoint import peek_checkpoint

    head = model.get_classifier()
    if getattr(head, "out_features", None) != len(classes):
        return  # a new head: nothing of the checkpoint's classes is kept
    saved = meta_names(peek_checkpoint(checkpoint))
    heads = [m for m in (head, getattr(model, "head_dist", None), getattr(model, "aux_head", None)) if m is not None]
    heads = [m for m in heads if isinstance(m, nn.Linear)]
    data_classes = [str(c) for c in classes]
    if saved is not None and len(saved) == len(data_classes) and sorted(saved) != sorted(data_classes):
        _logger.warning(
            "%r was trained on classes %s, %s has %s: its head starts anew for them, the rest of its weights are kept",
            checkpoint,
            _few(saved),
            data,
            _few(data_classes),
        )
        for layer in heads:
            layer.apply(init_weights)  # as the model initialises a head
        return
    order = class_order(saved, classes, repr(checkpoint), str(data))
    if order is None:
        return
    rows = torch.tensor(order)
    with torch.no_grad():
        for layer in heads:
            layer.weight.copy_(layer.weight[rows])
            if layer.bias is not None:
                layer.bias.copy_(layer.bias[rows])


def compiled(model: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile(model); on a CPU with no C++ compiler for inductor's kernels, the model itself and a warning
    naming the fix: the run goes on without compile instead of failing at its first step."""
    if device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler
            from torch._inductor.exc import InvalidCxxCompiler
        except ImportError:  # another torch: let it try
            return torch.compile(model)
        try:
            get_cpp_compiler()
        except InvalidCxxCompiler:
            _logger.warning(
                "compile: true needs a C++ compiler on the CPU (g++, or the one $CXX names) and none "
                "runs here: training without torch.compile, slower; install g++ or pass --compile false"
            )
            return model
    return torch.compile(model)


def build_ema(cfg: Dict[str, Any], model: nn.Module) -> Optional[nn.Module]:
    """timm's EMA of the weights (updated after every optimizer update), or None when model_ema is off."""
    if not cfg["model_ema"]:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg["model_ema_decay"])
