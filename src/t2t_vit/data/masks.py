"""Semantic masks (`--data masks:DIR`, the VOC/ADE20K layout): DIR/images/<split>/x.jpg beside DIR/masks/<split>/x.png,
an index PNG whose values are class indices (255: ignore), class names one a line in an optional DIR/classes.txt.
An image without a mask, or with a mask of another size or kind, is skipped and counted (`dataset.problems`)."""

import logging
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import InputError
from .problems import Problems
from .sources import to_8_bits

_logger = logging.getLogger(__name__)

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
INDEX_MODES = ("P", "L", "1", "I", "I;16")  # palette (VOC) or grey values that are class indices
# kinds of problem, as `dataset.problems` counts them
MISSING_MASK = "images without a mask (skipped)"
UNREADABLE = "images or masks that cannot be read (skipped)"
NOT_INDEX = "masks that are not index images (skipped)"
MASK_SIZE = "masks whose size differs from their image (skipped)"


def read_classes(path: Path) -> Optional[List[str]]:
    """Class names, one a line (line n names index n), or None without the file."""
    if not path.is_file():
        return None
    names = path.read_text().rstrip("\n").split("\n")
    if not any(name.strip() for name in names):
        raise InputError(f"{str(path)!r} is empty: write the class names there, one a line, or remove it")
    return [name.strip() for name in names]


class SemanticMasks(Dataset):
    """A split of a masks:DIR folder. Items: (image, mask), the image a uint8 tensor (C, H, W), the mask int64 [H, W]
    of class indices with IGNORE_INDEX where no class applies. Mask values at or above the number of `classes`
    (classes.txt's, or those a run sets from num_classes; other than IGNORE_INDEX) are ignored too, and logged.
    `classes` is None without classes.txt."""

    def __init__(self, root: Path, split: str, mode: str = "RGB") -> None:
        self.images_dir, self.masks_dir = root / "images" / split, root / "masks" / split
        for folder in (self.images_dir, self.masks_dir):
            if not folder.is_dir():
                raise InputError(
                    f"masks:{root} has no {folder.relative_to(root)}/ folder: the layout is DIR/images/<split>/x.jpg "
                    "beside DIR/masks/<split>/x.png (splits train and val)"
                )
        self.mode = mode
        self.classes = read_classes(root / "classes.txt")
        self.transform: Optional[Callable] = None
        self.problems = Problems(f"masks:{root} ({split})")
        self.samples = self._pairs()
        self.problems.log()
        if not self.samples:
            raise InputError(f"masks:{root} has no image with a usable mask in images/{split}/ (see the warnings)")

    def _pairs(self) -> List[Tuple[Path, Path]]:
        """(image, mask) of each image whose mask exists, reads, holds indices and has the image's size."""
        pairs = []
        images = sorted(p for p in self.images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for image in images:
            name = str(image.relative_to(self.images_dir))
            mask = (self.masks_dir / name).with_suffix(".png")
            if not mask.is_file():
                self.problems.add(MISSING_MASK, name)
                continue
            try:  # the headers only: sizes and modes
                with Image.open(image) as img, Image.open(mask) as m:
                    image_size, mask_size, mask_mode = img.size, m.size, m.mode
            except Exception as e:
                self.problems.add(UNREADABLE, f"{name} ({e})")
                continue
            if mask_mode not in INDEX_MODES:
                self.problems.add(NOT_INDEX, f"{name} (mode {mask_mode})")
            elif mask_size != image_size:
                self.problems.add(
                    MASK_SIZE, f"{name} (image {image_size[0]} x {image_size[1]}, mask {mask_size[0]} x {mask_size[1]})"
                )
            else:
                pairs.append((image, mask))
        return pairs

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        image_path, mask_path = self.samples[i]
        try:
            with Image.open(image_path) as f, Image.open(mask_path) as m:
                img = to_8_bits(f)[0].convert(self.mode)
                indices = np.array(m, dtype=np.int64)
        except Exception as e:  # truncated, corrupt: skip it, never stop a long run
            _logger.warning("skipping unreadable image or mask %s (%s)", image_path, e)
            return None
        if self.classes is not None:
            unknown = (indices >= len(self.classes)) & (indices != IGNORE_INDEX)
            if unknown.any():
                _logger.warning(
                    "%s: values %s are not classes (there are %d; ignored)",
                    mask_path,
                    sorted(set(indices[unknown].tolist())),
                    len(self.classes),
                )
                indices[unknown] = IGNORE_INDEX
        pixels = torch.from_numpy(np.array(img))
        image = pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
        mask = torch.from_numpy(indices)
        return self.transform(image, mask) if self.transform else (image, mask)
