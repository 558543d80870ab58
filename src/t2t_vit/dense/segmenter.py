"""Semantic segmentation over the feature pyramid: Panoptic FPN's semantic head (Kirillov et al., "Panoptic Feature
Pyramid Networks", CVPR 2019) on a FeaturePyramidBackbone, per-pixel logits at the input's size; optionally refined at
full resolution by a shallow branch over the image, for structures thinner than the finest level's stride."""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .backbone import FeaturePyramidBackbone, group_norm

IGNORE_INDEX = 255
Images = Union[torch.Tensor, Sequence[torch.Tensor]]


def _conv_stage(in_channels: int, out_channels: int) -> nn.Sequential:
    """3 x 3 convolution, GroupNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), group_norm(out_channels), nn.ReLU(inplace=True)
    )


class SemanticFPNHead(nn.Module):
    """Each FPN level up to the finest one's stride through 3 x 3 conv-GN-ReLU stages with a 2x bilinear upsampling
    after each (one stage without upsampling for the finest), summed, then a 1 x 1 convolution to the classes."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, strides: Sequence[int]) -> None:
        super().__init__()
        self.upsamplings = [(s // strides[0]).bit_length() - 1 for s in strides]  # log2 of each level's ratio
        self.branches = nn.ModuleList(
            nn.Sequential(*[_conv_stage(in_channels if i == 0 else channels, channels) for i in range(max(1, n))])
            for n in self.upsamplings
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, levels: List[torch.Tensor]) -> torch.Tensor:
        """FPN maps, finest first -> logits (B, K, H0, W0) at the finest level's size."""
        out = None
        for x, branch, n in zip(levels, self.branches, self.upsamplings):
            for stage in branch:
                x = stage(x)
                if n:
                    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            out = x if out is None else out + x
        return self.classifier(out)


class DetailRefinement(nn.Module):
    """Logits upsampled to the image's size, refined with what the image shows at full resolution (a U-Net-style skip):
    a 3 x 3 convolution and ReLU over the image, a 1 x 1 convolution of it to the classes, added to the logits (cheap
    at full resolution: the context is the logits', the branch adds where edges fall)."""

    def __init__(self, in_chans: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(in_chans, channels, 3, padding=1), nn.ReLU(inplace=True))
        self.refine = nn.Conv2d(channels, num_classes, 1)
        nn.init.zeros_(self.refine.weight)  # starts as the plain upsampled logits
        nn.init.zeros_(self.refine.bias)

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return logits + self.refine(self.image(image))


class SemanticSegmenter(nn.Module):
    """Images float in [0, 1], a batch (B, C, H, W) or a list of (C, H, W) -> padded at the right and bottom with
    black (as `segmentation_collate` pads) to one size and a multiple of `size_divisible`, normalised, backbone + head,
    logits upsampled (bilinear) and cropped back to (B, K, H, W), H and W the batch's largest (a list: the part past
    each image's own size is padding, which `segmentation_collate`'s masks mark ignored); `detail_channels` > 0 adds
    a DetailRefinement that wide. Train mode: `model(images, masks)` -> {"loss_seg": cross-entropy over the pixels
    not `ignore_index`, each class weighted by `class_weight` (e.g. a smaller weight for a background that covers
    most pixels)}; masks int64 (B, H, W) or a list of (H, W)."""

    def __init__(
        self,
        backbone: FeaturePyramidBackbone,
        num_classes: int,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        size_divisible: int,
        head_channels: int = 128,
        ignore_index: int = IGNORE_INDEX,
        detail_channels: int = 0,
        class_weight: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = SemanticFPNHead(backbone.out_channels, head_channels, num_classes, backbone.strides)
        self.detail = DetailRefinement(len(image_mean), detail_channels, num_classes) if detail_channels else None
        self.num_classes, self.size_divisible, self.ignore_index = num_classes, size_divisible, ignore_index
        if class_weight is not None and (len(class_weight) != num_classes or min(class_weight) < 0):
            raise InputError(
                f"class_weight has {len(class_weight)} values ({min(class_weight, default=0)} the least) for "
                f"{num_classes} classes: give one weight >= 0 per class, in class index order"
            )
        weight = torch.ones(num_classes) if class_weight is None else torch.tensor(class_weight, dtype=torch.float)
        self.register_buffer("class_weight", weight, persistent=False)
        self.register_buffer("image_mean", torch.tensor(image_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(-1, 1, 1), persistent=False)

    def forward(
        self, images: Images, masks: Union[torch.Tensor, Sequence[torch.Tensor], None] = None
    ) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        x, (height, width) = self._batch(images)
        logits = self.head(list(self.backbone(x).values()))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.detail is not None:
            logits = self.detail(logits, x)
        logits = logits[..., :height, :width]
        if not self.training:
            return logits
        if masks is None:
            raise InputError("in training mode the segmenter takes masks: model(images, masks)")
        target = self._masks(masks, height, width, images)
        loss = F.cross_entropy(logits, target, self.class_weight, ignore_index=self.ignore_index, reduction="sum")
        valid = target[target != self.ignore_index]
        return {"loss_seg": loss / self.class_weight[valid].sum().clamp(min=1)}  # no NaN for an all-ignored batch

    def _batch(self, images: Images) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Normalised images padded into one batch (B, C, H', W') with H', W' multiples of size_divisible, and the
        batch's largest (H, W)."""
        items = list(images.unbind(0) if isinstance(images, torch.Tensor) and images.dim() == 4 else images)
        for item in items:
            if not isinstance(item, torch.Tensor) or item.dim() != 3 or not item.is_floating_point():
                kind = f"a {item.dtype} tensor of shape {tuple(item.shape)}" if isinstance(item, torch.Tensor) else item
                raise InputError(
                    f"the segmenter takes float images in [0, 1], (B, C, H, W) or a list of (C, H, W): got {kind} "
                    "(uint8 images: image.float() / 255)"
                )
        height, width = max(i.shape[-2] for i in items), max(i.shape[-1] for i in items)
        m = self.size_divisible
        padded_h, padded_w = -(-height // m) * m, -(-width // m) * m
        batch = torch.stack([F.pad(i, (0, padded_w - i.shape[-1], 0, padded_h - i.shape[-2])) for i in items])
        return (batch - self.image_mean) / self.image_std, (height, width)  # padded black, as segmentation_collate pads

    def _masks(
        self, masks: Union[torch.Tensor, Sequence[torch.Tensor]], height: int, width: int, images: Images
    ) -> torch.Tensor:
        """Masks (B, height, width), each padded with ignore_index; InputError if one's size is not its image's."""
        items = list(masks.unbind(0) if isinstance(masks, torch.Tensor) and masks.dim() == 3 else masks)
        if len(items) != len(images):
            raise InputError(f"{len(images)} images but {len(items)} masks: give one mask (H, W) per image")
        for image, mask in zip(images, items):
            if tuple(mask.shape) != tuple(image.shape[-2:]):
                raise InputError(
                    f"a mask of shape {tuple(mask.shape)} for an image of {tuple(image.shape[-2:])}: masks are (H, W) "
                    "class indices at their image's size"
                )
        return torch.stack(
            [F.pad(m.long(), (0, width - m.shape[-1], 0, height - m.shape[-2]), value=self.ignore_index) for m in items]
        )
