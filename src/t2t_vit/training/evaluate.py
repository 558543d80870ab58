"""Held-out evaluation: one pass over a loader (each epoch's), and a saved checkpoint, ours or the authors'
(`t2t-vit eval`); a checkpoint's task checked and its dense model rebuilt (`t2t-vit predict` too)."""

import math
import time
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

from .. import data as data_lib
from ..checkpoint import extract_state_dict, peek_checkpoint
from ..data.device_batches import DeviceBatches
from ..device import autocast, autocast_dtype, precision_name
from ..errors import InputError
from ..factory import load_model
from .process import all_reduce, gather, setup_distributed, world_size
from .setup import class_order, meta_names
from .tasks import dense_collate, dense_dataset, dense_model


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    progress: bool = False,
    desc: str = "eval",
    task: str = "classification",
    num_classes: int = 0,
) -> Dict[str, float]:
    """Top-1, top-5 (%), cross-entropy loss and img/s over `loader`, summed over all ranks; for a dense task what
    `evaluate_dense` measures."""
    if task != "classification":
        return evaluate_dense(model, loader, device, task, num_classes, amp_dtype, progress, desc)
    model.eval()
    sums = torch.zeros(5, device=device)  # loss x n, top-1 hits, top-5 hits, n, skipped
    criterion = nn.CrossEntropyLoss(reduction="sum")
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=None if progress else True, leave=False, dynamic_ncols=True)
    for images, targets, counts in bar:
        sums[4] += counts[0]
        if len(images) == 0:
            continue
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == targets[:, None]
        sums[0] += criterion(logits, targets)
        sums[1] += hits[:, 0].sum()
        sums[2] += hits.any(dim=1).sum()
        sums[3] += len(targets)
    elapsed = time.perf_counter() - start
    sums = all_reduce(sums)
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


@torch.no_grad()
def evaluate_dense(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    task: str,
    num_classes: int,
    amp_dtype: Optional[torch.dtype] = None,
    progress: bool = False,
    desc: str = "eval",
) -> Dict[str, float]:
    """COCO's box mAP, AP50 and AP75 (detection, instance; and instance the masks' as mask_map, ...) or mIoU and pixel
    accuracy (segmentation), in %, and img/s over `loader`, the metrics' states merged over all ranks."""
    from ..dense.metrics import CocoMeanAP, SegmentationScores

    def new_metric() -> Any:
        return SegmentationScores(num_classes) if task == "segmentation" else CocoMeanAP(masks=task == "instance")

    model.eval()
    metric, n, skipped = new_metric(), 0, 0
    start = time.perf_counter()
    for images, targets, counts in tqdm(loader, desc=desc, disable=None if progress else True, leave=False):
        skipped += counts[0]
        if len(images) == 0:
            continue
        with autocast(device, amp_dtype):
            out = model(images)
        metric.update(_fp32(out), targets)
        n += len(images)
    elapsed = time.perf_counter() - start
    world = world_size()
    merged = new_metric()
    for state in gather(metric.state(), world):
        merged.merge(state)
    total = all_reduce(torch.tensor([float(n), float(skipped)], device=device))
    scores = {key: 100.0 * value for key, value in merged.compute().items()}
    n = int(total[0].item())
    return dict(scores, img_per_s=n / max(elapsed, 1e-9), n=n, skipped=int(total[1].item()))


def _fp32(out: Any) -> Any:
    """A model's output (logits, or a list of prediction dicts) with its floating-point tensors in fp32."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, list):
        return [_fp32(o) for o in out]
    return {k: _fp32(v) for k, v in out.items()} if isinstance(out, dict) else out


class _Reordered(nn.Module):
    """A classifier whose logits come in the data's class order (`order`: data class i is the model's order[i])."""

    def __init__(self, model: nn.Module, order: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("order", torch.tensor(list(order)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).index_select(1, self.order)


def checked_task(checkpoint: str, meta: Optional[Dict[str, Any]], task: Optional[str] = None) -> str:
    """The task a checkpoint's `meta` records (classification where it records none, as the authors' files); an
    InputError when `task` is given and is another."""
    saved_task = (meta or {}).get("task", "classification")
    if task is not None and task != saved_task:
        raise InputError(
            f"{checkpoint!r} holds a {saved_task} model, not {task}: drop --task or pass --task {saved_task}"
        )
    return saved_task


def dense_checkpoint_model(
    checkpoint: str, saved: Dict[str, Any], model_name: Optional[str] = None, use_ema: bool = True
) -> nn.Module:
    """The dense model of a checkpoint of ours (`saved`, as `read_checkpoint` returns it) rebuilt from its meta, with
    its EMA weights (`use_ema`) or raw ones; `model_name`, when given, must be its backbone."""
    meta = saved["meta"]
    if model_name is not None and model_name != meta["arch"]:
        raise InputError(f"{checkpoint!r} holds a {meta['arch']} backbone, not a {model_name}: drop --model")
    model = dense_model(meta)
    model.load_state_dict(extract_state_dict(saved, use_ema, source=f"checkpoint {checkpoint!r}"))
    return model


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
    precision: str = "auto",
    task: Optional[str] = None,
) -> Dict[str, Any]:
    """Top-1, top-5, loss and img/s of a checkpoint (ours, or the authors' with `model_name`) on a dataset's
    held-out split, with the checkpoint's preprocessing (the release's: crop 0.9, bicubic, ImageNet mean/std), under
    `precision`'s autocast ("auto": as training evaluates, bf16 on CUDA, fp32 on the CPU). A dense checkpoint of
    ours gives what `evaluate_dense` measures; its task is the one it records (`task`, when given, must be it).
    Under torchrun each process scores its share of the images and every one returns the totals."""
    rank, world, dev = setup_distributed(device)
    progress = progress and rank == 0
    amp_dtype = autocast_dtype(precision, dev)
    ran = f"torch {dev.type} {precision_name(amp_dtype)}"  # what scored it, as the runtimes say theirs
    if str(checkpoint).lower().endswith(".onnx"):
        raise InputError(
            f"{str(checkpoint)!r} is an ONNX file, which PyTorch cannot run: use --runtime onnxruntime or "
            "--runtime openvino, or the PyTorch checkpoint it was exported from"
        )
    saved = peek_checkpoint(checkpoint)  # the classifier's weights are read once, by load_model
    meta = saved.get("meta") if isinstance(saved, dict) else None
    saved_task = checked_task(checkpoint, meta, task)
    if saved_task != "classification":
        model = dense_checkpoint_model(checkpoint, saved, model_name, use_ema)
        val_set = dense_dataset(data, "val", saved_task, meta["data_config"]["input_size"][0])
        if saved_task != "segmentation" and len(val_set.classes) != meta["num_classes"]:
            raise InputError(
                f"the checkpoint's detector has {meta['num_classes']} classes (the background counted) but {data} has "
                f"{len(val_set.classes)}: evaluate on the data it was trained on"
            )
        loader = data_lib.create_loader(
            val_set,
            batch_size,
            False,
            workers,
            world,
            rank,
            pin_memory=dev.type == "cuda",
            collate_fn=dense_collate(saved_task),
        )
        with data_lib.workers_closed(loader):
            scores = evaluate_dense(
                model.to(dev), DeviceBatches(loader, dev), dev, saved_task, meta["num_classes"], amp_dtype, progress
            )
        return dict(scores, model=meta["arch"], task=saved_task, ran=ran)
    model, meta = load_model(checkpoint, model_name, use_ema=use_ema)
    data_config = meta["data_config"]
    val_set = data_lib.create_dataset(data, "val", download, data_config["input_size"][0])
    classes = data_lib.dataset_classes(val_set)
    num_classes = getattr(model.get_classifier(), "out_features", 0)
    imagenet = data_lib.imagenet_rows(num_classes, meta_names(saved), classes, str(data))
    names = imagenet or meta_names(saved)
    if names and hasattr(val_set, "samples") and set(map(str, classes)) < set(names):  # val/ lacks some classes
        data_lib.align_classes(val_set, names, str(data), f"the checkpoint {str(checkpoint)!r}", warn=not imagenet)
        classes = names
    if num_classes != len(classes):
        raise InputError(
            f"the checkpoint's head has {num_classes} classes but {data} has {len(classes)}: evaluate on the "
            "data it was trained on, or fine-tune it first (t2t-vit finetune)"
        )
    order = class_order(names, classes, repr(checkpoint), str(data))
    if order is not None:
        model = _Reordered(model, order)
    val_set.transform = data_lib.create_transform({}, data_config, training=False, uint8=True)
    loader = DeviceBatches(
        data_lib.create_loader(val_set, batch_size, False, workers, world, rank, pin_memory=dev.type == "cuda"),
        dev,
        data_config,
    )
    with data_lib.workers_closed(loader):
        scores = evaluate(model.to(dev), loader, dev, amp_dtype, progress=progress)
    return dict(scores, model=meta["arch"], task=saved_task, ran=ran)
