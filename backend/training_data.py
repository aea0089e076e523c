"""A Label Studio project's annotations as a training or evaluation set of ``litesam train`` / ``litesam eval``.

``litesam`` never imports the backend; it finds :func:`project_records` through the entry point
``labelstudio`` of the group ``litesam.record_sources`` (``pyproject.toml``), so ``litesam train --data
labelstudio --ls-url URL --ls-project N`` reads a project with the backend's Label Studio client and image
fetcher: the same key handling (``LABEL_STUDIO_API_KEY``, a personal access token or a legacy token, never
logged), the same URI rules (uploads, local files, presigned cloud objects, allowed hosts) and the same SSRF
guard and size limits as the served backend (:mod:`backend.images`; settings from the environment,
:mod:`backend.settings`).

What a task becomes (:mod:`backend.labelstudio.regions`): its chosen annotation (the latest ground-truth one,
else the latest; cancelled ones never) gives one instance mask per brush or polygon region and one box-only
instance per rectangle, on the image of the config's first ``<BrushLabels>`` / ``<PolygonLabels>``. Tasks
without a kept annotation, or whose annotation holds no such region, are left out (counted in the log).

**Split** (:func:`in_split`): a task is *held out* when its id is a multiple of :data:`HELD_OUT_EVERY` (5: one
task in five), else it is a *train* task. The rule depends on nothing but the id, so a task never changes
sides when the project grows or is read again, and consecutive uploads are held out evenly.

Images are downloaded once per read and kept, by the sha256 of their bytes, under
``<LITESAM_CACHE_DIR>/labelstudio-images/`` (the set is the project as it was when it was read, and loader
workers read files, not Label Studio); each read decodes them with their EXIF orientation applied, at the
natural size Label Studio's percentages refer to.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from litesam.errors import DatasetError

from .errors import BackendError
from .images import ImageFetcher, decode_image
from .labelstudio.client import LabelStudioClient
from .labelstudio.label_config import parse_label_config
from .labelstudio.regions import choose_annotation, region_kind, region_mask
from .settings import Settings

logger = logging.getLogger(__name__)

#: Held-out tasks: those whose id is a multiple of this.
HELD_OUT_EVERY = 5
#: The splits :func:`project_records` knows.
SPLITS = ("train", "held-out", "all")


@dataclass(frozen=True)
class LabelStudioRecord:
    """One annotated task as an image record (like :class:`litesam.train.annotations.ImageRecord`).

    Attributes:
        image_id: the task id.
        path: the cached image file (bytes as downloaded, EXIF orientation not yet applied).
        height, width: (H, W) of the image after its EXIF orientation is applied (Label Studio's natural size).
        mask_regions: the annotation's brush and polygon regions (as Label Studio stores them).
        box_regions: its rectangle regions.
        max_pixels: decoding refuses larger images (``LITESAM_MAX_IMAGE_PIXELS``).
    """

    image_id: int
    path: Path
    height: int
    width: int
    mask_regions: tuple[dict, ...]
    box_regions: tuple[dict, ...]
    max_pixels: int

    def image(self) -> np.ndarray:
        """H×W×3 uint8 RGB, EXIF orientation applied."""
        try:
            image = decode_image(self.path.read_bytes(), self.max_pixels)
        except (OSError, BackendError) as error:
            raise DatasetError(f"task {self.image_id}: cannot read its image {self.path}: {error}") from None
        if image.shape[:2] != (self.height, self.width):
            raise DatasetError(f"task {self.image_id}: its cached image {self.path} changed size")
        return image

    def instance_masks(self) -> Iterator[np.ndarray]:
        """H×W bool masks of the brush and polygon regions, in annotation order (mask loss and evaluation)."""
        for region in self.mask_regions:
            yield region_mask(region, self.height, self.width)

    def box_masks(self) -> Iterator[np.ndarray]:
        """H×W bool areas of the rectangles, box-only instances: they shape AutoPPN's targets only."""
        for region in self.box_regions:
            yield region_mask(region, self.height, self.width)


def in_split(task_id: int, split: str) -> bool:
    """Whether task ``task_id`` belongs to ``split`` ("train", "held-out" or "all"; module docstring)."""
    if split not in SPLITS:
        raise DatasetError(f"unknown Label Studio split {split!r}: use one of {', '.join(SPLITS)}")
    held_out = task_id % HELD_OUT_EVERY == 0
    return split == "all" or held_out == (split == "held-out")


def project_records(
    url: str | None, project: int, split: str = "train", settings: Settings | None = None
) -> list[LabelStudioRecord]:
    """Read a project's annotated tasks of ``split`` as records (module docstring).

    Args:
        url: Label Studio's base URL; None: ``LABEL_STUDIO_URL``.
        project: the project id.
        split: "train", "held-out" or "all".
        settings: backend settings (key, cache folder, fetch limits); default: from the environment.
    Returns:
        The records of the split's tasks that hold masks or boxes, by task id.
    Raises:
        DatasetError: Label Studio cannot be read, a task's image or region is unusable (the message names
            the task), or no task of the split holds a mask or box.
    """
    in_split(0, split)  # an unknown split fails before anything is contacted
    try:
        if settings is None:
            settings = Settings.from_env({**os.environ, **({"LABEL_STUDIO_URL": url} if url else {})})
        elif url is not None:
            settings = replace(settings, label_studio_url=url.rstrip("/"))
        client = LabelStudioClient(settings)
        if not client.configured:
            raise DatasetError(
                "reading a Label Studio project needs its URL (--ls-url or LABEL_STUDIO_URL) and an API key "
                "in LABEL_STUDIO_API_KEY"
            )
        config = parse_label_config(client.label_config(project))
        image_tag = config.image(config.outputs[0].to_name)
        tasks = client.annotated_tasks(project)
    except BackendError as error:
        raise DatasetError(f"Label Studio project {project}: {error}") from None
    fetcher = ImageFetcher(settings, client)
    folder = settings.cache_dir / "labelstudio-images"
    records, skipped = [], Counter()
    for task_id, data, annotations in tasks:
        if not in_split(task_id, split):
            continue
        annotation = choose_annotation(annotations)
        if annotation is None:
            skipped["no annotation (or only cancelled ones)"] += 1
            continue
        regions = [
            r
            for r in annotation.get("result") or []
            if isinstance(r, dict) and r.get("to_name") == image_tag.name and region_kind(r) is not None
        ]
        if not regions:
            skipped["no brush, polygon or rectangle region"] += 1
            continue
        try:
            fetched = fetcher.fetch(data.get(image_tag.value_key), task_id)
            height, width = decode_image(fetched.data, settings.max_image_pixels).shape[:2]
        except BackendError as error:
            raise DatasetError(f"task {task_id}: its image cannot be used: {error}") from None
        record = LabelStudioRecord(
            image_id=task_id,
            path=_cached(folder, fetched.sha256, fetched.data),
            height=height,
            width=width,
            mask_regions=tuple(r for r in regions if region_kind(r) != "box"),
            box_regions=tuple(r for r in regions if region_kind(r) == "box"),
            max_pixels=settings.max_image_pixels,
        )
        try:  # every region decoded once now, so a bad one fails here, named, not mid-training
            for _mask in record.instance_masks():
                pass
            for _mask in record.box_masks():
                pass
        except DatasetError as error:
            raise DatasetError(f"task {task_id} (annotation {annotation.get('id')}): {error}") from None
        records.append(record)
    logger.info(
        "Label Studio project %d, split %s: %d tasks read (%s)",
        project,
        split,
        len(records),
        ", ".join(f"{count} left out: {why}" for why, count in skipped.items()) or "none left out",
    )
    if not records:
        raise DatasetError(
            f"Label Studio project {project} has no {split} task with a brush, polygon or rectangle annotation"
        )
    return records


def _cached(folder: Path, sha256: str, data: bytes) -> Path:
    """The file holding ``data`` under ``folder``, named by its sha256 (written atomically once)."""
    path = folder / sha256
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".part-")
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    return path
