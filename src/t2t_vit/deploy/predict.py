"""Classify image files with a checkpoint: top-k classes with names and probabilities, run by PyTorch (on any device,
in any precision) or by a CPU deployment runtime. `checkpoint_task` tells a classifier's checkpoint from a dense one's
(`dense_predict`)."""

import glob
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from PIL import Image

from ..checkpoint import peek_checkpoint
from ..device import autocast_dtype, pick_device
from ..errors import InputError, missing_file
from ..factory import load_model
from ..hub import class_names, imagenet_descriptions, is_hub_source
from ..training.evaluate import checked_task
from .runtimes import check_runtime, load_runner, refuse_onnx

_logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def expand_inputs(inputs: Sequence[str]) -> List[Path]:
    """Files as given, folders searched recursively for images, globs expanded; InputError if nothing matches."""
    paths: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(path)
        elif glob.has_magic(item):
            paths += sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        else:
            raise InputError(f"{item!r} is not a file, a folder or a glob that matches anything")
    if not paths:
        raise InputError(f"no images found in {', '.join(inputs)}")
    return paths


def checkpoint_task(checkpoint: str, task: Optional[str] = None) -> str:
    """The task `checkpoint` records (classification where it records none, as the authors' files), its tensors left
    unread where torch can map the file; InputError naming the file if it cannot be read, or if `task` is given and
    is another. An ONNX export holds a classifier."""
    if str(checkpoint).lower().endswith(".onnx"):
        return checked_task(checkpoint, None, task)
    saved = peek_checkpoint(checkpoint)
    meta = saved.get("meta") if isinstance(saved, dict) else None
    return checked_task(checkpoint, meta if isinstance(meta, dict) else None, task)


def recorded_data(checkpoint: str) -> str:
    """The dataset a training checkpoint of ours was trained on (its run's `data`), for eval without --data;
    InputError asking for --data where the file records none (an export, the authors' files)."""
    local = not is_hub_source(checkpoint)
    if local and not Path(checkpoint).is_file():
        raise missing_file("checkpoint", checkpoint)
    saved = peek_checkpoint(checkpoint) if local and not checkpoint.lower().endswith(".onnx") else None
    config = saved.get("config") if isinstance(saved, dict) else None
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, str):
        raise InputError(
            f"--data is needed: {checkpoint!r} does not record the data it was trained on (the checkpoints a "
            "training run saves do; exports and the authors' files do not). Pass --data, e.g. --data /path/to/imagenet "
            "(a folder with train/ and val/) for the authors' ImageNet weights"
        )
    return data


def predict(
    inputs: Sequence[str],
    checkpoint: str,
    model_name: Optional[str] = None,
    top_k: int = 5,
    batch_size: int = 32,
    device: str = "cpu",
    precision: str = "auto",
    runtime: str = "torch",
    threads: Optional[int] = None,
    int8: bool = False,
) -> List[Dict[str, Any]]:
    """One record per image: {"file", "top_k": [{"class", "index", "prob"} (and "description" where the class is an
    ImageNet id)]} or {"file", "error"} if unreadable.
    torch runs on `device` under `precision`'s autocast ("auto": as training evaluates, bf16 on CUDA, fp32 on the
    CPU); onnxruntime and openvino run the cached ONNX export on the CPU in fp32, with int8 weights if `int8`.
    `threads`: CPU threads (None: the runtime's default). A dense checkpoint is an InputError (`dense_predict`)."""
    checkpoint_task(checkpoint, "classification")
    check_runtime(runtime, int8)
    if runtime != "torch":
        if device != "cpu" or precision not in ("auto", "fp32"):
            raise InputError(f"--device and --precision apply to --runtime torch: {runtime} runs fp32 on the CPU")
        paths = expand_inputs(inputs)
        runner = load_runner(checkpoint, model_name, runtime, threads, int8)
        return classify(paths, lambda images: torch.from_numpy(runner(images.numpy())), runner.meta, top_k, batch_size)

    refuse_onnx(checkpoint)
    if threads is not None:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    amp_dtype = autocast_dtype(precision, dev)
    model, meta = load_model(checkpoint, model_name)
    model = model.to(dev).eval()

    def logits(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            return model(images.to(dev)).float()

    return classify(expand_inputs(inputs), logits, meta, top_k, batch_size)


def classify(
    paths: Sequence[Path],
    logits: Callable[[torch.Tensor], torch.Tensor],
    meta: Dict[str, Any],
    top_k: int = 5,
    batch_size: int = 32,
) -> List[Dict[str, Any]]:
    """`predict`'s records for `paths`, in order: each batch preprocessed as `meta["data_config"]` says and
    classified by `logits` (float images to logits, any runtime)."""
    from ..data.loader import create_transform
    from ..data.sources import to_8_bits

    data_config = meta["data_config"]
    transform = create_transform({}, data_config, training=False)
    mode = "L" if data_config["input_size"][0] == 1 else "RGB"
    results: List[Dict[str, Any]] = []
    names: Optional[List[str]] = None
    described: Dict[str, str] = {}
    for start in range(0, len(paths), batch_size):
        batch, ok = [], []
        for path in paths[start : start + batch_size]:
            try:
                with Image.open(path) as img:
                    batch.append(transform(to_8_bits(img)[0].convert(mode)))
                ok.append(path)
            except Exception as e:  # a user's file: report it, go on with the others
                _logger.warning("skipping %s: %s", path, e)
                results.append(dict(file=str(path), error=f"unreadable image ({e})"))
        if not batch:
            continue
        probs = logits(torch.stack(batch)).softmax(dim=-1)
        if names is None:
            names = class_names(probs.shape[1], stored=meta.get("class_names"))
            described = imagenet_descriptions(names)  # a head of ImageNet ids: what each one is
        top = probs.topk(min(top_k, probs.shape[1]), dim=-1)
        for path, p, idx in zip(ok, top.values.tolist(), top.indices.tolist()):
            ranked = [
                dict(index=i, **{"class": names[i]}, **_description(described, names[i]), prob=v)
                for i, v in zip(idx, p)
            ]
            results.append(dict(file=str(path), top_k=ranked))
    order = {str(p): i for i, p in enumerate(paths)}
    return sorted(results, key=lambda r: order[r["file"]])


def _description(described: Dict[str, str], name: str) -> Dict[str, str]:
    return {"description": described[name]} if name in described else {}
