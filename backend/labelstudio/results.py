"""Masks → Label Studio ``brushlabels`` results (labelstudio-protocol.md §1.7).

A result region carries the mask as a brush RLE of ``original_width × original_height × 4`` values, 255 on
and 0 off (the frontend draws a pixel where alpha ≠ 0 and keeps the alpha), so the mask must have the
image's natural, EXIF-transposed size.
"""

from __future__ import annotations

import uuid

import numpy as np

from .brush_rle import mask_to_brush_rle


def brush_region(
    mask: np.ndarray,
    *,
    from_name: str,
    to_name: str,
    label: str,
    score: float,
    image_rotation: float = 0,
    item_index: int | None = None,
) -> dict:
    """One ``brushlabels`` region.

    Args:
        mask: H×W bool (or nonzero = on) at the image's natural size; H, W become original_height/width.
        from_name, to_name: the ``<BrushLabels>`` name and its ``<Image>``.
        label: a label value of that ``<BrushLabels>``.
        score: the mask's predicted IoU.
        image_rotation: copied from the prompt regions.
        item_index: image index inside a multi-image task, when there is one.
    """
    height, width = mask.shape
    region = {
        "id": uuid.uuid4().hex[:10],
        "from_name": from_name,
        "to_name": to_name,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": image_rotation,
        "value": {"format": "rle", "rle": mask_to_brush_rle(mask), "brushlabels": [label]},
        "score": float(score),
        "readonly": False,
    }
    if item_index is not None:
        region["item_index"] = item_index
    return region


def prediction(regions: list[dict], model_version: str) -> dict:
    """One task's prediction: the regions, the model version and the mean region score."""
    scores = [r["score"] for r in regions]
    return {
        "result": regions,
        "model_version": model_version,
        "score": float(np.mean(scores)) if scores else 0.0,
    }
