"""COCO-format instances (`--data coco:DIR[:JSON]`): an images folder and an instances JSON read into the targets
torchvision's detection models take (boxes, contiguous labels, instance masks decoded by pycocotools). Bad annotations
are dropped and counted (`dataset.problems`); a file that is not a COCO instances JSON is one InputError."""

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import InputError, is_int, is_number
from .problems import Problems
from .sources import to_8_bits

_logger = logging.getLogger(__name__)

DENSE_EXTRA = "pip install 't2t-vit[dense]'"
# the fields each entry of the three lists must have (an annotation's "id" only names it in the log)
REQUIRED_FIELDS = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}
INTEGER_FIELDS = {
    "images": ("id", "width", "height"),
    "annotations": ("image_id", "category_id"),
    "categories": ("id",),
}
# kinds of problem, as `dataset.problems` counts them
MISSING_IMAGE = "image files missing (image skipped)"
UNKNOWN_IMAGE = "annotations of an image id not in the JSON's images (dropped)"
UNKNOWN_CATEGORY = "annotations of a category id not in the JSON's categories (dropped)"
BAD_BBOX = "bboxes that are not 4 numbers (dropped)"
EMPTY_BOX = "boxes with w <= 0 or h <= 0 (dropped)"
OUTSIDE_BOX = "boxes outside their image (dropped)"
BAD_SEGMENTATION = "segmentations that are neither polygons nor RLE (dropped)"
MASK_SIZE = "RLE masks whose size differs from their image (dropped)"


def mask_api() -> Any:
    """pycocotools' mask module, or one InputError that says how to install it."""
    try:
        from pycocotools import mask
    except ImportError:
        raise InputError(f"instance masks need pycocotools, which is not installed: {DENSE_EXTRA}") from None
    return mask


def coco_paths(root: Path, split: str, annotations: Optional[str] = None) -> Tuple[Path, Path]:
    """(images folder, instances JSON) of `split` under a COCO root.

    Images: the first folder of DIR/<split>, DIR/<split>2017, DIR/images/<split> that exists, else DIR. JSON: the
    given file (relative to DIR or the working directory; `{split}` in it stands for the split), else the first of
    DIR/annotations/instances_<split>.json, DIR/annotations/instances_<split>2017.json, annotations.json beside the
    images.
    """
    names = (split, f"{split}2017")
    folders = [*(root / n for n in names), root / "images" / split]
    images = next((p for p in folders if p.is_dir()), root)
    if annotations:
        given = Path(annotations.replace("{split}", split)).expanduser()
        candidates = [given] if given.is_absolute() else [root / given, given]
        if split == "val" and "{split}" not in annotations:
            _logger.warning("coco:%s: val reads the same annotations as train (%s)", root, annotations)
    else:
        candidates = [*(root / "annotations" / f"instances_{n}.json" for n in names), images / "annotations.json"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        tried = ", ".join(str(p) for p in candidates)
        raise InputError(
            f"no instances JSON for the {split} split of coco:{root} (looked for {tried}): give it as "
            "coco:DIR:FILE.json, where {split} in FILE stands for train or val"
        )
    return images, found


def read_instances(path: Path) -> Dict[str, list]:
    """A COCO instances JSON, checked for the lists and fields the dataset reads; InputError names what is missing."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        raise InputError(f"{str(path)!r} could not be read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(
            f"{str(path)!r} is not JSON ({e}): it must be a COCO instances file (images, annotations, categories)"
        ) from None
    not_coco = f"{str(path)!r} is not a COCO instances file"
    if not isinstance(data, dict):
        raise InputError(
            f"{not_coco}: it holds a {type(data).__name__}, not an object of images, annotations, categories"
        )
    missing = [key for key in REQUIRED_FIELDS if not isinstance(data.get(key), list)]
    if missing:
        raise InputError(f"{not_coco}: it has no {', '.join(missing)} list")
    for key, fields in REQUIRED_FIELDS.items():
        for i, entry in enumerate(data[key]):
            lacking = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if lacking:
                raise InputError(f"{not_coco}: {key}[{i}] has no {', '.join(lacking)}")
    for key, fields in INTEGER_FIELDS.items():
        for i, entry in enumerate(data[key]):
            if not all(is_int(entry[f]) for f in fields):
                raise InputError(f"{not_coco}: {key}[{i}] has a non-integer {' or '.join(fields)}")
    for i, image in enumerate(data["images"]):
        if image["width"] <= 0 or image["height"] <= 0:
            raise InputError(f"{not_coco}: images[{i}] has a width or height that is not positive")
    return data


@dataclass
class Instance:
    """One object of an image: its box (x1, y1, x2, y2 in pixels), contiguous label, segmentation and area."""

    box: Tuple[float, float, float, float]
    label: int
    segmentation: Any
    area: float


@dataclass
class ImageRecord:
    image_id: int
    path: Path
    width: int
    height: int
    instances: List[Instance] = field(default_factory=list)


class CocoInstances(Dataset):
    """A COCO instances split. Items: (image, target), the image a uint8 tensor (C, H, W) (`image.float() / 255` is
    what torchvision's detection models take), the target a dict of `boxes` (float32 [N, 4], x1 y1 x2 y2 in pixels),
    `labels` (int64, 1..K; 0 is the background), `masks` (uint8 [N, H, W], with masks), `image_id`, `area`, `iscrowd`.

    Labels number the categories in the order of their COCO ids: `classes[label]` is the name ("__background__" at 0),
    `category_ids[label - 1]` the COCO id. Crowd regions (iscrowd 1) are not objects and are left out. An image that
    cannot be read, or whose size differs from the JSON's, is logged and yields None (as `ImageFiles` does).
    """

    def __init__(self, images_dir: Path, ann_file: Path, with_masks: bool = True, mode: str = "RGB") -> None:
        if with_masks:
            mask_api()  # a missing pycocotools stops here, not in a loader worker
        data = read_instances(ann_file)
        if with_masks and data["annotations"] and not any("segmentation" in a for a in data["annotations"]):
            raise InputError(
                f"{str(ann_file)!r} has no segmentation in any annotation: read it with with_masks=False (boxes only)"
            )
        self.images_dir, self.ann_file, self.with_masks, self.mode = images_dir, ann_file, with_masks, mode
        self.transform: Optional[Callable] = None
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids: List[int] = [c["id"] for c in categories]
        self.classes: List[str] = ["__background__", *(str(c["name"]) for c in categories)]
        self.problems = Problems(f"coco {ann_file}")
        self.records = self._read_records(data)
        self.problems.log()
        if data["images"] and not self.records:
            raise InputError(f"none of the images {str(ann_file)!r} lists is in {str(images_dir)!r}: check the folder")

    def _read_records(self, data: Dict[str, list]) -> List[ImageRecord]:
        label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        known_ids = {image["id"] for image in data["images"]}
        records: Dict[Any, ImageRecord] = {}
        for image in data["images"]:
            path = self.images_dir / str(image["file_name"])
            if path.is_file():
                records[image["id"]] = ImageRecord(image["id"], path, image["width"], image["height"])
            else:
                self.problems.add(MISSING_IMAGE, str(image["file_name"]))
        for index, ann in enumerate(data["annotations"]):
            name = f"annotation {ann.get('id', f'#{index}')} (image {ann['image_id']})"
            record = records.get(ann["image_id"])
            if ann["image_id"] not in known_ids:
                self.problems.add(UNKNOWN_IMAGE, name)
            if record is None or ann.get("iscrowd"):
                continue  # its image is skipped, or a crowd region
            problem, box = _clipped_box(ann["bbox"], record.width, record.height)
            if ann["category_id"] not in label_of:
                problem = UNKNOWN_CATEGORY
            elif problem is None and self.with_masks:
                problem = _segmentation_problem(ann.get("segmentation"), record.width, record.height)
            if problem is not None:
                self.problems.add(problem, name)
                continue
            area = float(ann.get("area") or (box[2] - box[0]) * (box[3] - box[1]))
            record.instances.append(Instance(box, label_of[ann["category_id"]], ann.get("segmentation"), area))
        return list(records.values())

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Optional[Tuple[torch.Tensor, Dict[str, Any]]]:
        record = self.records[i]
        try:
            with Image.open(record.path) as f:
                img = to_8_bits(f)[0].convert(self.mode)
        except Exception as e:  # truncated, corrupt, not an image: skip it, never stop a long run
            _logger.warning("skipping unreadable image %s (%s)", record.path, e)
            return None
        if img.size != (record.width, record.height):
            _logger.warning(
                "skipping %s: it is %d x %d, %s says %d x %d",
                record.path,
                *img.size,
                self.ann_file,
                record.width,
                record.height,
            )
            return None
        pixels = torch.from_numpy(np.array(img))
        image = pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
        n = len(record.instances)
        target: Dict[str, Any] = {
            "boxes": torch.tensor([inst.box for inst in record.instances], dtype=torch.float32).reshape(n, 4),
            "labels": torch.tensor([inst.label for inst in record.instances], dtype=torch.int64),
            "image_id": record.image_id,
            "area": torch.tensor([inst.area for inst in record.instances], dtype=torch.float32),
            "iscrowd": torch.zeros(n, dtype=torch.int64),
        }
        if self.with_masks:
            target["masks"] = torch.from_numpy(self._masks(record))
        return self.transform(image, target) if self.transform else (image, target)

    def _masks(self, record: ImageRecord) -> np.ndarray:
        """The instances' masks (uint8 [N, H, W]) from polygons, uncompressed or compressed RLE."""
        masks = mask_api()
        h, w = record.height, record.width
        out = np.zeros((len(record.instances), h, w), dtype=np.uint8)
        for k, inst in enumerate(record.instances):
            segmentation = inst.segmentation
            if isinstance(segmentation, list):  # polygons: one object may have several parts
                rle = masks.merge(masks.frPyObjects(segmentation, h, w))
            elif isinstance(segmentation["counts"], list):
                rle = masks.frPyObjects(segmentation, h, w)
            else:
                rle = segmentation
            out[k] = masks.decode(rle)
        return out


def _clipped_box(bbox: Any, width: int, height: int) -> Tuple[Optional[str], Tuple[float, float, float, float]]:
    """(problem or None, the COCO [x, y, w, h] box as x1 y1 x2 y2 clipped to the image)."""
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_finite(v) for v in bbox)):
        return BAD_BBOX, (0.0, 0.0, 0.0, 0.0)
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return EMPTY_BOX, (0.0, 0.0, 0.0, 0.0)
    box = (min(max(x, 0.0), width), min(max(y, 0.0), height), min(x + w, width), min(y + h, height))
    if box[2] <= box[0] or box[3] <= box[1]:
        return OUTSIDE_BOX, box
    return None, box


def _finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def _segmentation_problem(segmentation: Any, width: int, height: int) -> Optional[str]:
    """Why a segmentation cannot become a mask of a `width` x `height` image, or None."""
    if isinstance(segmentation, list) and segmentation:
        polygons_ok = all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(_finite(v) for v in p) for p in segmentation
        )
        return None if polygons_ok else BAD_SEGMENTATION
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (list, str)):
        size, counts = segmentation.get("size"), segmentation["counts"]
        if isinstance(counts, str):
            counts = _compressed_counts(counts)
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v >= 0 for v in counts)):
            return BAD_SEGMENTATION
        if size != [height, width]:
            return MASK_SIZE
        return None if sum(counts) == height * width else BAD_SEGMENTATION  # pycocotools trusts the runs' total
    return BAD_SEGMENTATION


def _compressed_counts(text: str) -> List[int]:
    """The runs of a compressed RLE string (pycocotools' rleFrString: 5-bit groups from "0", differences from the run
    two before); a negative run stands for a string that is not RLE."""
    counts: List[int] = []
    p = 0
    while p < len(text):
        value, shift, more = 0, 0, True
        while more and p < len(text):
            c = ord(text[p]) - 48
            value |= (c & 0x1F) << shift
            more, p, shift = bool(c & 0x20), p + 1, shift + 5
            if not more and c & 0x10:
                value -= 1 << shift  # sign-extend
        counts.append(value + (counts[-2] if len(counts) > 2 else 0))
    return counts
