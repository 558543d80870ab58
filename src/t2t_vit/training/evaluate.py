"""Held-out evaluation: one pass over a loader (each epoch's), and a saved checkpoint, ours or the authors'
(`t2t-vit eval`)."""

import math
import time
from typing import Any, Dict, Optional

import torch
from torch import nn
from tqdm import tqdm

from .. import data as data_lib
from ..data.device_batches import DeviceBatches
from ..device import autocast, autocast_dtype, pick_device
from ..errors import InputError
from ..factory import load_model
from .process import all_reduce


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    progress: bool = False,
    desc: str = "eval",
) -> Dict[str, float]:
    """Top-1, top-5 (%), cross-entropy loss and img/s over `loader`, summed over all ranks."""
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
) -> Dict[str, Any]:
    """Top-1, top-5, loss and img/s of a checkpoint (ours, or the authors' with `model_name`) on a dataset's
    held-out split, with the checkpoint's preprocessing (the release's: crop 0.9, bicubic, ImageNet mean/std), under
    `precision`'s autocast ("auto": as training evaluates, bf16 on CUDA, fp32 on the CPU)."""
    dev = pick_device(device)
    amp_dtype = autocast_dtype(precision, dev)
    model, meta = load_model(checkpoint, model_name, use_ema=use_ema)
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
    val_set.transform = data_lib.create_transform({}, data_config, training=False, uint8=True)
    loader = DeviceBatches(
        data_lib.create_loader(val_set, batch_size, False, workers, pin_memory=dev.type == "cuda"), dev, data_config
    )
    return dict(evaluate(model.to(dev), loader, dev, amp_dtype, progress=progress), model=meta["arch"])
