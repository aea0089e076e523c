"""Choosing the SegEvery mask filters for a model's weights by measurement (``litesam calibrate``).

SAM's automatic-mask-generator thresholds (predicted IoU ≥ 0.88, stability ≥ 0.95) were set for SAM ViT-H. A
smaller or differently trained model's masks can be right (IoU ≥ 0.5 with an instance) far below that bar,
and its IoU head predicts lower values for them, so the filters are a property of the weights. The rule:

    on calibration scenes (never the held-out scenes that are reported), among the settings of
    :data:`PRED_IOU_GRID` × :data:`STABILITY_GRID` (× :data:`PROPOSAL_SCORE_GRID` for AutoPPN prompts),
    take the one with the highest instance recall at mask IoU 0.5 whose kept masks are at least
    ``min_precision`` right (the share of SegEvery's masks, after box NMS, that match an instance at IoU
    0.5); ties go to the more precise setting, then to the higher proposal-score, predicted-IoU and
    stability thresholds (a higher proposal threshold also decodes fewer prompts).

AutoPPN's proposal score (its confidence that a point starts an instance) is a third filter the grid of
SAM's prompts does not have: it removes false positives that the IoU head rates well. On the learning
proof's checkpoint (``bench/train_proof.py``, Intel Xeon, 2026-12-07), choosing it too raised the
calibration scenes' recall at precision ≥ 0.95 from 0.732 (predicted IoU ≥ 0.8, stability ≥ 0.9, the
variant's proposal threshold 0.3) to 0.851 (0.75, 0.8, proposal score ≥ 0.5), and the held-out recall from
0.683 to 0.781 (precision 0.963 and 0.947).

The instances are either annotations (any labelled set) or, label-free, a teacher's own SegEvery masks on
unlabeled images (:func:`teacher_scenes`): a distilled student is calibrated against the teacher it mimics,
as the teacher is served (its own filters: its checkpoint's, else SAM's; ``litesam distill`` may have made
its pseudo-masks with other filters).

Masks inside ignored areas (box-only instances, COCO crowd regions) are left out as in :mod:`litesam.eval.recall`.

SegEvery runs once per image with the filters open and NMS off; each candidate's match with every instance
is computed once (:class:`Candidates`, one prompt batch at a time, whose masks are then dropped: memory holds
``points_per_batch`` prompts' masks, not an image's), and each setting is applied to the candidates with
SegEvery's own filters and box NMS (:meth:`Candidates.kept`), so the grid costs one pass. The one difference:
SegEvery's NMS compares the boxes of the low-resolution masks, :meth:`Candidates.kept` those of the full-size
masks it returned. Measured on 60 held-out synthetic scenes × 3 pairs: the same masks for 179 of 180 (the
demo checkpoint) and 176 of 180 (a distilled student) image-pair cases, one mask apart in the rest.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import LiteSamError
from ..everything import SegEvery, SegEveryConfig
from ..masks import box_nms
from ..modeling.lite_sam import LiteSAM
from .recall import MatchTally, instances_and_ignored, match_matrices

#: Candidate predicted-IoU thresholds (SAM's 0.88 first).
PRED_IOU_GRID = (0.88, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)
#: Candidate stability-score thresholds (SAM's 0.95 first).
STABILITY_GRID = (0.95, 0.9, 0.85, 0.8, 0.7)
#: Candidate AutoPPN proposal-score thresholds (AutoPPN prompts only; the variants' default 0.3 first: the
#: candidates are the proposals it passes, so lower ones cannot be scored).
PROPOSAL_SCORE_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)

#: One calibration scene: the H×W×3 uint8 RGB image, its instances and its ignored areas (box-only
#: instances, crowd regions), each a flattened H·W bool mask.
Scene = tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class FilterScore:
    """What one filter setting keeps on the calibration scenes (``recall``/``precision`` in [0, 1];
    ``masks`` counts every kept mask, ``ignored`` those matching no instance but inside an ignored area, left
    out of the precision). ``proposal_score_thresh`` is None for grid prompts (they have no score)."""

    pred_iou_thresh: float
    stability_score_thresh: float
    proposal_score_thresh: float | None
    recall: float
    precision: float
    masks: int
    instances: int
    ignored: int

    @property
    def filters(self) -> dict[str, float]:
        """The setting as SegEvery settings (:meth:`SegEveryConfig.for_variant`'s keyword arguments)."""
        filters = {"pred_iou_thresh": self.pred_iou_thresh, "stability_score_thresh": self.stability_score_thresh}
        if self.proposal_score_thresh is not None:
            filters["proposal_score_thresh"] = self.proposal_score_thresh
        return filters

    def describe(self) -> str:
        """The thresholds in words, e.g. "predicted IoU ≥ 0.75, stability ≥ 0.8, proposal score ≥ 0.5"."""
        words = f"predicted IoU ≥ {self.pred_iou_thresh}, stability ≥ {self.stability_score_thresh}"
        if self.proposal_score_thresh is not None:
            words += f", proposal score ≥ {self.proposal_score_thresh}"
        return words


@dataclass(frozen=True)
class Calibration:
    """The outcome of :func:`calibrate`: every setting's score (grid order) and the chosen one."""

    table: list[FilterScore]
    chosen: FilterScore
    scenes: int
    min_precision: float
    box_nms_thresh: float
    prompt_mode: str
    points_per_side: int

    def record(self, truth: str) -> dict:
        """What a checkpoint stores about how its filters were chosen; ``truth`` names the instances used."""
        return {
            "rule": f"highest recall at mask IoU 0.5 with precision ≥ {self.min_precision}",
            "truth": truth,
            "scenes": self.scenes,
            "instances": self.chosen.instances,
            "recall": round(self.chosen.recall, 4),
            "precision": round(self.chosen.precision, 4),
            "masks": self.chosen.masks,
            "box_nms_thresh": self.box_nms_thresh,
            "prompts": "AutoPPN" if self.prompt_mode == "autoppn" else f"{self.points_per_side}×{self.points_per_side} grid",
        }


def calibrate(
    model: LiteSAM,
    scenes: Iterable[Scene],
    min_precision: float = 0.95,
    box_nms_thresh: float = 0.7,
    points_per_side: int | None = None,
) -> Calibration:
    """Score every filter setting on ``scenes`` and choose one by the module's rule.

    The model's other SegEvery settings are its defaults (:meth:`SegEveryConfig.for_model`): its prompt mode
    and AutoPPN decoding; ``points_per_side`` replaces the point grid of a model without an AutoPPN head (SAM's
    32 → 3,072 candidate masks an image, matched one prompt batch at a time). Raises :class:`LiteSamError`
    when no scene has an instance, no setting reaches ``min_precision``, or those that do recover nothing.
    """
    if not 0.0 <= min_precision <= 1.0:
        raise ValueError(f"min_precision must be in [0, 1], got {min_precision}")
    # Filters open (down to the grid's lowest proposal score) and NMS off: every candidate, so each setting
    # can be applied afterwards.
    grid = {} if points_per_side is None else {"points_per_side": points_per_side}
    config = SegEveryConfig.for_model(
        model, pred_iou_thresh=0.0, stability_score_thresh=0.0, proposal_score_thresh=PROPOSAL_SCORE_GRID[0],
        box_nms_thresh=1.0, **grid
    )
    generator = SegEvery(model, config)
    candidates = [Candidates.of(generator.candidates(image), truths, ignored) for image, truths, ignored in scenes]
    instances = sum(c.instances for c in candidates)
    if instances == 0:
        raise LiteSamError("the calibration scenes hold no instance")
    proposal_grid = PROPOSAL_SCORE_GRID if generator.config.prompt_mode == "autoppn" else (None,)
    table = [
        _score(candidates, pred_iou, stability, proposal, box_nms_thresh)
        for pred_iou, stability, proposal in itertools.product(PRED_IOU_GRID, STABILITY_GRID, proposal_grid)
    ]
    eligible = [row for row in table if row.precision >= min_precision]
    if not eligible:
        best = max(table, key=lambda row: row.precision)
        raise LiteSamError(
            f"no filter setting keeps ≥ {min_precision:.2f} of its masks right on these {len(candidates)} scenes "
            f"(best: {best.precision:.3f} at {best.describe()})"
        )
    chosen = max(eligible, key=lambda row: (row.recall, row.precision, row.proposal_score_thresh or 0.0,
                                            row.pred_iou_thresh, row.stability_score_thresh))
    if chosen.recall == 0.0:
        raise LiteSamError(
            f"no filter setting with ≥ {min_precision:.2f} of its masks right recovers any instance on these "
            f"{len(candidates)} scenes (weights that segment nothing yet?)"
        )
    return Calibration(table, chosen, len(candidates), min_precision, box_nms_thresh, generator.config.prompt_mode,
                       generator.config.points_per_side)


#: What :class:`Candidates` keeps of a SegEvery record once its mask is matched.
_SCORES = ("predicted_iou", "stability_score", "proposal_score", "bbox")


@dataclass(frozen=True)
class Candidates:
    """One scene's open-filter SegEvery masks (M), reduced to what choosing a filter pair needs; the masks
    themselves are not kept.

    Attributes:
        predicted_iou, stability: M float32, the records' scores.
        proposal_score: M float32, AutoPPN's confidence of each mask's prompt (1 for grid prompts).
        boxes: M×4 float32, XYXY image px (from the records' XYWH boxes).
        matched: M×N bool, mask ↔ instance at IoU ≥ 0.5; inside: M×K bool, mask ≥ half inside ignored area.
    """

    predicted_iou: np.ndarray
    stability: np.ndarray
    proposal_score: np.ndarray
    boxes: torch.Tensor
    matched: np.ndarray
    inside: np.ndarray

    @classmethod
    def of(cls, batches: Iterable[list[dict]], truths: list[np.ndarray], ignored: list[np.ndarray]) -> Candidates:
        """From SegEvery's binary-mask records in batches (:meth:`SegEvery.candidates`; each batch's masks are
        matched, then dropped) and the scene's flattened instances and ignored areas."""
        records: list[dict] = []
        matched = [np.zeros((0, len(truths)), dtype=bool)]
        inside = [np.zeros((0, len(ignored)), dtype=bool)]
        for batch in batches:
            masks = [r["segmentation"].reshape(-1) for r in batch]
            batch_matched, batch_inside = match_matrices(masks, truths, ignored)
            matched.append(batch_matched)
            inside.append(batch_inside)
            records += [{key: r[key] for key in _SCORES} for r in batch]
        scores = np.array([1.0 if r["proposal_score"] is None else r["proposal_score"] for r in records],
                          dtype=np.float32)
        predicted_iou = np.array([r["predicted_iou"] for r in records], dtype=np.float32)
        return cls(
            predicted_iou,
            np.array([r["stability_score"] for r in records], dtype=np.float32),
            scores,
            torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in records)],
                         dtype=torch.float32).reshape(-1, 4),
            np.concatenate(matched),
            np.concatenate(inside),
        )

    @property
    def ranking(self) -> torch.Tensor:
        """M float32, SegEvery's NMS order: predicted IoU × proposal score."""
        return torch.from_numpy(self.predicted_iou * self.proposal_score)

    @property
    def instances(self) -> int:
        return self.matched.shape[1]

    def kept(self, pred_iou: float, stability: float, nms: float, proposal_score: float | None = None) -> np.ndarray:
        """Indices of the candidates SegEvery would keep with these thresholds and box NMS, best first
        (``proposal_score`` None: no proposal-score filter)."""
        passing = (self.predicted_iou >= np.float32(pred_iou)) & (self.stability >= np.float32(stability))
        if proposal_score is not None:
            passing &= self.proposal_score >= np.float32(proposal_score)
        passing = np.flatnonzero(passing)
        if not len(passing):
            return passing
        index = torch.from_numpy(passing)
        return passing[box_nms(self.boxes[index], self.ranking[index], nms).numpy()]


def annotated_scenes(records: Iterable) -> Iterator[Scene]:
    """Scenes from annotated records (``image()``, ``instance_masks()``, optionally ``box_masks()`` and
    ``crowd_masks()``; empty masks left out)."""
    for record in records:
        yield record.image(), *instances_and_ignored(record)


def teacher_scenes(teacher: LiteSAM, images: Iterable[np.ndarray]) -> Iterator[Scene]:
    """Label-free scenes: each image with the teacher's SegEvery masks (its own default settings) as the
    instances."""
    generator = SegEvery(teacher, output_mode="binary_mask")
    for image in images:
        yield image, [record["segmentation"].reshape(-1) for record in generator.generate(image)], []


def _score(
    candidates: list[Candidates], pred_iou: float, stability: float, proposal: float | None, nms: float
) -> FilterScore:
    """One setting's counts over the scenes; one that keeps no scored mask is precise (1.0), recovering nothing."""
    tally = MatchTally()
    for scene in candidates:
        kept = scene.kept(pred_iou, stability, nms, proposal)
        tally.add(scene.matched[kept], scene.inside[kept])
    precision = 1.0 if tally.precision is None else tally.precision
    return FilterScore(pred_iou, stability, proposal, tally.recall or 0.0, precision, tally.masks, tally.instances,
                       tally.ignored)
