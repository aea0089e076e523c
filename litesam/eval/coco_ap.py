"""Mask AP with pycocotools' COCOeval over in-memory ground truth and scored predicted masks.

Used for the supplement's "1-box prompt mAP": every ground-truth mask is prompted once with its box, and the
predicted mask, scored by its predicted IoU, is one detection. AP is COCO's (IoU 0.50:0.95, one class,
``maxDets`` large enough for every detection).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


class MaskAP:
    """Collects ground-truth masks and scored predictions image by image; :meth:`summary` runs COCOeval."""

    def __init__(self) -> None:
        self.images: list[dict] = []
        self.ground_truth: list[dict] = []
        self.detections: list[dict] = []

    def add_image(self, height: int, width: int) -> int:
        """Start a new image of H×W pixels; returns its id for :meth:`add`."""
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "height": height, "width": width})
        return image_id

    def add(self, image_id: int, gt: np.ndarray, pred: np.ndarray, score: float) -> None:
        """One ground-truth H×W bool mask of image ``image_id`` and the prediction made for it."""
        rle = _encode(gt)
        self.ground_truth.append(
            {
                "id": len(self.ground_truth) + 1,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": rle,
                "area": float(coco_mask.area(rle)),
                "bbox": coco_mask.toBbox(rle).tolist(),
                "iscrowd": 0,
            }
        )
        self.detections.append(
            {"image_id": image_id, "category_id": 1, "segmentation": _encode(pred), "score": float(score)}
        )

    def summary(self) -> dict[str, float | None]:
        """``{"ap", "ap50", "ap75"}`` (COCO segm AP at IoU 0.50:0.95, 0.50, 0.75); None without masks."""
        if not self.ground_truth:
            return {"ap": None, "ap50": None, "ap75": None}
        gt = COCO()
        gt.dataset = {"images": self.images, "annotations": self.ground_truth, "categories": [{"id": 1}]}
        per_image = max(sum(1 for g in self.ground_truth if g["image_id"] == i["id"]) for i in self.images)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            gt.createIndex()
            evaluation = COCOeval(gt, gt.loadRes(self.detections), "segm")
            evaluation.params.maxDets = [1, 10, max(100, per_image)]  # every detection of an image counts
            evaluation.evaluate()
            evaluation.accumulate()
        # precision: IoU thresholds (0.50:0.05:0.95) × recall points × class × area range (all) × maxDets
        precision = evaluation.eval["precision"][:, :, 0, 0, -1]

        def mean(values: np.ndarray) -> float:
            valid = values[values > -1]
            return float(valid.mean()) if valid.size else 0.0

        return {"ap": mean(precision), "ap50": mean(precision[0]), "ap75": mean(precision[5])}


def _encode(mask: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle
