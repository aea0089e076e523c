"""Measurement: how well the polygons of ``backend.labelstudio.polygons`` reproduce their masks.

For masks shaped like objects (discs, ellipses, rotated boxes, smooth irregular blobs with holes and several
parts, rings) at object sizes from 12 to 384 px, every tolerance in ``--tolerances`` is tried: the mask's
polygons are rasterised the way a COCO consumer does (``pycocotools`` ``frPyObjects`` → ``decode``, the format
Label Studio's COCO export writes) and compared with the mask. Printed per size and tolerance: the smallest and
mean IoU and the mean vertex count per mask; the last table compares bridging holes with dropping them.
This chose ``DEFAULT_TOLERANCE_PX`` (README "Polygon output" has the numbers).

    python bench/polygons.py [--tolerances 0,0.5,1,1.5,2,3] [--seeds 8]
"""

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.labelstudio import polygons  # noqa: E402


def shapes(size: int, seed: int) -> dict[str, np.ndarray]:
    """Masks of one object scale ``size`` (px) on a canvas with a margin; ``seed`` varies position/shape."""
    rng = np.random.default_rng(seed)
    canvas = int(size * 1.6) + 8
    yy, xx = np.mgrid[:canvas, :canvas].astype(np.float64)
    cy, cx = canvas / 2 + rng.uniform(-2, 2, size=2)
    r = size / 2
    angle = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    field = np.zeros_like(xx)
    for _ in range(5):
        f = rng.uniform(0.5, 1.5, size=2) / size
        phase = rng.uniform(0, 2 * np.pi, size=2)
        field += np.sin(2 * np.pi * f[0] * yy + phase[0]) * np.cos(2 * np.pi * f[1] * xx + phase[1])
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
    return {
        "disc": inside,
        "ellipse": (u / r) ** 2 + (v / (0.55 * r)) ** 2 < 1,
        "rotated box": (np.abs(u) < r) & (np.abs(v) < 0.6 * r),
        "blob": inside & (field > 0.3),  # irregular: several parts, holes
        "ring": inside & ((xx - cx) ** 2 + (yy - cy) ** 2 > (0.5 * r) ** 2),
    }


def rasterise(rings: list[np.ndarray], height: int, width: int) -> np.ndarray:
    if not rings:
        return np.zeros((height, width), bool)
    objs = coco_mask.frPyObjects([ring.reshape(-1).tolist() for ring in rings], height, width)
    return coco_mask.decode(coco_mask.merge(objs)).astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def drop_holes(mask: np.ndarray, tolerance: float) -> list[np.ndarray]:
    """The alternative to bridging: every part's outer ring only."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    rings = [polygons._ring(c, tolerance, outwards=True) for c in contours]
    return [r for r in rings if r is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerances", default="0,0.5,1,1.5,2,3")
    parser.add_argument("--sizes", default="12,24,48,96,192,384")
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    tolerances = [float(t) for t in args.tolerances.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"# {platform.machine()} {platform.processor() or ''}, load average {os.getloadavg()}")
    print("size  tol   min IoU  mean IoU  vertices/mask")
    hole_rows = []
    for size in sizes:
        cases = [(name, m) for seed in range(args.seeds) for name, m in shapes(size, seed).items()]
        for tolerance in tolerances:
            ious, vertices, by_shape = [], [], {}
            for name, mask in cases:
                rings = polygons.mask_polygons(mask, tolerance)
                value = iou(rasterise(rings, *mask.shape), mask)
                ious.append(value)
                vertices.append(sum(len(r) for r in rings))
                by_shape[name] = min(by_shape.get(name, 2.0), value)
            shapes_text = " ".join(f"{n} {v:.3f}" for n, v in by_shape.items())
            print(
                f"{size:4d}  {tolerance:3.1f}  {min(ious):7.3f}  {np.mean(ious):8.3f}  "
                f"{np.mean(vertices):13.1f}  min per shape: {shapes_text}"
            )
        for name in ("blob", "ring"):
            masks = [m for n, m in cases if n == name]
            bridged = [iou(rasterise(polygons.mask_polygons(m), *m.shape), m) for m in masks]
            dropped = [iou(rasterise(drop_holes(m, polygons.DEFAULT_TOLERANCE_PX), *m.shape), m) for m in masks]
            hole_rows.append((size, name, np.mean(bridged), np.mean(dropped)))
    print(f"\nholes at the default tolerance {polygons.DEFAULT_TOLERANCE_PX}: mean IoU bridged vs dropped")
    for size, name, bridged, dropped in hole_rows:
        print(f"{size:4d}  {name:5s}  bridged {bridged:.3f}  dropped {dropped:.3f}")


if __name__ == "__main__":
    main()
