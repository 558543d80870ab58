"""Small datasets at the model's speed: the images held as one uint8 tensor, augmented a batch at a time with tensor
ops (random resized crop and flip through one `grid_sample`), no PIL per image.

Used for the training split of in-memory sources (digits, MNIST/Fashion-MNIST IDX files, CIFAR) when the recipe's
augmentation is crop and flip (random erasing and mixup follow on the device, as for every loader), with no
RandAugment or colour jitter; otherwise the per-image path of `data.create_loader` runs. Each batch draws from a
generator seeded by (seed, epoch, batch number), so a run resumed mid-epoch redraws what the uninterrupted one drew.
"""

import math
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from .loader import EpochSampler, sample_seed
from .sources import ArrayImages

ATTEMPTS = 10  # crop boxes tried per image before the centre fallback, as torchvision's RandomResizedCrop


def supports(cfg: Dict[str, Any], dataset: Dataset) -> bool:
    """Whether `dataset`'s training split can take the tensor path under `cfg`'s augmentation."""
    plain = cfg["train_crop"] == "random_resized" and not cfg["aa"] and not cfg["color_jitter"]  # erasing: on device
    source = dataset.dataset if isinstance(dataset, Subset) else dataset
    return plain and isinstance(source, ArrayImages)  # the type alone: `_arrays` copies a subset's images


def _arrays(dataset: Dataset) -> Optional[Tuple[np.ndarray, np.ndarray, str]]:
    """(images, labels, mode) of an ArrayImages dataset or a Subset of one."""
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, ArrayImages):
        idx = np.asarray(dataset.indices)
        return dataset.dataset.images[idx], np.asarray(dataset.dataset.labels)[idx], dataset.dataset.mode
    if isinstance(dataset, ArrayImages):
        return dataset.images, np.asarray(dataset.labels), dataset.mode
    return None


def as_tensor(images: np.ndarray, mode: str) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, 3) as uint8 (N, C, H, W), C = 3 for "RGB" (grey repeated), 1 for "L"
    (colour weighted as Pillow's convert("L") does)."""
    x = torch.from_numpy(np.require(images, requirements=["C", "W"]))  # a copy where read-only (IDX files)
    if x.ndim == 3:
        x = x[:, None]
        return x.expand(-1, 3, -1, -1).contiguous() if mode == "RGB" else x
    x = x.permute(0, 3, 1, 2)
    if mode == "L":
        grey = (x.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return grey.round().clamp(0, 255).to(torch.uint8)
    return x.contiguous()


def crop_boxes(
    n: int, height: int, width: int, scale: Tuple[float, float], ratio: Tuple[float, float], g: torch.Generator
) -> torch.Tensor:
    """(n, 4) boxes (top, left, h, w) drawn as torchvision's RandomResizedCrop draws them: area fraction uniform in
    `scale`, aspect log-uniform in `ratio`, the first of ATTEMPTS that fits, else the centre crop at the nearest
    allowed aspect."""
    area = height * width
    target = area * torch.empty(n, ATTEMPTS).uniform_(scale[0], scale[1], generator=g)
    aspect = torch.exp(torch.empty(n, ATTEMPTS).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g))
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
    u = torch.rand(n, 2, generator=g)
    boxes = torch.empty(n, 4)
    rows = torch.arange(n)
    ok = first >= 0
    h_ok, w_ok = h[rows, first.clamp(min=0)], w[rows, first.clamp(min=0)]
    boxes[:, 2], boxes[:, 3] = h_ok, w_ok
    boxes[:, 0] = torch.floor(u[:, 0] * (height - h_ok + 1))
    boxes[:, 1] = torch.floor(u[:, 1] * (width - w_ok + 1))
    in_ratio = width / height  # where nothing fits: the centre crop at the allowed aspect closest to the image's
    if in_ratio < ratio[0]:
        cw, ch = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        cw, ch = round(height * ratio[1]), height
    else:
        cw, ch = width, height
    boxes[~ok] = torch.tensor([(height - ch) // 2, (width - cw) // 2, ch, cw], dtype=torch.float)
    return boxes


def resized_crops(
    images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: Tuple[int, int], mode: str
) -> torch.Tensor:
    """Each image's box resized to `size` (and mirrored where `flips`), float in 0..255: one grid_sample."""
    n, _, height, width = images.shape
    top, left, h, w = boxes.unbind(1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = (w / width) * torch.where(flips, -1.0, 1.0)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, images.shape[1], *size], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode=mode, padding_mode="border", align_corners=False)
    return out.clamp_(0, 255)


class TensorBatches:
    """A training loader over in-memory images: this rank's share of each epoch's permutation (its `sampler`, an
    EpochSampler), batches of `batch_size` (the last partial one dropped), each cropped, flipped and normalised
    with tensor ops. Yields (images, targets, counts) as `data.create_loader`'s loaders do."""

    def __init__(
        self, dataset: Dataset, cfg: Dict[str, Any], data_config: Dict[str, Any], world: int = 1, rank: int = 0
    ) -> None:
        images, labels, mode = _arrays(dataset)  # type: ignore[misc]
        self.images, self.labels = as_tensor(images, mode), torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.sampler = EpochSampler(len(self.labels), world, rank, shuffle=True, seed=cfg["seed"])
        self.batch_size, self.seed = cfg["batch_size"], cfg["seed"]
        self.size = tuple(data_config["input_size"][1:])
        self.scale, self.ratio, self.hflip = tuple(cfg["scale"]), tuple(cfg["ratio"]), cfg["hflip"]
        self.mode = "bicubic" if cfg["train_interpolation"] in ("bicubic", "random") else "bilinear"
        channels = self.images.shape[1]
        self.mean = torch.tensor(data_config["mean"][:channels]).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(data_config["std"][:channels]).view(1, -1, 1, 1) * 255

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def batch(self, indices: torch.Tensor, epoch: int, number: int) -> torch.Tensor:
        """Batch `number` of `epoch`: the augmented, normalised images at `indices`."""
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, number) >> 1)
        images = self.images[indices]
        boxes = crop_boxes(len(indices), images.shape[2], images.shape[3], self.scale, self.ratio, g)
        flips = torch.rand(len(indices), generator=g) < self.hflip
        return (resized_crops(images, boxes, flips, self.size, self.mode) - self.mean) / self.std

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        keys = list(self.sampler)
        first = self.sampler.start // self.batch_size
        for b in range(len(self)):
            indices = torch.tensor([i for i, _ in keys[b * self.batch_size : (b + 1) * self.batch_size]])
            yield (
                self.batch(indices, self.sampler.epoch, first + b),
                self.labels[indices],
                (0, 0),
            )  # nothing unreadable or high-depth
