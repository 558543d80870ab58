"""Held-out evaluation of a saved checkpoint, ours or the authors': `t2t-vit eval`."""

from typing import Any, Dict, Optional

from .. import data as data_lib
from ..data.device_batches import DeviceBatches
from ..device import autocast_dtype, pick_device
from ..errors import InputError
from ..factory import load_model
from .engine import evaluate


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
