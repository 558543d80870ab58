"""Predictions drawn on their image for `t2t-vit predict --task`: detections as boxes labelled with class and score,
instance masks tinted (`draw_detections`); a semantic mask as a colour per class blended in, with a legend of the
classes it holds (`draw_segmentation`)."""

import colorsys
from typing import Dict, List, Sequence, Tuple, Union

import torch
from PIL import Image, ImageDraw
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..errors import InputError

ImageLike = Union[Image.Image, torch.Tensor]
BACKGROUND_NAMES = ("__background__", "background")  # classes left untinted in a semantic mask
MASK_THRESHOLD = 0.5
ALPHA = 0.5


def class_colors(num_classes: int) -> List[Tuple[int, int, int]]:
    """A distinct, saturated RGB colour per class: hues a golden ratio apart, the same for every call."""
    return [
        tuple(round(255 * v) for v in colorsys.hsv_to_rgb((0.12 + i * 0.618034) % 1.0, 0.85, 0.95))  # type: ignore
        for i in range(num_classes)
    ]


def _rgb_uint8(image: ImageLike) -> torch.Tensor:
    """A PIL image, or a tensor (C, H, W) uint8 or float in [0, 1], as uint8 RGB (3, H, W)."""
    if isinstance(image, Image.Image):
        return pil_to_tensor(image.convert("RGB"))
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise InputError(f"an image to draw on is (C, H, W) with 1 or 3 channels, not {tuple(image.shape)}")
    if image.is_floating_point():
        image = (image.detach().clamp(0, 1) * 255).round()
    return image.detach().cpu().to(torch.uint8).expand(3, -1, -1).clone()


def draw_detections(
    image: ImageLike,
    prediction: Dict[str, torch.Tensor],
    class_names: Sequence[str],
    score_threshold: float = 0.5,
) -> Image.Image:
    """The image with the detections scoring at least `score_threshold` (torchvision's dict: boxes, labels, scores,
    optionally masks (N, 1, H, W) of probabilities, tinted where >= 0.5): a box in its class's colour and the label
    "name score" at its top left. `class_names[label]` names a label ("__background__" at 0)."""
    canvas = _rgb_uint8(image)
    keep = prediction["scores"].detach().cpu() >= score_threshold
    labels = prediction["labels"].detach().cpu()[keep].tolist()
    if not labels:
        return to_pil_image(canvas)
    palette = class_colors(len(class_names))
    colors = [palette[label % len(palette)] for label in labels]
    if "masks" in prediction:
        masks = prediction["masks"].detach().cpu()[keep][:, 0] >= MASK_THRESHOLD
        canvas = draw_segmentation_masks(canvas, masks, alpha=ALPHA, colors=colors)
    names = [class_names[label] if label < len(class_names) else str(label) for label in labels]
    scores = prediction["scores"].detach().cpu()[keep].tolist()
    canvas = draw_bounding_boxes(
        canvas,
        prediction["boxes"].detach().cpu()[keep],
        labels=[f"{name} {score:.2f}" for name, score in zip(names, scores)],
        colors=colors,
        width=2,
        label_colors="black",
        fill_labels=True,
    )
    return to_pil_image(canvas)


def draw_segmentation(image: ImageLike, mask: torch.Tensor, class_names: Sequence[str]) -> Image.Image:
    """The image with each class of `mask` (class indices (H, W), or logits (K, H, W)) blended in its colour, except
    the background ("background" or "__background__") and ignored pixels (255), and a legend at the top left naming
    the classes present in their colours."""
    canvas = _rgb_uint8(image)
    mask = mask.detach().cpu()
    if mask.is_floating_point():
        mask = mask.argmax(0)  # (K, H, W) -> (H, W)
    if tuple(mask.shape) != tuple(canvas.shape[-2:]):
        raise InputError(f"a mask of shape {tuple(mask.shape)} for an image of {tuple(canvas.shape[-2:])}")
    palette = class_colors(len(class_names))
    present = [c for c in mask.unique().tolist() if c < len(class_names) and class_names[c] not in BACKGROUND_NAMES]
    if present:
        masks = torch.stack([mask == c for c in present])
        canvas = draw_segmentation_masks(canvas, masks, alpha=ALPHA, colors=[palette[c] for c in present])
    picture = to_pil_image(canvas)
    draw = ImageDraw.Draw(picture)
    y = 1
    for c in present:
        left, top, right, bottom = draw.textbbox((2, y), class_names[c])
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0))
        draw.text((2, y), class_names[c], fill=palette[c])
        y = bottom + 3
    return picture
