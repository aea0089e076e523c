"""Mask IoU and its running mean, split by COCO object size.

Masks are H×W bool numpy arrays of one frame (``[row, col]`` = ``[y, x]``); nonzero integers count as on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: COCO's object-size ranges by mask area in original-image pixels: [low, high).
SIZE_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, math.inf),
}


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two H×W masks; 1.0 when both are empty (nothing to disagree on).

    Raises:
        ValueError: the shapes differ.
    """
    return float(batched_mask_iou(np.asarray(pred)[None], np.asarray(gt)[None])[0])


def batched_mask_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of N aligned mask pairs.

    Args:
        pred, gt: N×H×W masks (bool, or integer with nonzero = on), same shape.
    Returns:
        N float64 IoU values in [0, 1]; 1.0 for a pair of empty masks.
    Raises:
        ValueError: the shapes differ or are not N×H×W.
    """
    pred, gt = np.asarray(pred) != 0, np.asarray(gt) != 0
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"masks must both be N×H×W of one shape, got {pred.shape} and {gt.shape}")
    intersection = (pred & gt).reshape(len(pred), -1).sum(axis=1)
    union = (pred | gt).reshape(len(pred), -1).sum(axis=1)
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def size_bucket(area: float) -> str:
    """The COCO size name ("small", "medium", "large") of a mask of ``area`` pixels."""
    for name, (low, high) in SIZE_RANGES.items():
        if low <= area < high:
            return name
    raise ValueError(f"area must be a non-negative number, got {area}")


@dataclass
class MeanIoU:
    """Running mean IoU over masks, overall and per COCO size bucket."""

    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("all", *SIZE_RANGES), 0.0))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("all", *SIZE_RANGES), 0))

    def add(self, iou: float, area: float) -> None:
        """Count one mask with IoU ``iou`` whose ground truth covers ``area`` pixels."""
        if not 0.0 <= iou <= 1.0:
            raise ValueError(f"an IoU lies in [0, 1], got {iou}")
        for key in ("all", size_bucket(area)):
            self.totals[key] += iou
            self.counts[key] += 1

    def summary(self) -> dict[str, object]:
        """``{"miou", "count", "by_size": {name: {"miou", "count"}}}``; ``miou`` is None without masks."""

        def entry(key: str) -> dict[str, object]:
            count = self.counts[key]
            return {"miou": self.totals[key] / count if count else None, "count": count}

        return {**entry("all"), "by_size": {name: entry(name) for name in SIZE_RANGES}}
