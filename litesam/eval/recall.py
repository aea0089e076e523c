"""SegEvery instance recall: the share of ground-truth instances that "segment everything" recovers.

An instance is recovered when at least one SegEvery mask overlaps it with IoU ≥ ``iou_threshold`` (0.5, as
in COCO's AP50 matching, but without one-to-one assignment: recall only, so duplicates are not penalised;
``masks`` reports how many SegEvery returned).
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
    """Run SegEvery (the variant's default settings unless ``config``) over images with ground truth.

    Args:
        model: the Lite-SAM to evaluate.
        records: images with instance masks (``image()``, ``instance_masks()``).
        iou_threshold: smallest mask IoU for an instance to count as recovered.
        config: SegEvery settings; None: the defaults (the variant's AutoPPN decoding, SAM's filters).
    Returns:
        ``{"images", "instances", "recovered", "recall", "masks" (SegEvery masks in all), "seconds"}``.
    """
    generator = SegEvery(model, config) if config is not None else SegEvery(model)
    images = instances = recovered = found = 0
    start = time.perf_counter()
    for record in records:
        predicted = [r["segmentation"] for r in generator.generate(record.image())]
        found += len(predicted)
        pred = np.stack(predicted).reshape(len(predicted), -1) if predicted else None
        for gt in record.instance_masks():
            if not gt.any():
                continue
            instances += 1
            if pred is not None:
                flat = gt.reshape(1, -1)
                intersection = (pred & flat).sum(axis=1)
                union = (pred | flat).sum(axis=1)
                recovered += bool((intersection >= iou_threshold * union).any())
        images += 1
    return {
        "images": images,
        "instances": instances,
        "recovered": recovered,
        "recall": recovered / instances if instances else None,
        "masks": found,
        "seconds": round(time.perf_counter() - start, 3),
    }
