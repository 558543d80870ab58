"""What differs between the tasks a run trains: classification (the paper's) and the dense tasks on a T2T-ViT backbone
(detection, instance, segmentation). Per task: the data with its batches on the device, the model with what a
checkpoint records to rebuild it, and the loss of a training step. The rest of a run is the same for all."""

from typing import Any, Callable, Dict, Optional, Tuple

import torch
from timm.layers import to_2tuple
from torch import nn

from .. import data as data_lib
from ..config_keys import TASKS
from ..data.device_batches import DeviceBatches
from ..device import autocast
from ..errors import InputError
from . import setup
from .setup import Data

DENSE_TASKS = TASKS[1:]  # on a T2T-ViT backbone: `t2t_vit.dense`


def build_data(cfg: Dict[str, Any], world: int, rank: int, device: torch.device) -> Data:
    """The run's datasets and this rank's loaders, their batches finished on `device` (`DeviceBatches`)."""
    pin = device.type == "cuda"
    if cfg["task"] == "classification":
        data = setup.build_data(cfg, world, rank, pin)
        erasing = (cfg["reprob"], cfg["remode"], cfg["recount"])
        data.train_loader = DeviceBatches(data.train_loader, device, data.config, erasing, cfg["seed"])
        data.val_loader = DeviceBatches(data.val_loader, device, data.config)
        return data
    data = build_dense_data(cfg, world, rank, pin)
    data.train_loader, data.val_loader = (
        DeviceBatches(data.train_loader, device),
        DeviceBatches(data.val_loader, device),
    )
    return data


def dense_dataset(spec: str, split: str, task: str, in_chans: int) -> Any:
    """A split of a dense `--data` spec as `task` reads it: boxes (detection), boxes and masks (instance), or a class
    per pixel (segmentation)."""
    kind = "segmentation" if task == "segmentation" else "detection"
    return data_lib.create_dense_dataset(spec, split, kind, in_chans, with_masks=task == "instance")


def dense_collate(task: str) -> Callable:
    """Lists of images and target dicts (detection, instance), or images and masks padded to one size (segmentation);
    the models pad further to the multiple their backbone tiles."""
    return data_lib.segmentation_collate if task == "segmentation" else data_lib.detection_collate


def build_dense_data(cfg: Dict[str, Any], world: int, rank: int, pin: bool) -> Data:
    """Training and held-out splits of a dense task's data, each image at its own size (the detector resizes where
    detector_min_size asks), training images cropped to a random `dense_crop` window when given and flipped with
    probability `hflip`."""
    task = cfg["task"]
    train_set = dense_dataset(cfg["data"], "train", task, cfg["in_chans"])
    val_set = dense_dataset(cfg["data"], "val", task, cfg["in_chans"])
    crop = None if cfg["dense_crop"] is None else to_2tuple(cfg["dense_crop"])
    train_set.transform = data_lib.DenseTransform(hflip=cfg["hflip"], crop_size=crop)
    classes = train_set.classes
    if classes is None:  # masks:DIR without classes.txt
        if not cfg["num_classes"]:
            raise InputError(
                f"{cfg['data']} has no classes.txt to count its classes: write the class names there, one a line "
                "(index 0 first), or pass --num-classes N"
            )
        classes = [str(i) for i in range(cfg["num_classes"])]
        train_set.classes = val_set.classes = classes  # mask values past them are ignored and logged, not a crash
    setup.check_class_count(cfg, classes)
    collate, workers = dense_collate(task), setup.loader_workers(cfg["workers"])
    train_loader = data_lib.create_loader(
        train_set, cfg["batch_size"], True, workers, world, rank, cfg["seed"], pin, collate
    )
    val_batch = cfg["val_batch_size"] or 2 * cfg["batch_size"]
    val_loader = data_lib.create_loader(val_set, val_batch, False, workers, world, rank, cfg["seed"], pin, collate)
    setup.check_batches(train_set, train_loader, cfg["batch_size"], cfg["accum_steps"])
    return Data(train_set, val_set, list(classes), setup.data_config_of(cfg), train_loader, val_loader)


def build_model(cfg: Dict[str, Any], data: Data) -> Tuple[nn.Module, Dict[str, Any]]:
    """The task's model (with `init_checkpoint`'s weights when given) and the meta a checkpoint records beside its
    weights, for `load_model`, `t2t-vit eval` and predict to rebuild it: task, arch (the backbone of a dense task),
    model_kwargs (the backbone's), num_classes, class_names, data_config, grid_size and, for a dense task, `dense`
    (the other arguments of `create_dense_model`)."""
    num_classes = cfg["num_classes"] or len(data.classes)
    meta: Dict[str, Any] = dict(task=cfg["task"], num_classes=num_classes, class_names=data.classes)
    meta["data_config"] = data.config
    if cfg["task"] == "classification":
        arch, model, model_kwargs = setup.build_model(cfg, num_classes, data.classes)
        grid = getattr(model, "grid_size", None)
        return model, dict(meta, arch=arch, model_kwargs=model_kwargs, grid_size=list(grid) if grid else None)
    if cfg["model"] is None:
        raise InputError(f"no backbone: pass --model NAME (a T2T-ViT, `t2t-vit models`) for {cfg['task']}")
    backbone_kwargs = dict(
        img_size=cfg["img_size"],
        in_chans=cfg["in_chans"],
        drop_rate=cfg["drop"],
        drop_path_rate=cfg["drop_path"],
        **cfg["model_kwargs"],
    )
    if str(cfg["model"]).startswith("timm:"):  # a CNN baseline: any input size
        backbone_kwargs.pop("img_size")
    dense = dict(pyramid=cfg["feature_pyramid"], **cfg["dense_kwargs"])
    if cfg["task"] != "segmentation":
        dense.update(detector=cfg["detector"], min_size=cfg["detector_min_size"], max_size=cfg["detector_max_size"])
    meta.update(arch=cfg["model"], model_kwargs=backbone_kwargs, grid_size=None, dense=dense)
    return dense_model(meta, cfg["init_checkpoint"]), meta


def dense_model(meta: Dict[str, Any], checkpoint_path: Optional[str] = None) -> nn.Module:
    """The dense model a checkpoint's meta describes, its backbone from `checkpoint_path` when given."""
    from ..dense import create_dense_model

    return create_dense_model(
        meta["task"],
        backbone=meta["arch"],
        num_classes=meta["num_classes"],
        checkpoint_path=checkpoint_path,
        backbone_kwargs=meta["model_kwargs"],
        **meta["dense"],
    )


def classification_loss(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, ctx: Any) -> torch.Tensor:
    """A classification step's loss: the criterion of the logits, the batch mixed first when mixup/cutmix is on."""
    images, targets = images.to(ctx.device, non_blocking=True), targets.to(ctx.device, non_blocking=True)
    if ctx.mixup is not None:
        images, targets = ctx.mixup(images, targets)
    with autocast(ctx.device, ctx.amp_dtype):
        return ctx.criterion(model(images), targets)


def dense_loss(model: nn.Module, images: Any, targets: Any, ctx: Any) -> torch.Tensor:
    """A dense step's loss: the criterion (`setup.sum_of_losses`) of the losses the model returns in training."""
    with autocast(ctx.device, ctx.amp_dtype):
        return ctx.criterion(model(images, targets), targets)
