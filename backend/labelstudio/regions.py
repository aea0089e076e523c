"""Label Studio annotation regions → the instance masks a training set is made of.

One annotation of a task becomes (labelstudio-protocol.md §1.6–1.7 for the region shapes):

* ``brushlabels`` (``brush``): the brush RLE decoded at its ``original_width × original_height``
  (:func:`~backend.labelstudio.brush_rle.brush_rle_to_mask`); when the decoded image has another size, the
  mask is resized onto it (nearest neighbour);
* ``polygonlabels`` (``polygon``): ``value.points`` ``[[x, y], …]`` in percent of the natural size, rasterised
  at the decoded image's size: a pixel is on when its centre lies inside the ring (even-odd rule; the rings
  :mod:`~backend.labelstudio.polygons` writes run along pixel edges, with bridged holes, so they read back as
  the mask they came from);
* ``rectanglelabels`` (``rectangle``): ``x, y`` (top-left corner), ``width``, ``height`` in percent and
  ``rotation`` in degrees clockwise about that corner; it becomes a **box-only** instance: the rectangle's
  area (rotated as drawn) shapes AutoPPN's heat and box targets (where an object is and how big), and it never
  enters the mask loss or the evaluation. A rectangle says where an object is, not which pixels are its:
  filled as a mask it would teach the decoder the box-fill baseline, the one answer a SAM fine-tune must beat.

Frames: percent of ``original_width × original_height``, which Label Studio takes from the browser's
``naturalWidth × naturalHeight`` (the EXIF-transposed image) → pixels of the image as decoded with its EXIF
orientation applied (:func:`backend.images.decode_image`), rows top to bottom, ``[row, col] = [y, x]``.

Which annotation of a task (:func:`choose_annotation`): cancelled (skipped) ones never count; among the rest,
the latest ground-truth one when a reviewer flagged one, else the latest one (``updated_at``, then id): the
team's most recent correction is what the model learns.
"""

from __future__ import annotations

import math

import numpy as np

from litesam.errors import DatasetError, InvalidMaskError

from .brush_rle import brush_rle_to_mask

MASK_TYPES = {"brushlabels": "brush", "brush": "brush", "polygonlabels": "polygon", "polygon": "polygon"}
BOX_TYPES = ("rectanglelabels", "rectangle")


def choose_annotation(annotations: list[dict]) -> dict | None:
    """The annotation a task is trained on (module docstring), or None when every one was cancelled."""
    kept = [a for a in annotations if not a.get("was_cancelled")]
    if not kept:
        return None
    flagged = [a for a in kept if a.get("ground_truth")]
    return max(flagged or kept, key=_saved_at)


def _saved_at(annotation: dict) -> tuple[str, int]:
    """When an annotation was last saved (Label Studio's ISO-8601 UTC times sort as text), then its id."""
    return str(annotation.get("updated_at") or annotation.get("created_at") or ""), annotation.get("id") or 0


def region_kind(region: dict) -> str | None:
    """``"brush"``, ``"polygon"``, ``"box"`` for the region types read here, else None (keypoints, choices…)."""
    kind = str(region.get("type", "")).lower()
    return MASK_TYPES.get(kind) or ("box" if kind in BOX_TYPES else None)


def region_mask(region: dict, height: int, width: int) -> np.ndarray:
    """The H×W bool pixels of a brush, polygon or rectangle region on the decoded image (module docstring).

    Raises:
        DatasetError: an unknown region type or a malformed value (the message says what, not which task).
    """
    kind = region_kind(region)
    value = region.get("value")
    if not isinstance(value, dict):
        raise DatasetError("a region without a 'value' object")
    if kind == "brush":
        return _brush(region, value, height, width)
    if kind == "polygon":
        points = value.get("points")
        if not isinstance(points, list) or len(points) < 3:
            raise DatasetError("a polygon region needs at least 3 points")
        return rasterise_polygon(_percent_to_px(points, height, width), height, width)
    if kind == "box":
        return rasterise_polygon(rectangle_corners(value, height, width), height, width)
    raise DatasetError(f"regions of type {region.get('type')!r} are not masks or boxes")


def rectangle_corners(value: dict, height: int, width: int) -> np.ndarray:
    """4×2 float64 (x, y) corners in pixels of a rectangle region's value, rotation applied (clockwise
    degrees about the top-left corner, as Label Studio draws it): top-left, top-right, bottom-right,
    bottom-left."""
    try:
        x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
        rotation = float(value.get("rotation", 0) or 0)
    except (KeyError, TypeError, ValueError):
        raise DatasetError("a rectangle region needs numbers x, y, width, height (and rotation)") from None
    if not all(math.isfinite(v) for v in (x, y, w, h, rotation)) or w <= 0 or h <= 0:
        raise DatasetError("a rectangle region needs finite numbers and a positive width and height")
    theta = math.radians(rotation)
    along = np.array([0.0, w, w, 0.0]) / 100 * width
    down = np.array([0.0, 0.0, h, h]) / 100 * height
    xs = x / 100 * width + along * math.cos(theta) - down * math.sin(theta)
    ys = y / 100 * height + along * math.sin(theta) + down * math.cos(theta)
    return np.stack([xs, ys], axis=1)


def rasterise_polygon(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """H×W bool: pixels whose centre ``(col + 0.5, row + 0.5)`` lies inside the closed ring (even-odd rule).

    Args:
        points: N×2 (x, y) in pixels, x right, y down, 0 at the top-left corner of the top-left pixel.
    """
    points = np.asarray(points, dtype=np.float64)
    start, end = points, np.roll(points, -1, axis=0)
    centres_y = np.arange(height) + 0.5
    low, high = np.minimum(start[:, 1], end[:, 1]), np.maximum(start[:, 1], end[:, 1])
    # Each edge crosses the rows whose centre line it spans half-open ([low, high)): a vertex on a centre
    # line is counted once, a horizontal edge never.
    crosses = (centres_y[:, None] >= low[None, :]) & (centres_y[:, None] < high[None, :])
    rows, edges = np.nonzero(crosses)
    t = (centres_y[rows] - start[edges, 1]) / (end[edges, 1] - start[edges, 1])
    xs = start[edges, 0] + t * (end[edges, 0] - start[edges, 0])
    # A pixel is inside when an odd number of crossings lie left of its centre on its row.
    first = np.clip(np.ceil(xs - 0.5), 0, width).astype(np.int64)  # first pixel whose centre is right of x
    toggles = np.zeros((height, width + 1), dtype=np.int32)
    np.add.at(toggles, (rows, first), 1)
    return (np.cumsum(toggles, axis=1)[:, :width] % 2).astype(bool)


def _percent_to_px(points: list, height: int, width: int) -> np.ndarray:
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError("polygon points must be [x, y] pairs of numbers") from None
    if array.ndim != 2 or array.shape[1] != 2 or not np.isfinite(array).all():
        raise DatasetError("polygon points must be finite [x, y] pairs")
    return array / 100.0 * np.array([width, height])


def _brush(region: dict, value: dict, height: int, width: int) -> np.ndarray:
    size = region.get("original_height", height), region.get("original_width", width)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise DatasetError("a brush region needs positive integer original_width and original_height")
    if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
        raise DatasetError("a brush region needs value.format 'rle' and a value.rle list")
    try:
        mask = brush_rle_to_mask(value["rle"], *size)
    except InvalidMaskError as error:
        raise DatasetError(f"invalid brush RLE: {error}") from None
    if mask.shape == (height, width):
        return mask
    rows = np.minimum(((np.arange(height) + 0.5) * size[0] / height).astype(int), size[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * size[1] / width).astype(int), size[1] - 1)
    return mask[rows[:, None], cols[None, :]]
