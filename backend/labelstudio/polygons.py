"""Masks → polygons, the shape of Label Studio ``polygonlabels`` regions (one closed ring of points each).

A Label Studio polygon is a single ring without holes, so a mask becomes rings like this
(the measurements behind each choice: ``bench/polygons.py``, README "Polygon output"):

* **parts**: each 8-connected part of the mask gives its own ring (one region per part, same label and score);
  parts smaller than :data:`MIN_AREA_PX` pixels are dropped (specks a labeler would only delete);
* **holes**: a hole of at least :data:`MIN_AREA_PX` pixels is *bridged*: the ring runs along the part's outline
  to the hole's nearest vertex, around the hole the other way and back along the same cut. The cut has no
  width, so the ring covers exactly the part minus its hole under both fill rules (even-odd and nonzero):
  Label Studio draws it with the hole, and the COCO export (area and mask) has the hole. Smaller holes are
  filled;
* **pixel edges**: OpenCV's contours run through the centres of the boundary pixels; each ring is moved
  outwards by half a pixel (holes inwards), so it runs along the pixel edges the brush mask shows, and a
  rasteriser that tests pixel centres gives the mask back instead of losing its boundary pixels;
* **simplified** with Douglas–Peucker at a tolerance in pixels (``LITESAM_POLYGON_TOLERANCE``, job option
  ``polygon_tolerance``). :data:`DEFAULT_TOLERANCE_PX` = 1 px keeps the rasterised polygon's IoU with its
  mask ≥ 0.95 for every benchmark shape from 96 px up and for discs, ellipses, rotated boxes and rings from
  48 px up; 0.5 px reaches that for every shape from 48 px up but needs 2–6× the vertices (staircase steps).

Frame: points are (x, y) in pixels of the mask (natural image size), x right, y down, 0 at the top-left
corner of the top-left pixel; :func:`percent_points` turns them into Label Studio's percent of the size.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Douglas–Peucker tolerance in pixels (see the module docstring for how it was chosen).
DEFAULT_TOLERANCE_PX = 1.0
#: Parts and holes with fewer pixels than this are dropped (parts) or filled (holes).
MIN_AREA_PX = 9
#: Largest outward shift of a vertex relative to the half-pixel offset (a miter limit for sharp corners).
_MITER_LIMIT = 2.0


def mask_polygons(mask: np.ndarray, tolerance: float = DEFAULT_TOLERANCE_PX) -> list[np.ndarray]:
    """The rings of a mask, largest part first.

    Args:
        mask: H×W, nonzero = on.
        tolerance: Douglas–Peucker tolerance in pixels (0 keeps every contour vertex).
    Returns:
        one N×2 float64 array of (x, y) pixel coordinates per part (N ≥ 3), holes bridged in.
    """
    binary = (np.asarray(mask) != 0).astype(np.uint8)
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    links = hierarchy[0]  # per contour: next, previous, first child, parent
    rings = []
    for index, contour in enumerate(contours):
        if links[index][3] != -1:  # a hole: handled with its part
            continue
        outer = _ring(contour, tolerance, outwards=True)
        if outer is None:
            continue
        child = links[index][2]
        while child != -1:
            hole = _ring(contours[child], tolerance, outwards=False)
            if hole is not None:
                outer = _bridge(outer, hole)
            child = links[child][0]
        rings.append(outer)
    rings.sort(key=lambda ring: -abs(_signed_area(ring)))
    return rings


def percent_points(ring: np.ndarray, width: int, height: int) -> list[list[float]]:
    """A ring in Label Studio's frame: [[x, y], …] in percent (0–100) of ``width`` × ``height``, clipped."""
    scaled = ring / np.array([width, height], dtype=np.float64) * 100.0
    return np.round(np.clip(scaled, 0.0, 100.0), 4).tolist()


def _ring(contour: np.ndarray, tolerance: float, *, outwards: bool) -> np.ndarray | None:
    """One contour (OpenCV, through boundary pixel centres) → a simplified ring on the pixel edges, or None
    when it encloses fewer than :data:`MIN_AREA_PX` pixels."""
    points = contour.reshape(-1, 2).astype(np.float64) + 0.5  # pixel centres in the continuous frame
    if len(points) >= 3:
        points = cv2.approxPolyDP(points.astype(np.float32), tolerance, True).reshape(-1, 2).astype(np.float64)
    if len(points) < 3:
        return None
    area = _signed_area(points)
    if area == 0:
        return None
    ring = _offset(points, 0.5 if outwards else -0.5, clockwise_positive=area > 0)
    return ring if abs(_signed_area(ring)) >= MIN_AREA_PX else None


def _offset(points: np.ndarray, distance: float, *, clockwise_positive: bool) -> np.ndarray:
    """Move every vertex ``distance`` pixels away from the ring's interior (negative: into it), along the
    bisector of its two edges' normals (a miter, limited to :data:`_MITER_LIMIT` × distance)."""
    edges = np.roll(points, -1, axis=0) - points
    lengths = np.linalg.norm(edges, axis=1, keepdims=True)
    lengths[lengths == 0] = 1.0
    directions = edges / lengths
    # with a positive signed area (shoelace), (dy, -dx) points away from the interior
    normals = np.stack([directions[:, 1], -directions[:, 0]], axis=1)
    if not clockwise_positive:
        normals = -normals
    incoming = np.roll(normals, 1, axis=0)
    bisector = incoming + normals
    cos_half = np.sum(bisector * normals, axis=1, keepdims=True) / np.maximum(
        np.linalg.norm(bisector, axis=1, keepdims=True), 1e-12
    )
    scale = np.minimum(1.0 / np.maximum(cos_half, 1e-12), _MITER_LIMIT)
    unit = bisector / np.maximum(np.linalg.norm(bisector, axis=1, keepdims=True), 1e-12)
    return points + unit * scale * distance


def _bridge(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """One ring: ``outer`` up to its vertex nearest the hole, around ``hole`` in the opposite sense to
    ``outer``'s, and back along the same zero-width cut."""
    if (_signed_area(outer) > 0) == (_signed_area(hole) > 0):
        hole = hole[::-1]
    distances = np.sum((outer[:, None, :] - hole[None, :, :]) ** 2, axis=2)
    i, j = np.unravel_index(int(np.argmin(distances)), distances.shape)
    around = np.concatenate([hole[j:], hole[: j + 1]])
    return np.concatenate([outer[: i + 1], around, outer[i:]])


def _signed_area(points: np.ndarray) -> float:
    """Shoelace area in pixels² (its sign is the ring's sense)."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
