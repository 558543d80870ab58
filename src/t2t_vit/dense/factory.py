"""`create_dense_model`: a detector, an instance segmenter or a semantic segmenter over a T2T-ViT feature pyramid
(or a timm CNN for the baselines), by task; `backbone_parameter_name` maps its parameters to the backbone's own."""

from pathlib import Path
from typing import Any, Dict, Optional, Union

from torch import nn
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..errors import InputError, is_int
from .backbone import FeaturePyramidBackbone, backbone_parameter_name, create_body, normalization, size_divisible
from .detectors import DETECTORS, create_detector
from .segmenter import SemanticSegmenter

__all__ = ["TASKS", "backbone_parameter_name", "create_dense_model"]

TASKS = ("detection", "instance", "segmentation")
FPN_CHANNELS = 256
SEGMENTER_KWARGS = {
    "fpn_channels",
    "size_divisible",
    "head_channels",
    "ignore_index",
    "detail_channels",
    "class_weight",
}


def create_dense_model(
    task: str,
    backbone: str = "t2t_vit_7",
    num_classes: Optional[int] = None,
    checkpoint_path: Optional[Union[str, Path]] = None,
    pyramid: str = "t2t",
    detector: str = "fasterrcnn",
    backbone_kwargs: Optional[Dict[str, Any]] = None,
    **kwargs: Any,
) -> nn.Module:
    """A dense model for `task` over the `pyramid` feature pyramid of the T2T-ViT `backbone` (or `timm:NAME`, a CNN).

    Args:
        task: "detection" (torchvision's Faster R-CNN or RetinaNet, `detector`), "instance" (Mask R-CNN) or
            "segmentation" (a semantic FPN head: logits (B, K, H, W)).
        num_classes: detection and instance: the classes with the background (`len(dataset.classes)`);
            segmentation: the mask's classes (255 is ignored).
        checkpoint_path: weights for the backbone (an authors' release in any layout, or ours), the head dropped.
        backbone_kwargs: for the backbone's constructor (sizes, in_chans, out_indices, ...).
        kwargs: `fpn_channels` (256), `size_divisible` (the multiple images are padded to; by default one the soft
            splits tile and the top level's stride divides); detection and instance: `min_size` (None keeps each
            image's size), `max_size` (1333) and the torchvision constructor's options; segmentation:
            `head_channels` (128), `ignore_index` (255), `detail_channels` (0: none; a full-resolution refinement that
            wide, for thin structures), `class_weight` (one per class: their weights in the loss).
    """
    if task not in TASKS:
        raise InputError(f"task {task!r} is not one of {TASKS}")
    if detector not in DETECTORS:
        raise InputError(f"detector {detector!r} is not one of {DETECTORS}")
    if task == "instance" and detector != "fasterrcnn":
        raise InputError(f"instance segmentation is Mask R-CNN (detector='fasterrcnn'), not {detector}")
    if task == "segmentation" and set(kwargs) - SEGMENTER_KWARGS:
        unknown = ", ".join(sorted(set(kwargs) - SEGMENTER_KWARGS))
        raise InputError(f"the segmenter takes no {unknown}: its options are {', '.join(sorted(SEGMENTER_KWARGS))}")
    for key, low in (("fpn_channels", 1), ("head_channels", 1), ("detail_channels", 0)):
        value = kwargs.get(key, low)
        if not (is_int(value) and value >= low):
            raise InputError(f"{key}={value!r}: give a whole number of channels >= {low}")
    least = 1 if task == "segmentation" else 2
    if not isinstance(num_classes, int) or num_classes < least:
        counts = "the mask's classes" if task == "segmentation" else "the classes with the background (len(classes))"
        raise InputError(f"num_classes={num_classes!r} for {task}: give {counts}, at least {least}")
    body = create_body(backbone, pyramid, checkpoint_path, backbone_kwargs)
    mean, std = normalization(body, (backbone_kwargs or {}).get("in_chans", 3))
    multiple = size_divisible(body, kwargs.pop("size_divisible", None))
    channels = kwargs.pop("fpn_channels", FPN_CHANNELS)
    if task == "segmentation":
        return SemanticSegmenter(FeaturePyramidBackbone(body, channels), num_classes, mean, std, multiple, **kwargs)
    extra = LastLevelP6P7(channels, channels) if task == "detection" and detector == "retinanet" else LastLevelMaxPool()
    return create_detector(
        task, detector, FeaturePyramidBackbone(body, channels, extra), num_classes, mean, std, multiple, **kwargs
    )
