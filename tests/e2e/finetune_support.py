"""A Label Studio project for the fine-tuning tests and benchmark: synthetic scenes of another look than the
training generator's, uploaded as tasks, annotated through the API with brush, polygon and rectangle regions
made from the scenes' exact instance masks.

The distribution shift (:func:`project_scene`): the scenes come from :mod:`litesam.train.synthetic` with
:data:`PROJECT_SCENES` (more, smaller shapes on larger images than the default :class:`SceneConfig`), and are
then shown as a washed-out, low-contrast, warm-tinted photograph (:func:`washed_out`), a look the demo
checkpoint never saw. The instance masks are exact either way.

Regions per task (:func:`task_regions`): instance k is a brush region when k is even, a polygon (exact ring,
tolerance 0) when k is odd and the shape shows in one piece (else a brush region), except that the last
instance of every third task is a rectangle (its tight box): the three kinds each appear in the project.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from backend.labelstudio.label_config import OutputTag
from backend.labelstudio.results import brush_region, mask_regions
from litesam.train.synthetic import SceneConfig, render_scene

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image"><Label value="Object"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="Object"/></PolygonLabels>
  <RectangleLabels name="box" toName="image"><Label value="Object"/></RectangleLabels>
</View>"""
BRUSH = OutputTag("mask", "image", ("Object",), "brush")
POLYGON = OutputTag("poly", "image", ("Object",), "polygon")

#: The project's scenes: other sizes and shape counts than the training generator's defaults.
PROJECT_SCENES = SceneConfig(min_side=224, max_side=288, min_objects=3, max_objects=7, min_size=0.07, max_size=0.22)
#: Seed of the project's scenes (the demo checkpoint was trained on seed 0 with the default SceneConfig).
PROJECT_SEED = 11


def washed_out(image: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 → the same scene as a faded print: contrast cut to a third around a light grey, a warm
    tint, and the colours pulled halfway to grey."""
    pixels = image.astype(np.float32)
    grey = pixels.mean(axis=2, keepdims=True)
    pixels = 0.5 * pixels + 0.5 * grey
    pixels = 150 + (pixels - 128) / 3 + np.array([18, 6, -14], dtype=np.float32)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def project_scene(index: int, seed: int = PROJECT_SEED) -> tuple[np.ndarray, list[np.ndarray]]:
    """(H×W×3 uint8 image as shown, H×W bool instance masks) of the project's scene ``index``."""
    image, masks = render_scene(seed, index, PROJECT_SCENES)
    return washed_out(image), masks


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def exif_jpeg(shown: np.ndarray) -> bytes:
    """A JPEG stored turned 90° counter-clockwise with EXIF orientation 6, so viewers (and Label Studio) show
    ``shown``; the stored width and height are swapped."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(shown, k=1))).save(buffer, "JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def tight_box_region(mask: np.ndarray) -> dict:
    """A rectangle region: the mask's tight box (pixel edges) in percent of the mask's size."""
    height, width = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    value = {
        "x": 100 * x0 / width,
        "y": 100 * y0 / height,
        "width": 100 * (x1 - x0) / width,
        "height": 100 * (y1 - y0) / height,
        "rotation": 0,
        "rectanglelabels": ["Object"],
    }
    return {
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": value,
    }


@dataclass(frozen=True)
class ExpectedTask:
    """What a task holds: its image as shown, the masks of its brush and polygon regions in annotation order,
    the tight-box areas of its rectangles, and the kind of each region."""

    image: np.ndarray
    masks: tuple[np.ndarray, ...]
    boxes: tuple[np.ndarray, ...]
    kinds: tuple[str, ...]


def task_regions(index: int, masks: list[np.ndarray]) -> tuple[list[dict], ExpectedTask]:
    """The regions of scene ``index``'s annotation (module docstring) and what reading them must give."""
    regions, kinds, mask_list, boxes = [], [], [], []
    for k, mask in enumerate(masks):
        if index % 3 == 0 and k == len(masks) - 1 and len(masks) > 1:
            regions.append(tight_box_region(mask))
            kinds.append("rectangle")
            box = np.zeros_like(mask)
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
            boxes.append(box)
            continue
        rings = mask_regions(mask, POLYGON, label="Object", score=1.0, tolerance=0) if k % 2 else []
        if len(rings) == 1:
            regions.append(rings[0])
            kinds.append("polygon")
        else:  # even k, or a shape that occlusion cut into parts (a polygon region is one ring)
            regions.append(brush_region(mask, from_name="mask", to_name="image", label="Object", score=1.0))
            kinds.append("brush")
        mask_list.append(mask)
    return regions, ExpectedTask(np.empty(0), tuple(mask_list), tuple(boxes), tuple(kinds))


def scene_files(images: list[np.ndarray], exif_index: int | None = 1, prefix: str = "scene") -> list[tuple[str, bytes]]:
    """(file name, bytes) of each H×W×3 uint8 image as a user would upload it: PNG, except image
    ``exif_index`` as an EXIF-rotated JPEG (:func:`exif_jpeg`; None: none)."""
    return [
        (f"{prefix}{i:03d}.jpg", exif_jpeg(image)) if i == exif_index else (f"{prefix}{i:03d}.png", png(image))
        for i, image in enumerate(images)
    ]


def build_project(label_studio, count: int, *, exif_index: int = 1, seed: int = PROJECT_SEED) -> tuple[int, dict]:
    """Create the project with ``count`` scenes (scene ``exif_index`` uploaded as an EXIF-rotated JPEG) and one
    annotation each; returns (project id, task id → :class:`ExpectedTask`)."""
    project = label_studio.create_project(CONFIG, title="litesam fine-tune e2e")
    scenes = [project_scene(i, seed) for i in range(count)]
    task_ids = label_studio.upload_images(project, scene_files([image for image, _ in scenes], exif_index))
    ls = label_studio.client()
    expected = {}
    for i, (task, (image, masks)) in enumerate(zip(task_ids, scenes, strict=True)):
        regions, wanted = task_regions(i, masks)
        ls.annotations.create(id=task, result=regions)
        expected[task] = ExpectedTask(image, wanted.masks, wanted.boxes, wanted.kinds)
    return project, expected
