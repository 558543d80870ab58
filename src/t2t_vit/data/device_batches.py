"""The last stage of the input path, on the training device: uint8 batches cross pinned and non-blocking (on CUDA
one batch ahead, on a side stream), then are normalised and randomly erased there, a batch at a time.

Loaders hand over uint8 images (N, C, H, W), or float ones already normalised (the in-memory `TensorBatches`), or
for dense tasks lists of images and target dicts (detection) or padded images and masks (segmentation). The
erasing draws from generators seeded by (seed, epoch, batch number), never from the global RNGs, so a run resumed
mid-epoch erases what the uninterrupted one erased, whatever ran ahead.
"""

import math
from typing import Any, Dict, Iterator, Optional, Tuple

import torch

from .loader import sample_seed

ATTEMPTS = 10  # boxes tried per erasure, as timm's RandomErasing
AREA = (0.02, 1 / 3)  # erased fraction of the image
ASPECT = (0.3, 1 / 0.3)
ERASE_STREAM = 0xE5A5E  # mixed into the batch seed: the erasing's draws are not the crops'


def erase_boxes(n: int, count: int, height: int, width: int, prob: float, g: torch.Generator) -> torch.Tensor:
    """(n, count, 4) boxes (top, left, h, w) as timm's RandomErasing draws them per image: with probability `prob`,
    k boxes (k uniform in 1..count) each of area AREA / k (uniform) and log-uniform aspect, the first of ATTEMPTS
    that fits strictly inside; h = w = 0 for the boxes not drawn or where no attempt fits."""
    u = torch.rand(n, count, ATTEMPTS, 4, generator=g, dtype=torch.float64)
    erased = torch.rand(n, generator=g, dtype=torch.float64) < prob
    k = torch.randint(1, count + 1, (n, 1), generator=g)
    area = height * width * (AREA[0] + (AREA[1] - AREA[0]) * u[..., 0]) / k[..., None]
    aspect = torch.exp(math.log(ASPECT[0]) + (math.log(ASPECT[1]) - math.log(ASPECT[0])) * u[..., 1])
    h, w = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (h < height) & (w < width)
    first = fits.double().argmax(-1, keepdim=True)  # 0 where none fits; masked out below
    h, w = h.gather(-1, first).squeeze(-1), w.gather(-1, first).squeeze(-1)
    top = torch.floor(u[..., 2].gather(-1, first).squeeze(-1) * (height - h + 1))
    left = torch.floor(u[..., 3].gather(-1, first).squeeze(-1) * (width - w + 1))
    drawn = torch.arange(count)[None] < k
    keep = (fits.any(-1) & drawn & erased[:, None]).double()
    return torch.stack([top, left, h * keep, w * keep], -1).long()


def random_erase(x: torch.Tensor, boxes: torch.Tensor, mode: str, g: Optional[torch.Generator]) -> torch.Tensor:
    """`x` (normalised, N C H W) with each box filled: "pixel" with normal noise per pixel, "rand" with one normal
    value per channel, "const" with 0 (the mean)."""
    n, c, height, width = x.shape
    rows = torch.arange(height, device=x.device).view(1, height, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, width)
    # one pass per erasure (recount, usually 1); the boxes cross without the host waiting for the device
    for box in boxes.to(x.device, non_blocking=True).unbind(1):
        top, left, h, w = box.unbind(1)
        inside = (
            (rows >= top.view(-1, 1, 1))
            & (rows < (top + h).view(-1, 1, 1))
            & (cols >= left.view(-1, 1, 1))
            & (cols < (left + w).view(-1, 1, 1))
        )
        shape = (n, c, height, width) if mode == "pixel" else (n, c, 1, 1)
        fill = torch.zeros(shape, device=x.device, dtype=x.dtype)
        if mode != "const":
            fill.normal_(generator=g)
        x = torch.where(inside[:, None], fill, x)
    return x


def to_device(x: Any, device: torch.device) -> Any:
    """`x` with its tensors on `device`, copied without blocking: a tensor, or lists, tuples and dicts of them (a
    detection batch's images and target dicts); other values as they are."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


def _tensors(x: Any) -> Iterator[torch.Tensor]:
    """The tensors in `x`, as `to_device` finds them."""
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple, dict)):
        for v in x.values() if isinstance(x, dict) else x:
            yield from _tensors(v)


class DeviceBatches:
    """`loader`'s (images, targets, counts) on `device`, uint8 images normalised there with `data_config`'s mean and
    std, and in training randomly erased (`reprob`, `remode`, `recount`) with per-batch seeds. Without a data config
    (dense tasks, whose models normalise inside) images become floats in [0, 1]: one batch, or a list of images of
    different sizes (detection); targets may be dicts of tensors. Passes `sampler` and `len` through, so the training
    loop sees a loader."""

    def __init__(
        self,
        loader: Any,
        device: torch.device,
        data_config: Optional[Dict[str, Any]] = None,
        erasing: Optional[Tuple[float, str, int]] = None,
        seed: int = 0,
    ) -> None:
        self.loader, self.device, self.seed = loader, device, seed
        self.erasing = erasing if erasing and erasing[0] > 0 else None
        self.mean, self.std = torch.zeros((), device=device), torch.full((), 255.0, device=device)
        if data_config is not None:
            channels = data_config["input_size"][0]
            self.mean = torch.tensor(data_config["mean"][:channels], device=device).view(-1, 1, 1) * 255
            self.std = torch.tensor(data_config["std"][:channels], device=device).view(-1, 1, 1) * 255

    @property
    def sampler(self) -> Any:
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def _prepare(self, images: Any, targets: Any, number: int) -> Tuple[Any, Any]:
        images, targets = to_device(images, self.device), to_device(targets, self.device)
        if isinstance(images, list):
            return [self._float(image) for image in images], targets
        images = self._float(images)
        if self.erasing is not None and len(images):
            prob, mode, count = self.erasing
            epoch = self.sampler.epoch
            seed = sample_seed(self.seed ^ ERASE_STREAM, epoch, number) >> 1
            boxes = erase_boxes(
                len(images), count, images.shape[2], images.shape[3], prob, torch.Generator().manual_seed(seed)
            )
            noise = torch.Generator(device=self.device).manual_seed(seed)
            images = random_erase(images, boxes, mode, noise)
        return images, targets

    def _float(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (.., C, H, W) as normalised floats; float ones (the in-memory path's) as they are."""
        return (images.float() - self.mean) / self.std if images.dtype == torch.uint8 else images

    def __iter__(self) -> Iterator[Tuple[Any, Any, Tuple[int, int]]]:
        batch_size = getattr(self.loader, "batch_size", None) or 1
        first = getattr(self.sampler, "start", 0) // batch_size
        if self.device.type != "cuda":
            for number, (images, targets, counts) in enumerate(self.loader, first):
                yield (*self._prepare(images, targets, number), _counts(counts))
            return
        stream = torch.cuda.Stream(self.device)  # copies and normalising overlap the step before
        ahead = None
        for number, (images, targets, counts) in enumerate(self.loader, first):
            with torch.cuda.stream(stream):
                prepared = self._prepare(images, targets, number)
            if ahead is not None:
                yield ahead
            torch.cuda.current_stream(self.device).wait_stream(stream)
            for t in _tensors(prepared):
                t.record_stream(torch.cuda.current_stream(self.device))
            ahead = (*prepared, _counts(counts))
        if ahead is not None:
            yield ahead


def _counts(counts: Any) -> Tuple[int, int]:
    """(unreadable, high-depth) images of a batch: the dense collates count the unreadable ones only."""
    return counts if isinstance(counts, tuple) else (counts, 0)
