"""Masks → Label Studio results: ``brushlabels`` or ``polygonlabels`` regions (labelstudio-protocol.md §1.7).

A brush region carries the mask as a brush RLE of ``original_width × original_height × 4`` values, 255 on
and 0 off (the frontend draws a pixel where alpha ≠ 0 and keeps the alpha), so the mask must have the
image's natural, EXIF-transposed size. A mask given to a ``<PolygonLabels>`` becomes one closed polygon
region per part (:mod:`backend.labelstudio.polygons`: holes bridged, simplified), points in percent of that
size.
"""

from __future__ import annotations

import uuid

import numpy as np

from .brush_rle import mask_to_brush_rle
from .label_config import OutputTag
from .polygons import DEFAULT_TOLERANCE_PX, mask_polygons, percent_points


def mask_regions(
    mask: np.ndarray,
    tag: OutputTag,
    *,
    label: str,
    score: float,
    tolerance: float = DEFAULT_TOLERANCE_PX,
    image_rotation: float = 0,
    item_index: int | None = None,
) -> list[dict]:
    """The regions of one mask for the output tag ``tag``: one brush region, or one polygon region per part
    of the mask (none for a mask without a part of :data:`~backend.labelstudio.polygons.MIN_AREA_PX` pixels).

    Args:
        mask: H×W bool (or nonzero = on) at the image's natural size.
        tag: the ``<BrushLabels>`` or ``<PolygonLabels>`` the regions belong to.
        label: a label value of that tag.
        score: the mask's predicted IoU.
        tolerance: the polygons' simplification tolerance in pixels (polygon tags only).
        image_rotation, item_index: copied into the regions (see :func:`brush_region`).
    """
    common = {"from_name": tag.from_name, "to_name": tag.to_name, "label": label, "score": score}
    extra = {"image_rotation": image_rotation, "item_index": item_index}
    if tag.kind == "brush":
        return [brush_region(mask, **common, **extra)]
    height, width = mask.shape
    return [
        _region(
            "polygonlabels",
            width,
            height,
            {"points": percent_points(ring, width, height), "closed": True, "polygonlabels": [label]},
            **common,
            **extra,
        )
        for ring in mask_polygons(mask, tolerance)
    ]


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
    value = {"format": "rle", "rle": mask_to_brush_rle(mask), "brushlabels": [label]}
    return _region(
        "brushlabels",
        width,
        height,
        value,
        from_name=from_name,
        to_name=to_name,
        label=label,
        score=score,
        image_rotation=image_rotation,
        item_index=item_index,
    )


def _region(
    kind: str,
    width: int,
    height: int,
    value: dict,
    *,
    from_name: str,
    to_name: str,
    label: str,
    score: float,
    image_rotation: float,
    item_index: int | None,
) -> dict:
    region = {
        "id": uuid.uuid4().hex[:10],
        "from_name": from_name,
        "to_name": to_name,
        "type": kind,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": image_rotation,
        "value": value,
        "score": float(score),
        "readonly": False,
    }
    if item_index is not None:
        region["item_index"] = item_index
    return region


def region_size(region: dict) -> int:
    """How many numbers a region's value carries (RLE values or polygon coordinates): the writer cuts batches
    by it."""
    value = region["value"]
    return len(value["rle"]) if "rle" in value else 2 * len(value.get("points", ()))


def prediction(regions: list[dict], model_version: str) -> dict:
    """One task's prediction: the regions, the model version and the mean region score."""
    scores = [r["score"] for r in regions]
    return {
        "result": regions,
        "model_version": model_version,
        "score": float(np.mean(scores)) if scores else 0.0,
    }
