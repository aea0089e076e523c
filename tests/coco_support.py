"""A tiny COCO dataset written to disk for the training and evaluation tests: three PNG images, each with a
rectangle (polygon), a disc (compressed RLE) and a bar (uncompressed RLE), plus one crowd annotation; the ``coco`` fixture writes it into a test's temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from litesam.train.annotations import load_records
from litesam.train.data import SegmentationDataset

#: (file name, height, width) of the synthetic images.
SYNTHETIC_IMAGES = (("a.png", 96, 128), ("b.png", 120, 80), ("c.png", 64, 64))


def rectangle(height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """H×W bool, on for columns x0…x1−1 and rows y0…y1−1."""
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def disc(height: int, width: int, cx: float, cy: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2


def synthetic_masks(height: int, width: int) -> dict[str, np.ndarray]:
    """The ground-truth masks drawn into every synthetic image (a rectangle, a disc, a thin bar)."""
    return {
        "rect": rectangle(height, width, width // 8, height // 8, width // 2, height // 2),
        "disc": disc(height, width, width * 0.7, height * 0.65, min(height, width) * 0.2),
        "bar": rectangle(height, width, 2, height - 12, width - 2, height - 6),
    }


def write_synthetic_coco(root: Path) -> tuple[Path, Path, dict]:
    """Write 3 PNG images and a COCO file: rectangles as polygons, discs as compressed RLE, bars as
    uncompressed RLE, plus one crowd annotation on the first image. Returns (annotation file, image dir,
    {(image file, kind): original mask})."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    images, annotations, truth = [], [], {}
    rng = np.random.default_rng(0)
    for image_id, (name, height, width) in enumerate(SYNTHETIC_IMAGES, start=1):
        pixels = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
        masks = synthetic_masks(height, width)
        for colour, mask in zip(((220, 40, 40), (40, 220, 40), (40, 40, 220)), masks.values(), strict=True):
            pixels[mask] = colour
        Image.fromarray(pixels).save(image_dir / name)
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        h8, w8 = height // 8, width // 8
        polygon = [w8, h8, width // 2, h8, width // 2, height // 2, w8, height // 2]
        compressed = coco_mask.encode(np.asfortranarray(masks["disc"].astype(np.uint8)))
        bar_runs = _uncompressed_runs(masks["bar"])
        for kind, segmentation in (
            ("rect", [polygon]),
            ("disc", {"size": [height, width], "counts": compressed["counts"].decode("ascii")}),
            ("bar", {"size": [height, width], "counts": bar_runs}),
        ):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "segmentation": segmentation, "iscrowd": 0}
            )
            truth[(name, kind)] = masks[kind]
    crowd = rectangle(96, 128, 0, 0, 20, 20)
    annotations.append(
        {
            "id": 99,
            "image_id": 1,
            "iscrowd": 1,
            "segmentation": {"size": [96, 128], "counts": _uncompressed_runs(crowd)},
        }
    )
    annotation_file = root / "instances.json"
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    return annotation_file, image_dir, truth


def _uncompressed_runs(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE counts (column-major runs, starting with a run of zeros)."""
    flat = mask.T.ravel().astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


@pytest.fixture
def coco(tmp_path):
    return write_synthetic_coco(tmp_path)


def tiny_dataset(annotation_file, image_dir, **kwargs) -> SegmentationDataset:
    records = load_records(annotation_file, image_dir)
    return SegmentationDataset(records, image_size=256, stride=8, **kwargs)
