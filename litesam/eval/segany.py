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
* masks whose ground truth is empty after decoding are skipped and counted in ``skipped_empty``.
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
from ..train.annotations import ImageRecord, decode_mask, load_records, read_image
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
    records: Iterable[ImageRecord],
    prompts: tuple[str, ...] = PROMPT_KINDS,
    max_images: int | None = None,
    progress: Callable[[int, ImageRecord], None] | None = None,
) -> dict[str, object]:
    """Run the SegAny protocol (module docstring) over annotated images.

    Args:
        model: the Lite-SAM to evaluate; put in eval mode here.
        records: images with their ground-truth masks (:func:`litesam.train.annotations.load_records`).
        prompts: which prompt kinds to evaluate, a subset of ``("box", "point")``.
        max_images: stop after this many images (None = all).
        progress: called after each image with (images done, record).
    Returns:
        A JSON-serialisable report: ``images``, ``masks`` (trials per prompt kind), ``skipped_empty``,
        ``image_size`` (model input side S), ``seconds``, and one entry per prompt kind with
        ``miou``, ``count`` and ``by_size`` (COCO small/medium/large by ground-truth area).
    Raises:
        ValueError: an unknown prompt kind.
        DatasetError, InvalidImageError: an unreadable image or annotation.
    """
    unknown = set(prompts) - set(PROMPT_KINDS)
    if unknown or not prompts:
        raise ValueError(f"prompts must be a non-empty subset of {PROMPT_KINDS}, got {prompts}")
    model.eval()
    predictor = LiteSamPredictor(model)
    scores = {kind: MeanIoU() for kind in prompts}
    images = masks = skipped = 0
    start = time.perf_counter()
    for record in records:
        if max_images is not None and images >= max_images:
            break
        predictor.set_image(read_image(record))
        for annotation in record.annotations:
            gt = decode_mask(annotation, record.height, record.width)
            area = float(gt.sum())
            if area == 0:
                skipped += 1
                continue
            masks += 1
            if "box" in scores:
                pred, _, _ = predictor.predict(box=mask_box(gt), multimask_output=False)
                scores["box"].add(mask_iou(pred[0], gt), area)
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
        "seconds": round(time.perf_counter() - start, 3),
    }
    report.update({kind: meter.summary() for kind, meter in scores.items()})
    return report


def evaluate_dataset(
    model: LiteSAM,
    data: str | Path,
    images: str | Path | None = None,
    prompts: tuple[str, ...] = PROMPT_KINDS,
    max_images: int | None = None,
    progress: Callable[[int, ImageRecord], None] | None = None,
) -> dict[str, object]:
    """:func:`evaluate_segany` over a COCO annotation file (with its image folder) or SA-1B JSON files.

    Crowd annotations are left out. The report gains ``data`` (the annotation path).
    """
    records = load_records(data, images, include_crowd=False)
    report = evaluate_segany(model, records, prompts=prompts, max_images=max_images, progress=progress)
    return {"data": str(data), **report}
