"""The config keys: each with its default (the paper's ImageNet recipe for T2T-ViT-14), the rule its values
follow and what it means; which of them a resume may change. `config` reads and checks configs against this table,
`t2t-vit train --help` lists it."""

from typing import Any, Dict, Tuple

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm's IMAGENET_DEFAULT_MEAN/STD, written out: this module loads without torch
IMAGENET_STD = (0.229, 0.224, 0.225)

TASKS = ("classification", "detection", "instance", "segmentation")  # the values of `task`

# Each key: (default, rule, meaning); `check_value` reads the rule. The defaults are the paper's recipe (T2T-ViT-14
# on ImageNet-1k); the package's configs/ hold each training command's overrides. `t2t-vit train --help` lists this
# table.
SCHEMA: Dict[str, Dict[str, Tuple[Any, str, str]]] = {
    "task": {
        "task": (
            "classification",
            "one of " + "|".join(TASKS),
            "what the model learns: classes of images, or on a `model` backbone boxes (detection), boxes and masks "
            "(instance) or a class per pixel (segmentation) from coco:DIR, masks:DIR, canvases[:N] or "
            "fashion-canvases:DIR data",
        ),
        "detector": (
            "fasterrcnn",
            "text",
            "detection: fasterrcnn or retinanet, torchvision's, on the backbone's pyramid (instance: Mask R-CNN)",
        ),
        "feature_pyramid": (
            "t2t",
            "one of t2t|simple",
            "dense tasks: the backbone's four levels, t2t (the T2T module's token images, the last block, its "
            "max-pool: no new weights) or simple (ViTDet's, from the last block)",
        ),
        "detector_min_size": (
            None,
            "? int >= 1",
            "detection, instance: the detector resizes shorter sides to this; null: each image at its own size",
        ),
        "detector_max_size": (1333, "int >= 1", "detection, instance: the detector shrinks longer sides past this"),
        "dense_crop": (
            None,
            "? size",
            "dense tasks: train on a random window this size (or [height, width]) of each image, the whole side "
            "where smaller; batches of small equal windows train faster than whole images padded to the largest "
            "(a multiple of 32, what the default soft splits pad to, pads nothing)",
        ),
        "dense_kwargs": (
            {},
            "mapping",
            "dense tasks: more arguments of the model, e.g. {fpn_channels: 128} or torchvision's detector options "
            "{box_detections_per_img: 50}",
        ),
    },
    "model": {
        "model": (
            "t2t_vit_14",
            "? text",
            "registered model (`t2t-vit models`), or timm:NAME for a timm baseline; a dense task's backbone",
        ),
        "model_kwargs": (
            {},
            "mapping",
            "extra constructor arguments, e.g. {soft_splits: [[3, 2, 1], [3, 2, 1], [3, 1, 1]]}",
        ),
        "img_size": (224, "size", "input size in pixels (dense tasks: the backbone's, resampled to each image's)"),
        "in_chans": (3, "int >= 1", "input channels"),
        "num_classes": (
            None,
            "? int >= 1",
            "classes of the head (detection: the background counted); null: the dataset's class count",
        ),
        "drop": (0.0, "number in [0, 1)", "dropout after the position table and in the MLPs"),
        "drop_path": (0.1, "number in [0, 1)", "stochastic depth rate of the last block (linear in depth)"),
        "init_checkpoint": (None, "? text", "weights to start from: ours, or the authors' (then `model` names it)"),
    },
    "data": {
        "data": (
            None,
            "? text",
            "digits, mnist:DIR, fashion-mnist:DIR, cifar10:DIR, cifar100:DIR, hfds/..., or an "
            "ImageFolder root with train/ and val/; dense tasks: coco:DIR[:JSON], masks:DIR, canvases[:N], "
            "fashion-canvases:DIR",
        ),
        "train_subset": (None, "? int >= 1", "train on N images of the training split (a fixed stratified choice)"),
        "download": (False, "bool", "fetch the dataset where the source can (CIFAR)"),
        "workers": (
            "auto",
            "auto or int >= 0",
            "data loading processes per training process; auto: the cores this "
            "process may use, shared by the processes on its node",
        ),
        "batch_size": (64, "int >= 1", "per process; the global batch is batch_size x processes x accum_steps"),
        "val_batch_size": (None, "? int >= 1", "held-out batch size; null: 2 x batch_size"),
        "mean": (list(IMAGENET_MEAN), "numbers", "normalisation mean per channel"),
        "std": (list(IMAGENET_STD), "numbers", "normalisation std per channel"),
        "interpolation": ("bicubic", "text", "evaluation resize interpolation"),
        "crop_pct": (0.9, "number in (0, 1]", "evaluation centre crop fraction"),
    },
    "augmentation": {
        "train_crop": (
            "random_resized",
            "one of random_resized|pad",
            "random_resized, or pad: resize, padded random crop, flip (CIFAR)",
        ),
        "crop_padding": (28, "int >= 0", "padding of train_crop: pad"),
        "scale": ([0.08, 1.0], "numbers[2]", "random resized crop area range"),
        "ratio": ([0.75, 1.3333333333333333], "numbers[2]", "random resized crop aspect range"),
        "hflip": (0.5, "number in [0, 1]", "horizontal flip probability"),
        "color_jitter": (0.4, "number >= 0", "colour jitter strength"),
        "aa": ("rand-m9-mstd0.5-inc1", "? text", "timm auto-augment policy (RandAugment); null: none"),
        "train_interpolation": ("random", "text", "training resize interpolation"),
        "reprob": (0.25, "number in [0, 1]", "random erasing probability"),
        "remode": ("pixel", "one of pixel|rand|const", "random erasing mode"),
        "recount": (1, "int >= 1", "random erasing count"),
        "mixup": (0.8, "number >= 0", "mixup alpha (0: off)"),
        "cutmix": (1.0, "number >= 0", "cutmix alpha (0: off)"),
        "mixup_prob": (1.0, "number in [0, 1]", "probability of mixing a batch"),
        "mixup_switch_prob": (0.5, "number in [0, 1]", "probability of cutmix instead of mixup"),
        "mixup_mode": ("batch", "one of batch|pair|elem", "batch, pair or elem"),
        "smoothing": (0.1, "number in [0, 1)", "label smoothing"),
    },
    "optimisation": {
        "opt": ("adamw", "text", "optimizer (timm's names: adamw, sgd, lamb, ...)"),
        "opt_eps": (1e-8, "number > 0", "optimizer epsilon (Adam family)"),
        "momentum": (0.9, "number in [0, 1]", "momentum (SGD)"),
        "lr": (
            5e-4,
            "number > 0",
            "learning rate for a global batch of lr_base_batch, scaled linearly to the actual one",
        ),
        "lr_base_batch": (512, "int >= 1", "the global batch `lr` is stated for"),
        "weight_decay": (0.05, "number >= 0", "weight decay (not on norms, biases, class token, positions)"),
        "clip_grad": (None, "? number > 0", "clip the gradient norm to this value; null: off"),
        "accum_steps": (1, "int >= 1", "micro-batches per optimizer update"),
        "backbone_lr_ratio": (
            1.0,
            "number >= 0",
            "lr of everything but the head, relative to the head's (fine-tuning: 0.01)",
        ),
        "layer_decay": (
            None,
            "? number in (0, 1]",
            "layer-wise lr decay: block i of L gets layer_decay ** (L + 1 - i)",
        ),
        "freeze_backbone": (False, "bool", "train the head only (linear probe)"),
        "sched": ("cosine", "text", "lr schedule (timm's names)"),
        "epochs": (300, "int >= 1", "epochs of the schedule; cooldown_epochs follow at min_lr"),
        "schedule_epochs": (
            None,
            "? number > 0",
            "epochs the lr schedule spans when not `epochs` (a fraction too, "
            "e.g. sized to end at a time_budget; min_lr after it); null: epochs",
        ),
        "warmup_epochs": (10, "int >= 0", "linear warmup epochs from warmup_lr"),
        "warmup_lr": (1e-6, "number >= 0", "lr at the start of warmup"),
        "min_lr": (1e-5, "number >= 0", "lr at the end of the schedule and during cooldown"),
        "cooldown_epochs": (10, "int >= 0", "epochs at min_lr after the schedule"),
        "sched_on_updates": (
            False,
            "bool",
            "step the schedule every update (true) or every epoch, as the authors (false)",
        ),
        "model_ema": (True, "bool", "keep an EMA of the weights and evaluate it"),
        "model_ema_decay": (0.99996, "number in [0, 1]", "EMA decay per update"),
        "nonfinite": (
            "stop",
            "one of stop|skip|rollback",
            "on a NaN/inf loss or a loss spike (spike_factor): stop (keeping the state from before the "
            "divergence), skip the update, or roll back to that state at a lower lr",
        ),
        "nonfinite_limit": (10, "int >= 1", "skip/rollback: stop after this many non-finite steps in a row"),
        "rollback_lr_factor": (0.5, "number in (0, 1)", "rollback: multiply the lr by this at each rollback"),
        "rollback_limit": (
            5,
            "int >= 1",
            "rollback: stop (non-zero exit, naming the lrs tried) after this many rollbacks with no healthy "
            "epoch between",
        ),
        "spike_factor": (
            10.0,
            "? number > 1",
            "loss-spike guard: an update's loss over this x the median of the last spike_window (and over the run's "
            "first ones) counts as non-finite for `nonfinite`; a held-out loss over this x the run's best marks "
            "a state as exploded, one a stop or rollback does not return to; null: off",
        ),
        "spike_window": (20, "int >= 2", "loss-spike guard: the losses of this many updates give the running median"),
    },
    "runtime": {
        "device": ("auto", "text", "auto, cpu, cuda or cuda:N"),
        "amp": (True, "bool", "mixed precision on CUDA"),
        "amp_dtype": ("bfloat16", "one of bfloat16|float16", "bfloat16, or float16 (with a GradScaler)"),
        "compile": (False, "bool", "torch.compile the model"),
        "seed": (42, "int >= 0", "seed of every random number generator"),
    },
    "run directory and logs": {
        "output": ("runs", "text", "where run directories go"),
        "name": (None, "? text", "run directory name; null: the config's name, else model-data"),
        "checkpoint_every": (0, "int >= 0", "also keep epoch_N.pth.tar every N epochs (0: only last and best)"),
        "checkpoint_minutes": (
            30.0,
            "? number > 0",
            "also save last.pth.tar within an epoch when this many minutes have passed since the last save, so "
            "that a kill without warning (kill -9, a lost node) loses at most that much; null: at epoch ends only",
        ),
        "eval_every": (
            1,
            "int >= 1",
            "evaluate the held-out split every N epochs, and always at the run's end (the "
            "last epoch, the time budget, stop_after_epochs)",
        ),
        "best_metric": (
            None,
            "? one of top1|ema_top1|loss|ema_loss|map|ema_map|miou|ema_miou",
            "what best.pth.tar keeps: top1, loss (classification), map (detection, instance), miou "
            "(segmentation), each also of the EMA (ema_top1, ...); null: the task's own (top1, map, miou)",
        ),
        "stop_after_epochs": (
            None,
            "? int >= 1",
            "end this process after N epochs (the schedule still spans all), e.g. time limits",
        ),
        "time_budget": (
            None,
            "? number > 0",
            "seconds of training (over all sessions; evaluation and compiling not "
            "counted) after which the run evaluates and ends, mid-epoch if need be",
        ),
        "schedule_on_time": (
            False,
            "bool",
            "with time_budget: the lr schedule follows the training seconds, not the "
            "updates, and ends at the budget at any pace (the lr then depends on it)",
        ),
        "log_interval": (
            50,
            "int >= 0",
            "updates between the host's reads of the device (loss, non-finite flags, a stop "
            "across ranks) and log lines when no progress bar is shown; 0: reads every 50, no lines",
        ),
    },
}
DEFAULTS: Dict[str, Any] = {key: default for keys in SCHEMA.values() for key, (default, _, _) in keys.items()}
RULES: Dict[str, str] = {key: rule for keys in SCHEMA.values() for key, (_, rule, _) in keys.items()}

# Keys a dense task has no use for (its models normalise their [0, 1] input and take no mixed or smoothed labels):
# on a dense task, one set away from its default is an error naming it; at the default it is left alone.
CLASSIFICATION_ONLY = (
    "train_subset mean std interpolation crop_pct train_crop crop_padding scale ratio color_jitter aa "
    "train_interpolation reprob remode recount mixup cutmix mixup_prob mixup_switch_prob mixup_mode smoothing"
).split()

# Keys only a dense task reads: on a classification run, one set away from its default is an error naming it.
DENSE_ONLY = tuple(key for key in SCHEMA["task"] if key != "task")


def unused_keys(task: str) -> Tuple[str, ...]:
    """The keys a run of `task` does not read: set away from their defaults, an error; on resume, free to change."""
    return DENSE_ONLY if task == "classification" else tuple(CLASSIFICATION_ONLY)


# What `--resume` may change (applied: the schedule is rebuilt at the resumed step, the data position kept); any
# other key differing from the checkpoint's config is an error, since the run would no longer be the one it continues.
RESUME_CHANGEABLE = frozenset(
    (
        "epochs schedule_epochs cooldown_epochs warmup_epochs warmup_lr lr lr_base_batch min_lr batch_size "
        "accum_steps val_batch_size workers clip_grad output name checkpoint_every checkpoint_minutes eval_every "
        "best_metric stop_after_epochs time_budget log_interval device amp amp_dtype compile download nonfinite "
        "nonfinite_limit rollback_lr_factor rollback_limit spike_factor spike_window"
    ).split()
)
