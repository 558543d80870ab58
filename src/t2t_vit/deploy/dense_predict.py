"""Predictions of a dense checkpoint (detection, instance, segmentation) on image files of any size: records for
machines (boxes in the image's pixels, instance masks as COCO RLE, a class map's pixel counts) and the predictions
drawn on each image (`dense.draw`) as `<out>/<image stem>.png`."""

import logging
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from ..checkpoint import read_checkpoint, written_atomically
from ..data.sources import to_8_bits
from ..dense.draw import MASK_THRESHOLD, draw_detections, draw_segmentation
from ..device import autocast, autocast_dtype, pick_device
from ..errors import InputError
from ..training.evaluate import checked_task, dense_checkpoint_model
from .predict import expand_inputs

_logger = logging.getLogger(__name__)

SCORE_THRESHOLD = 0.5


def predict_dense(
    inputs: Sequence[str],
    checkpoint: str,
    model_name: Optional[str] = None,
    task: Optional[str] = None,
    score_threshold: float = SCORE_THRESHOLD,
    out_dir: Optional[str] = None,
    force: bool = False,
    device: str = "cpu",
    precision: str = "auto",
    threads: Optional[int] = None,
    use_ema: bool = True,
) -> Iterator[Dict[str, Any]]:
    """Yields a record per image, in order, as each is predicted (one at a time, at its own size):

        {"file", "task", "width", "height",
         detection, instance: "detections": [{"label", "name", "score", "box": [x0, y0, x1, y1]}] scoring at least
             `score_threshold`, best first; instance also "mask": {"size": [h, w], "counts", "area"} (`coco_rle`),
         segmentation: "classes": [{"label", "name", "pixels", "fraction"}] of the classes in the predicted map,
         "drawing": the PNG's path, when `out_dir` is given}

    or {"file", "error"} for an image that cannot be read. `task`, when given, must be the checkpoint's. The drawings
    go to `out_dir`/<image stem>.png; an existing one, or two images of one stem, is an InputError before anything
    runs (`force`: overwrite). torch runs on `device` under `precision`'s autocast, with `threads` CPU threads."""
    saved = read_checkpoint(checkpoint)
    task = checked_task(checkpoint, saved.get("meta") if isinstance(saved, dict) else None, task)
    if task == "classification":
        raise InputError(f"{checkpoint!r} holds a classification model: classify with it (predict without --task)")
    paths = expand_inputs(inputs)
    targets = drawing_paths(paths, out_dir, force) if out_dir is not None else [None] * len(paths)
    if threads is not None:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    amp_dtype = autocast_dtype(precision, dev)
    meta = saved["meta"]
    model = dense_checkpoint_model(checkpoint, saved, model_name, use_ema).to(dev).eval()
    del saved
    names = list(meta.get("class_names") or [])
    names += [str(i) for i in range(len(names), meta["num_classes"])]
    mode = "L" if meta["data_config"]["input_size"][0] == 1 else "RGB"
    for path, target in zip(paths, targets):
        try:
            with Image.open(path) as img:
                picture = to_8_bits(img)[0]
                image = pil_to_tensor(picture.convert(mode)).float() / 255  # (C, H, W) in [0, 1]
                picture = picture.convert("RGB")
        except Exception as e:  # a user's file: report it, go on with the others
            _logger.warning("skipping %s: %s", path, e)
            yield dict(file=str(path), error=f"unreadable image ({e})")
            continue
        with torch.no_grad(), autocast(dev, amp_dtype):
            out = model([image.to(dev)])
        record: Dict[str, Any] = dict(file=str(path), task=task, width=picture.width, height=picture.height)
        if task == "segmentation":
            classes = out[0].float().argmax(0).cpu()  # (K, H, W) -> (H, W)
            record["classes"] = class_pixels(classes, names)
        else:
            prediction = _kept(out[0], score_threshold)
            record["detections"] = detections(prediction, names)
        if target is not None:
            if task == "segmentation":
                drawing = draw_segmentation(picture, classes, names)
            else:
                drawing = draw_detections(picture, prediction, names, score_threshold)
            _save(drawing, target)
            record["drawing"] = str(target)
        yield record


def drawing_paths(paths: Sequence[Path], out_dir: str, force: bool = False) -> List[Path]:
    """`out_dir`/<stem>.png for each image; InputError if `out_dir` is a file, two images share a stem, or a drawing
    exists (unless `force`)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out_dir!r} is a file: give a folder for the drawings")
    targets, seen = [], {}
    for path in paths:
        target = out / f"{path.stem}.png"
        if target in seen:
            raise InputError(
                f"{seen[target]} and {path} would both be drawn to {target}: predict them apart, each with its --out"
            )
        if target.exists() and not force:
            raise InputError(f"{target} exists: pass --force to overwrite it, or another --out")
        seen[target] = path
        targets.append(target)
    return targets


def detections(prediction: Dict[str, torch.Tensor], names: Sequence[str]) -> List[Dict[str, Any]]:
    """A detector's prediction (boxes, labels, scores; masks (N, 1, H, W) of probabilities) as plain records: boxes in
    pixels rounded to 0.01, masks as COCO RLE of their pixels >= 0.5."""
    out = []
    for i, (box, label, score) in enumerate(
        zip(prediction["boxes"].tolist(), prediction["labels"].tolist(), prediction["scores"].tolist())
    ):
        record = dict(label=label, name=names[label], score=score, box=[round(v, 2) for v in box])
        if "masks" in prediction:
            record["mask"] = coco_rle(prediction["masks"][i, 0].numpy() >= MASK_THRESHOLD)
        out.append(record)
    return out


def class_pixels(classes: torch.Tensor, names: Sequence[str]) -> List[Dict[str, Any]]:
    """Pixels and fraction of the map each class present in `classes` (class indices (H, W)) covers, by index."""
    counts = torch.bincount(classes.flatten(), minlength=len(names)).tolist()
    total = max(classes.numel(), 1)
    return [
        dict(label=c, name=names[c] if c < len(names) else str(c), pixels=n, fraction=round(n / total, 6))
        for c, n in enumerate(counts)
        if n
    ]


def coco_rle(mask: np.ndarray) -> Dict[str, Any]:
    """A boolean mask (H, W) as COCO's compressed RLE ({"size": [h, w], "counts": str}, which pycocotools' `decode`
    reads) and its area in pixels. Runs alternate 0s and 1s down the columns (0s first); each run, less the one two
    before from the fourth on, is written in 5-bit groups, low first, each + 48 as a character, 0x20 set while more
    follow."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")  # column-major, as COCO counts
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]  # the first run counts 0s
    chars = []
    for i, run in enumerate(runs):
        value = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            group = value & 0x1F
            value >>= 5
            more = value != (-1 if group & 0x10 else 0)  # the sign is in the last group's 0x10 bit
            chars.append(chr(48 + (group | (0x20 if more else 0))))
    return dict(size=list(mask.shape), counts="".join(chars), area=int(flat.sum()))


def _kept(prediction: Dict[str, torch.Tensor], score_threshold: float) -> Dict[str, torch.Tensor]:
    """The detections scoring at least `score_threshold`, on the CPU, floats in fp32 (masks cut before they move)."""
    keep = prediction["scores"] >= score_threshold
    return {k: (v[keep].float() if v.is_floating_point() else v[keep]).cpu() for k, v in prediction.items()}


def _save(drawing: Image.Image, target: Path) -> None:
    """Write a drawing as PNG, its folder made; InputError naming it where that fails."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with written_atomically(target) as tmp:
            drawing.save(tmp, format="PNG")
    except OSError as e:
        raise InputError(f"cannot write {target} ({e.strerror or e}): give a writable --out") from None
