"""SegAny evaluation: mean IoU with one ground-truth box, or one centre point, per ground-truth mask.

Protocol (the paper's 1-box / 1-point mIoU, SUPP Table 4; the exact rules are NOT RETRIEVED, so these are
ASSUMPTIONS following SAM and EfficientViT-SAM practice):

* every non-crowd ground-truth mask of every image is one trial; its IoU is measured at the original image
  size against the decoded ground truth, and mIoU is the plain mean over masks (not over images);
* **box** prompt: the mask's tight box (pixel-inclusive XYXY, as :func:`litesam.masks.batched_mask_to_box`
  measures it; one-pixel-wide sides widened to two), with ``multimask_output=False``;
* **point** prompt: one foreground point at the mask's innermost pixel (largest distance to the mask
  boundary; the first such pixel in row-major order on ties), which, unlike the centroid, always lies inside
  the mask; ``multimask_output=True`` and the candidate with the highest predicted IoU is kept;
* masks whose ground truth is empty after decoding are skipped and counted in ``skipped_empty``;
* beside mIoU, the **1-box prompt mask AP** (the supplement's "1-box prompt mAP"): each box-prompted mask is
  one detection scored by its predicted IoU, scored against the ground truth by pycocotools' COCOeval
  (:mod:`litesam.eval.coco_ap`);
* a **box-fill baseline** is always measured: the prompt box itself, filled, as the mask (mIoU and AP, score
  1). A box-prompt figure is only worth what it adds over this floor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np
import torch

from ..modeling.lite_sam import LiteSAM
from ..predictor import LiteSamPredictor
from ..train.annotations import ImageRecord, load_records
from ..train.config import LABEL_STUDIO, SYNTHETIC
from ..train.sources import label_studio_records
from ..train.synthetic import HELD_OUT_SEED, SyntheticRecord, synthetic_records
from .coco_ap import MaskAP
from .metrics import MeanIoU, mask_iou

#: The prompt kinds :func:`evaluate_segany` knows.
PROMPT_KINDS = ("box", "point")


def center_point(mask: np.ndarray) -> tuple[int, int]:
    """The innermost pixel of a mask, (x, y) pixel indices.

    Innermost = largest Euclidean distance to the nearest off pixel, with the image border counted as off.

    Args:
        mask: H×W bool with at least one on pixel.
    Raises:
        ValueError: the mask is empty.
    """
    if not mask.any():
        raise ValueError("an empty mask has no centre point")
    padded = np.pad(mask.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(col), int(row)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight pixel-inclusive XYXY box of a non-empty H×W bool mask, float32 (4,).

    A mask one pixel wide (or high) gets x2 = x1 + 1 (y2 = y1 + 1), because a box prompt needs x2 > x1.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x1, y1, x2, y2 = cols[0], rows[0], cols[-1], rows[-1]
    return np.array([x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)], dtype=np.float32)


@torch.no_grad()
def evaluate_segany(
    model: LiteSAM,
    records: Iterable[ImageRecord | SyntheticRecord],
    prompts: tuple[str, ...] = PROMPT_KINDS,
    max_images: int | None = None,
    progress: Callable[[int, ImageRecord], None] | None = None,
) -> dict[str, object]:
    """Run the SegAny protocol (module docstring) over annotated images.

    Args:
        model: the Lite-SAM to evaluate; put in eval mode here.
        records: images with their ground-truth masks (:func:`litesam.train.annotations.load_records` or
            :func:`litesam.train.synthetic.synthetic_records`).
        prompts: which prompt kinds to evaluate, a subset of ``("box", "point")``.
        max_images: stop after this many images (None = all).
        progress: called after each image with (images done, record).
    Returns:
        A JSON-serialisable report: ``images``, ``masks`` (trials per prompt kind), ``skipped_empty``,
        ``image_size`` (model input side S), ``seconds``, and one entry per prompt kind and for
        ``box_fill`` with ``miou``, ``count`` and ``by_size`` (COCO small/medium/large by ground-truth
        area); ``box`` and ``box_fill`` also hold ``ap``, ``ap50``, ``ap75`` (COCOeval segm).
    Raises:
        ValueError: an unknown prompt kind.
        DatasetError, InvalidImageError: an unreadable image or annotation.
    """
    unknown = set(prompts) - set(PROMPT_KINDS)
    if unknown or not prompts:
        raise ValueError(f"prompts must be a non-empty subset of {PROMPT_KINDS}, got {prompts}")
    model.eval()
    predictor = LiteSamPredictor(model)
    scores = {kind: MeanIoU() for kind in (*prompts, "box_fill")}
    box_ap, fill_ap = MaskAP(), MaskAP()
    images = masks = skipped = 0
    start = time.perf_counter()
    for record in records:
        if max_images is not None and images >= max_images:
            break
        predictor.set_image(record.image())
        image_id = box_ap.add_image(record.height, record.width)
        fill_ap.add_image(record.height, record.width)
        for gt in record.instance_masks():
            area = float(gt.sum())
            if area == 0:
                skipped += 1
                continue
            masks += 1
            box = mask_box(gt)
            filled = box_fill(box, gt.shape)
            scores["box_fill"].add(mask_iou(filled, gt), area)
            fill_ap.add(image_id, gt, filled, 1.0)
            if "box" in scores:
                pred, iou, _ = predictor.predict(box=box, multimask_output=False)
                scores["box"].add(mask_iou(pred[0], gt), area)
                box_ap.add(image_id, gt, pred[0], float(iou[0]))
            if "point" in scores:
                point = np.array([center_point(gt)], dtype=np.float32)
                pred, _, _ = predictor.predict(
                    point, np.ones(1, dtype=np.int64), multimask_output=True, best_only=True
                )
                scores["point"].add(mask_iou(pred[0], gt), area)
        images += 1
        if progress is not None:
            progress(images, record)
    report: dict[str, object] = {
        "images": images,
        "masks": masks,
        "skipped_empty": skipped,
        "image_size": model.img_size,
    }
    report.update({kind: meter.summary() for kind, meter in scores.items()})
    if "box" in report:
        report["box"].update(box_ap.summary())
    report["box_fill"].update(fill_ap.summary())
    report["seconds"] = round(time.perf_counter() - start, 3)
    return report


def box_fill(box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The baseline mask of a box prompt: the pixel-inclusive XYXY ``box`` filled, H×W bool."""
    mask = np.zeros(shape, dtype=bool)
    x1, y1, x2, y2 = (int(v) for v in box)
    mask[y1 : y2 + 1, x1 : x2 + 1] = True
    return mask


def load_eval_records(
    data: str | Path,
    images: str | Path | None = None,
    synthetic_images: int = 60,
    synthetic_seed: int = HELD_OUT_SEED,
    label_studio: tuple[str | None, int | None, str] = (None, None, "held-out"),
) -> list[ImageRecord | SyntheticRecord]:
    """Records to evaluate: a COCO annotation file (with its image folder; crowd regions are no trials, kept
    as the ignored areas of SegEvery recall), SA-1B JSON files, ``"synthetic"``: generated scenes, by default the held-out set (seed 1), or
    ``"labelstudio"``: the tasks of a Label Studio project, ``label_studio`` = (URL, project id, split),
    by default its held-out tasks (only their brush and polygon masks are scored; rectangles are boxes)."""
    if str(data) == SYNTHETIC:
        return synthetic_records(synthetic_images, synthetic_seed)
    if str(data) == LABEL_STUDIO:
        return label_studio_records(*label_studio)
    return load_records(data, images)


def evaluate_dataset(
    model: LiteSAM,
    data: str | Path,
    images: str | Path | None = None,
    prompts: tuple[str, ...] = PROMPT_KINDS,
    max_images: int | None = None,
    progress: Callable[[int, ImageRecord], None] | None = None,
    synthetic_images: int = 60,
    synthetic_seed: int = HELD_OUT_SEED,
) -> dict[str, object]:
    """:func:`evaluate_segany` over :func:`load_eval_records`; the report gains ``data``."""
    records = load_eval_records(data, images, synthetic_images, synthetic_seed)
    report = evaluate_segany(model, records, prompts=prompts, max_images=max_images, progress=progress)
    return {"data": str(data), **report}
