"""Canvases a laptop trains on in minutes (`--data canvases`, `fashion-canvases:DIR`): small images of a source data set
pasted at random positions and sizes on cluttered non-square canvases, deterministic from a seed, written once into a
cache folder both as COCO instances (`coco:DIR`) and as index-PNG masks (`masks:DIR`)."""

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from ..errors import InputError
from .sources import SPLITS, ArrayImages, create_dataset, default_cache_dir

_logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # part of the cache key: bump it when the drawing changes
PLACEMENT_TRIES = 30  # positions tried for an object before the canvas goes without it


@dataclass(frozen=True)
class CanvasConfig:
    """What the generator draws. Sizes are inclusive ranges in pixels; every canvas has its own RNG, seeded from
    (seed, split, index), so a canvas does not change when the number of canvases does."""

    source: str = "digits"  # a `--data` spec of small grey images: digits, mnist:DIR, fashion-mnist:DIR
    seed: int = 0
    train: int = 1000  # canvases per split
    val: int = 200
    side: Tuple[int, int] = (96, 160)  # height and width, drawn apart
    objects: Tuple[int, int] = (1, 4)  # per canvas (fewer where no free place is found)
    object_side: Tuple[int, int] = (16, 40)  # of a pasted item, before an aspect ratio in 0.8..1.25
    mask_threshold: int = 128  # an item's pixels at or above it are its mask, and are pasted
    clutter: float = 1.0  # scales the noise, faint strokes and partial distractors (0: a clean background)
    clutter_max: int = 100  # the brightest clutter pixel: below mask_threshold, the ink is exactly the masks


def fashion_canvases(idx_dir: str, seed: int = 0) -> CanvasConfig:
    """The harder variant for benchmarks: Fashion-MNIST items (IDX files in `idx_dir`), more of them, larger, with
    dark parts, on clutter as bright as some of their pixels."""
    source = f"fashion-mnist:{Path(idx_dir).expanduser().resolve()}"
    return CanvasConfig(source, seed, 4000, 1000, (96, 160), (2, 5), (24, 56), 16, 1.5, 160)


class PastedItem(NamedTuple):
    label: int  # the source's class index
    source_index: int  # the item's index in the source's split
    pasted_at: Tuple[int, int, int, int]  # (x, y, w, h): where the scaled item went, mask or not
    mask: np.ndarray  # bool (H, W) of the canvas: the pixels it covers


def draw_canvas(
    rng: np.random.Generator, items: np.ndarray, labels: np.ndarray, config: CanvasConfig
) -> Tuple[np.ndarray, List[PastedItem]]:
    """A canvas (uint8 (H, W)) of clutter and non-overlapping pasted items, and the items (`PastedItem`)."""
    height, width = (int(v) for v in rng.integers(config.side[0], config.side[1] + 1, size=2))
    canvas = _clutter(rng, height, width, items, config)
    pasted: List[PastedItem] = []
    for _ in range(int(rng.integers(config.objects[0], config.objects[1] + 1))):
        index = int(rng.integers(len(items)))
        w, h = _item_size(rng, config, width, height)
        for _ in range(PLACEMENT_TRIES):
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            if not any(
                x < tx + tw + 1 and tx < x + w + 1 and y < ty + th + 1 and ty < y + h + 1
                for tx, ty, tw, th in (p.pasted_at for p in pasted)
            ):  # a pixel apart at least
                break
        else:
            continue
        scaled = np.asarray(Image.fromarray(items[index]).resize((w, h), Image.Resampling.BILINEAR))
        local = scaled >= config.mask_threshold
        if not local.any():
            continue
        canvas[y : y + h, x : x + w][local] = scaled[local]
        mask = np.zeros((height, width), dtype=bool)
        mask[y : y + h, x : x + w] = local
        pasted.append(PastedItem(int(labels[index]), index, (x, y, w, h), mask))
    return canvas, pasted


def _item_size(rng: np.random.Generator, config: CanvasConfig, width: int, height: int) -> Tuple[int, int]:
    side = int(rng.integers(config.object_side[0], config.object_side[1] + 1))
    aspect = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    return min(max(round(side * math.sqrt(aspect)), 1), width), min(max(round(side / math.sqrt(aspect)), 1), height)


def _clutter(rng: np.random.Generator, height: int, width: int, items: np.ndarray, config: CanvasConfig) -> np.ndarray:
    """Background of (H, W): a grey level with noise, faint strokes and parts of items, none above clutter_max."""
    amount, top = config.clutter, config.clutter_max
    background = rng.uniform(0, 0.3 * top) * amount + rng.normal(0, 0.1 * top * amount, (height, width))
    img = Image.fromarray(np.clip(background, 0, top).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, round(4 * amount) + 1))):  # strokes: short polylines
        points = [(float(rng.uniform(0, width)), float(rng.uniform(0, height))) for _ in range(int(rng.integers(2, 5)))]
        draw.line(points, fill=int(rng.uniform(0.3, 1.0) * top), width=int(rng.integers(1, 3)))
    canvas = np.array(img)
    for _ in range(int(rng.integers(0, round(2 * amount) + 1))):  # distractors: faint parts of items
        w, h = _item_size(rng, config, width, height)
        part = np.asarray(
            Image.fromarray(items[int(rng.integers(len(items)))]).resize((w, h), Image.Resampling.BILINEAR)
        )
        pw, ph = max(1, int(w * rng.uniform(0.3, 0.6))), max(1, int(h * rng.uniform(0.3, 0.6)))
        px, py = int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))
        part = part[py : py + ph, px : px + pw] * (rng.uniform(0.4, 1.0) * top / 255)
        x, y = int(rng.integers(0, width - pw + 1)), int(rng.integers(0, height - ph + 1))
        region = canvas[y : y + ph, x : x + pw]
        np.maximum(region, part.astype(np.uint8), out=region)
    return np.minimum(canvas, top)


def rle_counts(mask: np.ndarray) -> List[int]:
    """COCO's uncompressed RLE of a bool mask: run lengths in column-major order, starting with a run of zeros."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def write_canvases(root: Path, config: CanvasConfig) -> None:
    """Both splits into `root`: images/<split>/NNNNN.png (grey), masks/<split>/NNNNN.png (0 background, class + 1
    on an item's mask), annotations/instances_<split>.json (category id = class + 1), classes.txt."""
    source_classes: List[str] = []
    for split_no, split in enumerate(SPLITS):
        source = create_dataset(config.source, split, in_chans=1)
        if not isinstance(source, ArrayImages) or source.images.ndim != 3:
            raise InputError(
                f"canvases need small grey images (digits, mnist:DIR, fashion-mnist:DIR), not {config.source!r}"
            )
        source_classes = source.classes
        for folder in ("images", "masks"):
            (root / folder / split).mkdir(parents=True, exist_ok=True)
        images: List[Dict[str, Any]] = []
        annotations: List[Dict[str, Any]] = []
        for i in range(getattr(config, split)):
            canvas, pasted = draw_canvas(
                np.random.default_rng([config.seed, split_no, i]), source.images, source.labels, config
            )
            file_name = f"{i:05d}.png"
            semantic = np.zeros(canvas.shape, dtype=np.uint8)
            for item in pasted:
                semantic[item.mask] = item.label + 1
            Image.fromarray(canvas).save(root / "images" / split / file_name)
            Image.fromarray(semantic).save(root / "masks" / split / file_name)
            images.append({"id": i + 1, "file_name": file_name, "width": canvas.shape[1], "height": canvas.shape[0]})
            annotations.extend(_annotation(len(annotations) + 1, i + 1, item) for item in pasted)
        categories = [{"id": c + 1, "name": name, "supercategory": "item"} for c, name in enumerate(source_classes)]
        info = {"description": "t2t_vit canvases", "version": GENERATOR_VERSION, "config": asdict(config)}
        instances = {"info": info, "images": images, "annotations": annotations, "categories": categories}
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(instances, separators=(",", ":")))
    (root / "classes.txt").write_text("\n".join(["background", *source_classes]) + "\n")


def _annotation(annotation_id: int, image_id: int, item: PastedItem) -> Dict[str, Any]:
    rows, cols = np.flatnonzero(item.mask.any(1)), np.flatnonzero(item.mask.any(0))
    x, y = int(cols[0]), int(rows[0])
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": item.label + 1,
        "bbox": [x, y, int(cols[-1]) + 1 - x, int(rows[-1]) + 1 - y],  # the mask's tight box
        "area": int(item.mask.sum()),
        "iscrowd": 0,
        "segmentation": {"size": list(item.mask.shape), "counts": rle_counts(item.mask)},
        "source_index": item.source_index,
        "pasted_at": list(item.pasted_at),
    }


def canvases_root(config: CanvasConfig, cache: Path) -> Path:
    """Where under `cache` the canvases of `config` go: a name that changes with the config and the drawing."""
    key = json.dumps({"version": GENERATOR_VERSION, **asdict(config)}, sort_keys=True)
    return cache / f"canvases-{config.source.partition(':')[0]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def cached_canvases(config: CanvasConfig, cache_dir: Optional[Path] = None) -> Path:
    """The folder of `config`'s canvases under the cache, written on first use (into a temporary folder renamed at the
    end, so an interrupted or concurrent writer never leaves half a data set)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = canvases_root(config, cache)
    if root.is_dir():
        return root
    try:
        cache.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=cache))
    except OSError as e:
        raise InputError(f"cannot write canvases to {str(cache)!r} ({e.strerror or e}): set T2T_VIT_CACHE") from None
    _logger.info("drawing %d + %d canvases of %s into %s", config.train, config.val, config.source, root)
    try:
        write_canvases(temporary, config)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    try:
        os.rename(temporary, root)
    except OSError:  # another process finished first: its canvases are the same
        shutil.rmtree(temporary, ignore_errors=True)
    return root
