"""Scores of dense predictions, accumulated over batches and mergeable across processes (`state()` is plain data for
`torch.distributed.all_gather_object`, `merge(state)` adds another process's): COCO mAP through pycocotools' COCOeval
(`CocoMeanAP`), and mean IoU and pixel accuracy from a confusion matrix (`SegmentationScores`)."""

import contextlib
import io
import math
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from ..errors import InputError

DENSE_EXTRA = "pip install 't2t-vit[dense]'"
MASK_THRESHOLD = 0.5  # a predicted instance mask's probabilities at or above it are the mask (torchvision's)
STATS = ("map", "map50", "map75")  # COCOeval's stats[0:3]: AP at IoU 0.5:0.95, 0.5 and 0.75


def _pycocotools() -> Any:
    """pycocotools' COCO, COCOeval and mask modules, or one InputError that says how to install them."""
    try:
        from pycocotools import mask
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise InputError(f"COCO mAP needs pycocotools, which is not installed: {DENSE_EXTRA}") from None
    return COCO, COCOeval, mask


def _rles(masks: torch.Tensor, mask_api: Any) -> List[Dict[str, Any]]:
    """Binary masks (N, H, W) -> COCO run-length encodings."""
    array = masks.detach().to("cpu", torch.uint8).numpy()
    return mask_api.encode(np.asfortranarray(array.transpose(1, 2, 0))) if len(array) else []


class CocoMeanAP:
    """COCO's mean average precision of detections (torchvision's dicts: boxes xyxy, labels, scores, for instances
    also masks (N, 1, H, W) of probabilities) against targets (boxes, labels, optional iscrowd and area, for instances
    masks (N, H, W)), both in the input image's coordinates. `compute()` -> map, map50, map75 (box AP at IoU
    0.5:0.95, 0.5, 0.75) and with `masks=True` mask_map, mask_map50, mask_map75; NaN where there is no ground truth.

    The categories are the labels that occur; those without ground truth are left out of the mean, as COCOeval does.
    """

    def __init__(self, masks: bool = False) -> None:
        self.masks = masks
        self._mask_api = _pycocotools()[2]
        self.images: List[Dict[str, Any]] = []

    def update(self, predictions: Sequence[Dict[str, torch.Tensor]], targets: Sequence[Dict[str, Any]]) -> None:
        """Adds a batch: one prediction and one target per image."""
        if len(predictions) != len(targets):
            raise InputError(f"{len(predictions)} predictions but {len(targets)} targets: give one of each per image")
        for prediction, target in zip(predictions, targets):
            gt_boxes = target["boxes"].detach().cpu().double()
            record: Dict[str, Any] = dict(
                gt_boxes=gt_boxes.tolist(),
                gt_labels=target["labels"].tolist(),
                gt_crowd=(target["iscrowd"].tolist() if "iscrowd" in target else [0] * len(gt_boxes)),
                gt_area=(
                    target["area"].tolist()
                    if "area" in target
                    else ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])).tolist()
                ),
                boxes=prediction["boxes"].detach().cpu().double().tolist(),
                labels=prediction["labels"].tolist(),
                scores=prediction["scores"].tolist(),
            )
            if self.masks:
                if "masks" not in prediction or "masks" not in target:
                    raise InputError("mask AP needs masks in the predictions and the targets (Mask R-CNN's)")
                record["size"] = list(target["masks"].shape[-2:])  # COCO reads an RLE's image size off its image
                record["gt_masks"] = _rles(target["masks"] > 0, self._mask_api)
                record["masks"] = _rles(prediction["masks"][:, 0] >= MASK_THRESHOLD, self._mask_api)
            self.images.append(record)

    def state(self) -> List[Dict[str, Any]]:
        """What `merge` takes: one plain record per image seen."""
        return list(self.images)

    def merge(self, state: List[Dict[str, Any]]) -> None:
        self.images.extend(state)

    def compute(self) -> Dict[str, float]:
        scores = self._evaluate("bbox")
        if self.masks:
            scores.update({f"mask_{k}": v for k, v in self._evaluate("segm").items()})
        return scores

    def _evaluate(self, iou_type: str) -> Dict[str, float]:
        COCO, COCOeval, _ = _pycocotools()
        categories = sorted({c for r in self.images for c in r["gt_labels"] + r["labels"]})
        if not categories:
            return {k: math.nan for k in STATS}
        gt, dt = self._coco(COCO, iou_type, categories)
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
            evaluation = COCOeval(gt, dt, iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        return {k: (float(v) if v >= 0 else math.nan) for k, v in zip(STATS, evaluation.stats[:3])}

    def _coco(self, COCO: type, iou_type: str, categories: List[int]) -> Any:
        """Ground truth and detections as two in-memory COCO objects (image ids: the records' order)."""
        images = [dict(id=i, **dict(zip(("height", "width"), r.get("size", ())))) for i, r in enumerate(self.images)]
        truth, found = [], []
        for i, r in enumerate(self.images):
            for j, (box, label) in enumerate(zip(r["gt_boxes"], r["gt_labels"])):
                ann = dict(
                    image_id=i, category_id=label, bbox=_xywh(box), area=r["gt_area"][j], iscrowd=r["gt_crowd"][j]
                )
                if iou_type == "segm":
                    ann["segmentation"] = r["gt_masks"][j]
                truth.append(ann)
            for j, (box, label, score) in enumerate(zip(r["boxes"], r["labels"], r["scores"])):
                ann = dict(image_id=i, category_id=label, bbox=_xywh(box), score=score, iscrowd=0)
                if iou_type == "segm":
                    ann["segmentation"] = r["masks"][j]
                ann["area"] = float(self._mask_api.area(ann["segmentation"])) if iou_type == "segm" else _area(box)
                found.append(ann)
        cats = [dict(id=c) for c in categories]
        objects = []
        for anns in (truth, found):
            coco = COCO()
            coco.dataset = dict(
                images=images, categories=cats, annotations=[dict(a, id=k + 1) for k, a in enumerate(anns)]
            )
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            objects.append(coco)
        return objects


def _xywh(box: List[float]) -> List[float]:
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def _area(box: List[float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


class SegmentationScores:
    """Mean IoU and pixel accuracy of semantic segmentation from a confusion matrix (rows: truth, columns:
    prediction) over the pixels whose mask is not `ignore_index`. `update(predictions, masks)`: logits (B, K, H, W)
    or predicted class indices (B, H, W), masks (B, H, W). `compute()` -> miou (the mean over the classes present in
    the masks or the predictions), pixel_acc; `iou()` the per-class IoU (NaN for a class in neither)."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, predictions: torch.Tensor, masks: torch.Tensor) -> None:
        if predictions.is_floating_point():
            predictions = predictions.argmax(1)  # (B, K, H, W) -> (B, H, W)
        if predictions.shape != masks.shape:
            raise InputError(
                f"predictions of shape {tuple(predictions.shape)} for masks of {tuple(masks.shape)}: give logits "
                "(B, K, H, W) or class indices (B, H, W) at the masks' size"
            )
        K = self.num_classes
        valid = masks != self.ignore_index
        truth, predicted = masks[valid].long(), predictions[valid].long()
        if bool(((truth < 0) | (truth >= K) | (predicted < 0) | (predicted >= K)).any()):
            raise InputError(
                f"a mask or prediction holds a class outside 0..{K - 1} (other than {self.ignore_index}, ignored): "
                "check num_classes"
            )
        counts = torch.bincount(truth * K + predicted, minlength=K * K).reshape(K, K)
        self.confusion += counts.cpu()

    def state(self) -> List[List[int]]:
        """What `merge` takes: the confusion matrix as lists."""
        return self.confusion.tolist()

    def merge(self, state: List[List[int]]) -> None:
        self.confusion += torch.tensor(state, dtype=torch.int64)

    def iou(self) -> torch.Tensor:
        c = self.confusion.double()
        hits = c.diagonal()
        union = c.sum(0) + c.sum(1) - hits
        return torch.where(union > 0, hits / union.clamp(min=1), torch.full_like(hits, math.nan))

    def compute(self) -> Dict[str, float]:
        total = self.confusion.sum()
        pixel_acc = float(self.confusion.diagonal().sum() / total) if total else math.nan
        return dict(miou=float(self.iou().nanmean()), pixel_acc=pixel_acc)
