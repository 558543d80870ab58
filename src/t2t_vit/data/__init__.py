"""Images in, batches out: data sources (`--data` specs), transforms and loaders, the in-memory batches and the
last stage on the training device. Imports only `errors` and `config` from the package."""

from .dense import create_dense_dataset
from .dense_transforms import DenseTransform, detection_collate, segmentation_collate
from .loader import create_loader, create_transform, workers_closed
from .sources import align_classes, create_dataset, dataset_classes, imagenet_rows, stratified_subset

__all__ = [
    "align_classes",
    "create_dataset",
    "create_loader",
    "create_transform",
    "dataset_classes",
    "imagenet_rows",
    "stratified_subset",
    "create_dense_dataset",
    "DenseTransform",
    "detection_collate",
    "segmentation_collate",
    "workers_closed",
]
