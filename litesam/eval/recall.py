"""SegEvery instance recall: the share of ground-truth instances that "segment everything" recovers.

An instance is recovered when at least one SegEvery mask overlaps it with IoU ≥ ``iou_threshold`` (0.5, as
in COCO's AP50 matching, but without one-to-one assignment, so duplicates are not penalised). Beside it,
``precision``: the share of SegEvery's masks that overlap some instance with IoU ≥ ``iou_threshold`` (a
filter that keeps everything has high recall and low precision; both are read together).

Ignored areas, as COCO's evaluation ignores crowd regions: box-only instances (a record's ``box_masks()``,
e.g. Label Studio rectangles: their extent is known, not their mask) and COCO crowd regions (a record's
``crowd_masks()``: groups of objects not delineated one by one). They are not instances to recover, and a
mask that matches no instance but lies inside one of them (at least ``iou_threshold`` of the mask's area;
COCO's crowd rule) is neither right nor wrong: left out of the precision. So a mask of a box-only object,
or of a part of it, costs nothing, and a mask spilling well beyond the area still counts as wrong.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

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
        matching an instance), "ignored" (masks matching none but inside an ignored area), "precision" (correct /
        (masks − ignored)), "seconds"}``; recall / precision are None without instances / scored masks.
    """
    generator = SegEvery(model, config)
    tally = MatchTally()
    start = time.perf_counter()
    for record in records:
        predicted = [r["segmentation"].reshape(-1) for r in generator.generate(record.image())]
        truths, areas = instances_and_ignored(record)
        tally.add(*match_matrices(predicted, truths, areas, iou_threshold))
    return {
        "images": tally.images,
        "instances": tally.instances,
        "recovered": tally.recovered,
        "recall": tally.recall,
        "masks": tally.masks,
        "correct": tally.correct,
        "ignored": tally.ignored,
        "precision": tally.precision,
        "seconds": round(time.perf_counter() - start, 3),
    }


@dataclass
class MatchTally:
    """Counts summed over images (:meth:`add` one image's :func:`match_matrices`): instances and how many
    were recovered, masks, those matching an instance (correct) and those only inside an ignored area."""

    images: int = 0
    instances: int = 0
    recovered: int = 0
    masks: int = 0
    correct: int = 0
    ignored: int = 0

    def add(self, matched: np.ndarray, inside: np.ndarray) -> None:
        recovered, correct, ignored = match_counts(matched, inside)
        self.images += 1
        self.masks, self.instances = self.masks + matched.shape[0], self.instances + matched.shape[1]
        self.recovered, self.correct, self.ignored = (
            self.recovered + recovered, self.correct + correct, self.ignored + ignored
        )

    @property
    def recall(self) -> float | None:
        """Share of instances recovered; None without instances."""
        return self.recovered / self.instances if self.instances else None

    @property
    def precision(self) -> float | None:
        """Share of the masks outside ignored areas that match an instance; None when there are none."""
        scored = self.masks - self.ignored
        return self.correct / scored if scored else None


def instances_and_ignored(record) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A record's non-empty instance masks and ignored areas (``box_masks()`` and ``crowd_masks()`` when it
    has them), each flattened to H·W bool."""
    truths = [gt.reshape(-1) for gt in record.instance_masks() if gt.any()]
    areas = [
        area.reshape(-1)
        for kind in ("box_masks", "crowd_masks")
        for area in getattr(record, kind, tuple)()
        if area.any()
    ]
    return truths, areas


def match_matrices(
    masks: list[np.ndarray], truths: list[np.ndarray], ignored: list[np.ndarray] = (), iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Which masks match which instances (M×N bool, mask IoU ≥ ``iou_threshold``) and which lie inside which
    ignored areas (M×K bool, ≥ ``iou_threshold`` of the mask's pixels in the area); ``masks``, ``truths``,
    ``ignored``: flattened P-pixel bool masks."""
    if not masks:
        return np.zeros((0, len(truths)), dtype=bool), np.zeros((0, len(ignored)), dtype=bool)
    stacked = np.stack(masks)
    return instance_matches(stacked, truths, iou_threshold), _inside(stacked, list(ignored), iou_threshold)


def match_counts(matched: np.ndarray, inside: np.ndarray) -> tuple[int, int, int]:
    """(instances recovered, masks matching an instance, masks matching none but inside an ignored area)
    from :func:`match_matrices`' M×N and M×K matrices."""
    right = matched.any(axis=1)
    return int(matched.any(axis=0).sum()), int(right.sum()), int((inside.any(axis=1) & ~right).sum())


def instance_matches(masks: np.ndarray, truths: list[np.ndarray], iou_threshold: float = 0.5) -> np.ndarray:
    """Which masks match which instances: ``M×N`` bool, True where mask IoU ≥ ``iou_threshold``.

    Args:
        masks: ``M×P`` bool, predicted masks flattened to P pixels.
        truths: N instance masks, each P bool (flattened alike).
    Computed one instance at a time, so memory stays at ``M×P``.
    """
    columns = [(masks & truth).sum(axis=1) >= iou_threshold * (masks | truth).sum(axis=1) for truth in truths]
    return np.stack(columns, axis=1) if columns else np.zeros((len(masks), 0), dtype=bool)


def _inside(masks: np.ndarray, areas: list[np.ndarray], share: float) -> np.ndarray:
    """``M×K`` bool: True where at least ``share`` of a mask's pixels lie in the area (``masks`` M×P bool,
    ``areas`` K masks of P bool)."""
    sizes = masks.sum(axis=1)
    columns = [(masks & area).sum(axis=1) >= share * sizes for area in areas]
    return np.stack(columns, axis=1) if columns else np.zeros((len(masks), 0), dtype=bool)
