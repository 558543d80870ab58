"""torchvision's detectors over a FeaturePyramidBackbone: Faster R-CNN and RetinaNet (detection), Mask R-CNN (instance
segmentation), with anchors sized for the pyramid's strides and torchvision's transform keeping each image's own size
unless asked otherwise."""

import inspect
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from ..errors import InputError, is_int, is_number
from .backbone import FeaturePyramidBackbone, group_norm

DETECTORS = ("fasterrcnn", "retinanet")
ANCHOR_RATIOS = (0.5, 1.0, 2.0)
ANCHOR_STRIDES = 4  # an anchor's side in strides of its level (torchvision: 8 at its 800 px resize, 4 for RetinaNet)
OCTAVES = 3  # RetinaNet's scales per level: 2^0, 2^(1/3), 2^(2/3)
MAX_SIZE = 1333  # torchvision's longest side
MASK_HEAD_WIDTH = 256  # torchvision's Mask R-CNN mask head's channels


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's transform (normalise, resize, pad the batch to `size_divisible`, predictions back to the input's
    coordinates). `min_size=None` keeps each image's size and only shrinks one whose longer side passes `max_size`
    (to `max_size`); a `min_size` resizes as torchvision does."""

    def __init__(
        self,
        min_size: Optional[Any],
        max_size: int,
        image_mean: List[float],
        image_std: List[float],
        size_divisible: int,
    ) -> None:
        # min_size = max_size: torchvision's scale min(min/short, max/long) is then max/long, the shrink asked for
        super().__init__(max_size if min_size is None else min_size, max_size, image_mean, image_std, size_divisible)
        self.keep_size = min_size is None

    def resize(
        self, image: torch.Tensor, target: Optional[Dict[str, torch.Tensor]] = None
    ) -> Tuple[torch.Tensor, Optional[Dict[str, torch.Tensor]]]:
        if self.keep_size and max(image.shape[-2:]) <= self.max_size:
            return image, target
        return super().resize(image, target)

    def __repr__(self) -> str:
        text = super().__repr__()
        return text.replace(f"min_size={self.min_size}", "min_size=None") if self.keep_size else text


def anchor_generator(strides: Sequence[int], octaves: int = 1) -> AnchorGenerator:
    """Anchors of side ANCHOR_STRIDES x stride at each level (times 2^(i / octaves) for i < octaves), ANCHOR_RATIOS."""
    sizes = tuple(tuple(round(ANCHOR_STRIDES * s * 2 ** (i / octaves)) for i in range(octaves)) for s in strides)
    return AnchorGenerator(sizes, (ANCHOR_RATIOS,) * len(strides))


def _check_kwargs(cls: type, kwargs: Dict[str, Any]) -> None:
    """InputError naming the keyword arguments `cls` (a torchvision detector) does not take, or a count or a fraction
    (an option whose default is an int or a float) out of its range."""
    defaults = {name: p.default for name, p in inspect.signature(cls).parameters.items()}
    known = set(defaults) - {"backbone", "num_classes", "image_mean", "image_std", "kwargs"}
    known |= {"representation_size"} if cls is not RetinaNet else set()
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise InputError(
            f"{cls.__name__} takes no {', '.join(unknown)}: its options are {', '.join(sorted(known))} "
            "(and fpn_channels, size_divisible)"
        )
    defaults["representation_size"] = 1024
    for key, value in kwargs.items():
        default = defaults[key]
        if not is_number(default):  # modules, weights: torchvision's
            continue
        if is_int(default) and not (is_int(value) and value >= 1):
            raise InputError(f"{cls.__name__} {key}={value!r}: give a whole number >= 1 (torchvision: {default})")
        if isinstance(default, float) and not (is_number(value) and 0 <= value <= 1):
            raise InputError(f"{cls.__name__} {key}={value!r}: give a number from 0 to 1 (torchvision: {default})")


def create_detector(
    task: str,
    detector: str,
    backbone: FeaturePyramidBackbone,
    num_classes: int,
    image_mean: List[float],
    image_std: List[float],
    size_divisible: int,
    min_size: Optional[Any] = None,
    max_size: int = MAX_SIZE,
    **kwargs: Any,
) -> nn.Module:
    """Faster R-CNN or RetinaNet (`detector`, task "detection") or Mask R-CNN (task "instance") over `backbone`,
    whose FPN must end in LastLevelMaxPool (R-CNN: levels + "pool") or LastLevelP6P7 (RetinaNet). `kwargs` go to
    torchvision's constructor (e.g. box_score_thresh, score_thresh, detections_per_img); R-CNN's also take
    `representation_size`, the width of the box head's two layers (torchvision: 1024)."""
    levels = [str(i) for i in range(len(backbone.strides))]  # the RoI heads pool from these, not from the extras
    if task == "detection" and detector == "retinanet":
        _check_kwargs(RetinaNet, kwargs)
        strides = [*backbone.strides, 2 * backbone.strides[-1], 4 * backbone.strides[-1]]  # P6, P7
        kwargs.setdefault("anchor_generator", anchor_generator(strides, OCTAVES))
        num_anchors = kwargs["anchor_generator"].num_anchors_per_location()[0]
        # GroupNorm in the head's convolutions, as torchvision's v2: the tiny RetinaNet's loss wandered without
        kwargs.setdefault("head", RetinaNetHead(backbone.out_channels, num_anchors, num_classes, norm_layer=group_norm))
        model: nn.Module = RetinaNet(backbone, num_classes, **kwargs)
    else:
        cls = MaskRCNN if task == "instance" else FasterRCNN
        _check_kwargs(cls, kwargs)
        kwargs.setdefault("rpn_anchor_generator", anchor_generator([*backbone.strides, 2 * backbone.strides[-1]]))
        kwargs.setdefault("box_roi_pool", MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2))
        if cls is MaskRCNN:
            kwargs.setdefault("mask_roi_pool", MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2))
        width = kwargs.pop("representation_size", None)
        if width is not None and "box_head" not in kwargs:
            kwargs["box_head"] = TwoMLPHead(backbone.out_channels * 7 * 7, width)
            kwargs.setdefault("box_predictor", FastRCNNPredictor(width, num_classes))
            if cls is MaskRCNN and "mask_head" not in kwargs:  # torchvision's own, given the classes as the box's
                kwargs.setdefault("mask_predictor", MaskRCNNPredictor(MASK_HEAD_WIDTH, MASK_HEAD_WIDTH, num_classes))
        given = {"box_predictor", "mask_predictor"} & set(kwargs)  # torchvision: then num_classes is theirs to say
        model = cls(backbone, None if given else num_classes, **kwargs)
    model.transform = DetectionTransform(min_size, max_size, image_mean, image_std, size_divisible)
    return model
