"""Detection, instance and semantic segmentation over T2T-ViT's feature pyramid, from torchvision's parts: the models
(`create_dense_model`), COCO mAP and mIoU, drawings of predictions. Imports models, factory, checkpoint, errors and
torchvision; never training, deploy, study or cli."""

from .draw import draw_detections, draw_segmentation
from .factory import TASKS, backbone_parameter_name, create_dense_model
from .metrics import CocoMeanAP, SegmentationScores

__all__ = [
    "TASKS",
    "CocoMeanAP",
    "SegmentationScores",
    "backbone_parameter_name",
    "create_dense_model",
    "draw_detections",
    "draw_segmentation",
]
