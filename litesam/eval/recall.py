"""SegEvery instance recall: the share of ground-truth instances that "segment everything" recovers.

An instance is recovered when at least one SegEvery mask overlaps it with IoU ≥ ``iou_threshold`` (0.5, as
in COCO's AP50 matching, but without one-to-one assignment, so duplicates are not penalised). Beside it,
``precision``: the share of SegEvery's masks that overlap some instance with IoU ≥ ``iou_threshold`` (a
filter that keeps everything has high recall and low precision; both are read together).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np

from ..everything import SegEvery, SegEveryConfig
from ..modeling.lite_sam import LiteSAM


def segevery_recall(
    model: LiteSAM,
    records: Iterable,
    iou_threshold: float = 0.5,
    config: SegEveryConfig | None = None,
) -> dict[str, object]:
    """Run SegEvery (the model's default settings unless ``config``) over images with ground truth.

    Args:
        model: the Lite-SAM to evaluate.
        records: images with instance masks (``image()``, ``instance_masks()``).
        iou_threshold: smallest mask IoU for an instance to count as recovered.
        config: SegEvery settings; None: the model's defaults (its variant's AutoPPN decoding, its checkpoint's calibrated filters or SAM's).
    Returns:
        ``{"images", "instances", "recovered", "recall", "masks" (SegEvery masks in all), "correct" (masks
        matching an instance), "precision", "seconds"}``; recall / precision are None without instances /
        masks.
    """
    generator = SegEvery(model, config) if config is not None else SegEvery(model)
    images = instances = recovered = found = correct = 0
    start = time.perf_counter()
    for record in records:
        predicted = [r["segmentation"] for r in generator.generate(record.image())]
        found += len(predicted)
        truths = [gt.reshape(-1) for gt in record.instance_masks() if gt.any()]
        instances += len(truths)
        images += 1
        if not predicted or not truths:
            continue
        matched = instance_matches(np.stack(predicted).reshape(len(predicted), -1), truths, iou_threshold)
        recovered += int(matched.any(axis=0).sum())
        correct += int(matched.any(axis=1).sum())
    return {
        "images": images,
        "instances": instances,
        "recovered": recovered,
        "recall": recovered / instances if instances else None,
        "masks": found,
        "correct": correct,
        "precision": correct / found if found else None,
        "seconds": round(time.perf_counter() - start, 3),
    }


def instance_matches(masks: np.ndarray, truths: list[np.ndarray], iou_threshold: float = 0.5) -> np.ndarray:
    """Which masks match which instances: ``M×N`` bool, True where mask IoU ≥ ``iou_threshold``.

    Args:
        masks: ``M×P`` bool, predicted masks flattened to P pixels.
        truths: N instance masks, each P bool (flattened alike).
    Computed one instance at a time, so memory stays at ``M×P``.
    """
    columns = [(masks & truth).sum(axis=1) >= iou_threshold * (masks | truth).sum(axis=1) for truth in truths]
    return np.stack(columns, axis=1) if columns else np.zeros((len(masks), 0), dtype=bool)
