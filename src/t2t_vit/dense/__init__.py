"""Detection, instance and semantic segmentation over T2T-ViT's feature pyramid, from torchvision's parts: the models
(`create_dense_model`), COCO mAP and mIoU, drawings of predictions. Imports models, factory, checkpoint, errors and
torchvision; never training, deploy, study or cli."""

from .factory import TASKS, backbone_parameter_name, create_dense_model

__all__ = ["TASKS", "backbone_parameter_name", "create_dense_model"]
