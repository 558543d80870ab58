"""Data for detection and segmentation: `create_dense_dataset(spec, split, task)` is the one call, as
`sources.create_dataset` is for classification. A `--data` spec names the source:

    coco:DIR[:JSON]       COCO instances (detection; instance masks need `pip install 't2t-vit[dense]'`). Images in
                          DIR/<split>, DIR/<split>2017 or DIR/images/<split> (the first there, else DIR); the JSON
                          given ({split} stands for train or val; relative to DIR), else
                          DIR/annotations/instances_<split>[2017].json as COCO ships it, else annotations.json beside
                          the images
    masks:DIR             semantic masks: DIR/images/<split>/x.jpg beside DIR/masks/<split>/x.png (class indices,
                          255 ignore), class names one a line in DIR/classes.txt (optional)
    canvases[:N]          scikit-learn's digits pasted on cluttered canvases (1,000 training ones, or N; the same 200
                          held-out ones), drawn once into the cache ($T2T_VIT_CACHE or ~/.cache/t2t_vit) in both
                          layouts above; either task
    fashion-canvases:DIR  the harder variant from the Fashion-MNIST IDX files in DIR
"""

import dataclasses
from pathlib import Path
from typing import Optional, Union

from torch.utils.data import Dataset

from ..errors import InputError
from .canvases import CanvasConfig, cached_canvases, fashion_canvases
from .coco import CocoInstances, coco_paths
from .masks import SemanticMasks
from .sources import SPLITS

TASKS = ("detection", "segmentation")


def canvas_config(spec: str) -> Optional[CanvasConfig]:
    """What a canvases[:N] or fashion-canvases:DIR `--data` spec draws; None for any other spec."""
    kind, _, rest = spec.partition(":")
    if kind == "fashion-canvases" and rest:
        return fashion_canvases(rest)
    if kind != "canvases":
        return None
    if not rest:
        return CanvasConfig()
    if not rest.isdigit() or int(rest) < 1:
        raise InputError(f"--data {spec!r}: canvases:N takes a number of training canvases >= 1, e.g. 3000")
    return dataclasses.replace(CanvasConfig(), train=int(rest))


def create_dense_dataset(
    spec: str,
    split: str,
    task: str = "detection",
    in_chans: int = 3,
    with_masks: bool = True,
    cache_dir: Optional[Union[str, Path]] = None,
) -> Dataset:
    """The `split` ("train" or "val") of the data a dense `--data` spec names, for `task`: a `CocoInstances` (detection,
    with instance masks when `with_masks`) or a `SemanticMasks` (segmentation); images in RGB (L for 1 channel)."""
    if split not in SPLITS:
        raise InputError(f"split {split!r} is not one of {SPLITS}")
    if task not in TASKS:
        raise InputError(f"task {task!r} is not one of {TASKS}")
    mode = "L" if in_chans == 1 else "RGB"
    kind, _, rest = spec.partition(":")
    annotations: Optional[str] = None  # coco:DIR:JSON's JSON
    config = canvas_config(spec)
    if config is not None:
        root = cached_canvases(config, Path(cache_dir) if cache_dir is not None else None)
    elif kind in ("coco", "masks") and rest:
        wanted = "detection" if kind == "coco" else "segmentation"
        if task != wanted:
            raise InputError(f"--data {kind}:DIR holds {wanted} targets, not {task}: use a {task} data spec")
        folder = rest
        if kind == "coco":
            folder, _, annotations = rest.partition(":")
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise InputError(f"data dir {folder!r} for {kind} does not exist: check the path")
    else:
        raise InputError(
            f"--data {spec!r} is not a detection or segmentation data spec: coco:DIR[:JSON], masks:DIR, canvases[:N] "
            "or fashion-canvases:DIR"
        )
    if task == "segmentation":
        return SemanticMasks(root, split, mode)
    images_dir, ann_file = coco_paths(root, split, annotations or None)
    return CocoInstances(images_dir, ann_file, with_masks, mode)
