"""Which one bounds a run: the input path alone (loader, transfer, normalise, erasing) against the model's training
step alone, for the same recipe on the same device."""

import time
from typing import Any, Dict

import torch

from ..data import workers_closed
from ..data.device_batches import DeviceBatches
from ..device import pick_device
from ..training.setup import build_data
from .benchmark import BenchConfig, benchmark


def input_speed(cfg: Dict[str, Any], batches: int = 30, warmup: int = 3) -> Dict[str, Any]:
    """Images per second of the recipe's training input path, through as many epochs as `batches` needs. The clock
    starts after `warmup` batches, and at least a batch per worker: the workers' first batches are ready at once."""
    device = pick_device(cfg["device"])
    data = build_data(cfg, 1, 0, device.type == "cuda")
    workers = getattr(data.train_loader, "num_workers", 0)
    loader = DeviceBatches(
        data.train_loader, device, data.config, (cfg["reprob"], cfg["remode"], cfg["recount"]), cfg["seed"]
    )

    def drawn():
        epoch = 0
        while True:
            loader.sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    it, images = drawn(), 0
    with workers_closed(data.train_loader):
        for _ in range(max(warmup, workers)):
            next(it)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(batches):
            images += len(next(it)[0])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        it.close()
    return dict(
        img_per_s=images / seconds,
        batches=batches,
        path=type(data.train_loader).__name__,
        workers=workers,
        batches_per_epoch=len(data.train_loader),
        train_images=len(data.train_set),
        classes=len(data.classes),
    )


def input_and_model(cfg: Dict[str, Any], batches: int = 30, repeats: int = 5) -> Dict[str, Any]:
    """`input_speed` beside the recipe's model timed alone (forward, backward, AdamW on fixed data)."""
    loader = input_speed(cfg, batches)
    device = pick_device(cfg["device"])
    kwargs = dict(cfg["model_kwargs"], num_classes=cfg["num_classes"] or loader["classes"], in_chans=cfg["in_chans"])
    amp = cfg["amp"] and device.type == "cuda"
    bench = BenchConfig(
        model=cfg["model"],
        mode="train",
        device=str(device),
        dtype={"bfloat16": "bf16", "float16": "fp16"}[cfg["amp_dtype"]] if amp else "fp32",
        batch_size=cfg["batch_size"],
        img_size=cfg["img_size"],
        repeats=repeats,
        model_kwargs=kwargs,
    )
    model = benchmark(bench, memory=False)["results"]["sdpa"]
    bound = "input" if loader["img_per_s"] < model["img_per_s"] else "model"
    return dict(
        data=cfg["data"],
        model=cfg["model"],
        batch_size=cfg["batch_size"],
        input=loader,
        model_img_per_s=model["img_per_s"],
        bound_by=bound,
    )


def format_input_and_model(res: Dict[str, Any]) -> str:
    """Two lines and the verdict; a note where the dataset is too small for its workers to be measured busy."""
    inp = res["input"]
    text = (
        f"{res['data']}, batch {res['batch_size']}, {inp['train_images']} training images\n"
        f"input path alone ({inp['path']}, {inp['workers']} workers): {inp['img_per_s']:.0f} img/s\n"
        f"model step alone ({res['model']}, forward + backward + AdamW): {res['model_img_per_s']:.0f} img/s\n"
        f"the run is bound by the {res['bound_by']}"
    )
    if inp["workers"] and inp["batches_per_epoch"] < 2 * inp["workers"]:  # each worker makes whole batches
        text += (
            f"\nnote: {inp['batches_per_epoch']} batches an epoch for {inp['workers']} workers: each epoch's end "
            "leaves workers idle, so the input path of a larger dataset goes faster than this"
        )
    return text
