"""Transforms and batches for dense targets: a resize, a random crop and a horizontal flip that move boxes and masks
with the image, detection batches as lists (torchvision's detection models take images of different sizes) and
segmentation batches padded to one size with the ignore index."""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .masks import IGNORE_INDEX

# a detection target (a dict with boxes, optionally masks) or a semantic mask (int64 [H, W])
Target = Union[Dict[str, Any], torch.Tensor]


def hflip(image: torch.Tensor, target: Target) -> Tuple[torch.Tensor, Target]:
    """The image (C, H, W) mirrored left to right, with its boxes and masks."""
    image = image.flip(-1)
    if isinstance(target, torch.Tensor):
        return image, target.flip(-1)
    width = image.shape[-1]
    target = dict(target)
    x1, y1, x2, y2 = target["boxes"].unbind(1)
    target["boxes"] = torch.stack([width - x2, y1, width - x1, y2], dim=1)
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image, target


def resize(image: torch.Tensor, target: Target, size: Tuple[int, int]) -> Tuple[torch.Tensor, Target]:
    """The image resized to `size` (H, W) (bilinear, antialiased), boxes scaled, masks resized to nearest pixels."""
    height, width = image.shape[-2:]
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    image_out = resized.round().clamp(0, 255).to(image.dtype) if image.dtype == torch.uint8 else resized
    if isinstance(target, torch.Tensor):  # (H, W) class indices
        return image_out, _nearest(target[None], size)[0]
    target = dict(target)
    scale = torch.tensor([size[1] / width, size[0] / height] * 2, dtype=target["boxes"].dtype)
    target["boxes"] = target["boxes"] * scale
    if "area" in target:
        target["area"] = target["area"] * float(scale[0] * scale[1])
    if "masks" in target:
        target["masks"] = _nearest(target["masks"], size)
    return image_out, target


def crop(
    image: torch.Tensor, target: Target, top: int, left: int, size: Tuple[int, int]
) -> Tuple[torch.Tensor, Target]:
    """The image's window of `size` (H, W) at (`top`, `left`), clipped to the image, with its part of the mask; of a
    detection target, the boxes whose centre lies in the window (SSD's rule), clipped to it, with their masks."""
    bottom, right = min(top + size[0], image.shape[-2]), min(left + size[1], image.shape[-1])
    image = image[..., top:bottom, left:right]
    if isinstance(target, torch.Tensor):
        return image, target[top:bottom, left:right]
    boxes = target["boxes"]
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    keep = (centre_x >= left) & (centre_x < right) & (centre_y >= top) & (centre_y < bottom)
    shift = torch.tensor([left, top, left, top], dtype=boxes.dtype)
    limit = torch.tensor([right - left, bottom - top] * 2, dtype=boxes.dtype)
    clipped = torch.minimum((boxes[keep] - shift).clamp(min=0), limit)
    target = {
        k: v[keep] if torch.is_tensor(v) and v.dim() and v.shape[0] == len(boxes) else v for k, v in target.items()
    }
    if "area" in target:  # shrunk by the part of the box cut off
        before = (boxes[keep, 2:] - boxes[keep, :2]).prod(1).clamp(min=1e-6)
        target["area"] = target["area"] * (clipped[:, 2:] - clipped[:, :2]).prod(1) / before
    target["boxes"] = clipped
    if "masks" in target:
        target["masks"] = target["masks"][:, top:bottom, left:right]
    return image, target


def _nearest(masks: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(N, H, W) integer masks resized to `size` by nearest pixels, in their dtype."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size))
    return F.interpolate(masks[None].float(), size=size, mode="nearest-exact")[0].to(masks.dtype)


class DenseTransform:
    """Resize to `size` (H, W) when given, a random window of `crop_size` (H, W; the whole side where the image is
    smaller) when given, then a horizontal flip with probability `hflip`: drawn from torch's RNG, which the training
    loader seeds per sample."""

    def __init__(
        self, size: Optional[Tuple[int, int]] = None, hflip: float = 0.0, crop_size: Optional[Tuple[int, int]] = None
    ) -> None:
        self.size, self.hflip, self.crop_size = size, hflip, crop_size

    def __call__(self, image: torch.Tensor, target: Target) -> Tuple[torch.Tensor, Target]:
        if self.size is not None:
            image, target = resize(image, target, self.size)
        if self.crop_size is not None:
            top, left = (int(torch.randint(max(1, n - c + 1), ())) for n, c in zip(image.shape[-2:], self.crop_size))
            image, target = crop(image, target, top, left, self.crop_size)
        if self.hflip and torch.rand(()) < self.hflip:
            image, target = hflip(image, target)
        return image, target


def _good_items(batch: Sequence[Optional[Tuple[Any, ...]]]) -> Tuple[List[Tuple[Any, ...]], int]:
    """The items that loaded, and how many did not (left out, or substituted by the training samples)."""
    good = [item for item in batch if item is not None]
    return good, len(batch) - len(good) + sum(int(item[2]) for item in good if len(item) > 3)


def detection_collate(
    batch: Sequence[Optional[Tuple[Any, ...]]],
) -> Tuple[List[torch.Tensor], List[Dict[str, Any]], int]:
    """(images, targets, skipped): lists, as torchvision's detection models take them, and the count of unreadable
    images. Items are (image, target) or the training samples' (image, target, substituted, scaled)."""
    good, skipped = _good_items(batch)
    return [item[0] for item in good], [item[1] for item in good], skipped


def segmentation_collate(
    batch: Sequence[Optional[Tuple[Any, ...]]], ignore_index: int = IGNORE_INDEX, multiple: int = 1
) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """(images (B, C, H, W), masks (B, H, W), skipped): each padded at the right and bottom to the batch's largest
    size rounded up to a `multiple` (images with 0, masks with `ignore_index`)."""
    good, skipped = _good_items(batch)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), skipped
    height = -(-max(item[0].shape[-2] for item in good) // multiple) * multiple
    width = -(-max(item[0].shape[-1] for item in good) // multiple) * multiple

    def pad(x: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]), value=value)

    images = torch.stack([pad(item[0], 0) for item in good])
    masks = torch.stack([pad(item[1], ignore_index) for item in good])
    return images, masks, skipped
