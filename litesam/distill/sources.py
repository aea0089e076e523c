"""The unlabeled images a student is distilled on.

An :class:`ImageSource` is an ordered list of :class:`ImageItem`: a stable ``key`` (the identity that the
teacher caches are keyed by) and a loader of the pixels. Sources here:

* a **folder** of images (recursively, sorted by relative path; JPEG, PNG, WebP, BMP, TIFF), read as the
  backend reads a task's image: EXIF orientation applied, RGB. Key: the sha256 of the file's bytes, as the
  backend keys its embedding cache, so a renamed file keeps its key and an edited one gets a new one;
* the **images of a COCO / SA-1B set** (:func:`litesam.train.annotations.load_records`; the annotations are
  never read beyond finding the images). Key: the file's sha256;
* **synthetic** scenes (:mod:`litesam.train.synthetic`; only the pixels, the generator's masks are never
  read). Key: ``synthetic:<seed>:<index>`` and the scene settings.

A Label Studio project's task images come from the backend (``litesam-backend distill``), which owns Label
Studio access and its fetch rules; it hands this library an :class:`ImageSource` of its own, so the library
never imports the backend.

:func:`data_identity` is the sha256 of the ordered keys: any added, removed, reordered or edited image changes
the identity, and with it the cache key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError, LiteSamError

#: File suffixes a folder source reads (lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageItem:
    """One unlabeled image.

    Attributes:
        key: its identity in the caches (see the module docstring).
        name: what messages call it (a path, a task id).
        load: returns the H×W×3 uint8 RGB pixels; raises :class:`DatasetError` (or another
            :class:`LiteSamError`) for an unreadable image.
    """

    key: str
    name: str
    load: Callable[[], np.ndarray]


#: An ordered list of images (what :func:`open_source` returns, or any sequence of :class:`ImageItem`).
ImageSource = Sequence[ImageItem]


def open_source(
    data: str | Path,
    images: str | Path | None = None,
    synthetic_images: int = 1000,
    synthetic_seed: int = 0,
) -> list[ImageItem]:
    """The images of ``data``: ``"synthetic"``, a folder of images, or a COCO / SA-1B annotation path.

    A folder holding SA-1B JSON files (and no other images than theirs) is read as SA-1B; any other folder as a
    plain folder of images.

    Raises:
        DatasetError: nothing to read, a missing path, or an unreadable annotation file.
    """
    if str(data) == "synthetic":
        return synthetic_source(synthetic_images, synthetic_seed)
    path = Path(data)
    if path.is_dir() and not any(path.glob("*.json")):
        return folder_source(path)
    from ..train.annotations import load_records

    return [_file_item(record.path, str(record.path)) for record in load_records(path, images)]


def folder_source(folder: str | Path) -> list[ImageItem]:
    """Every image file under ``folder`` (recursive, sorted by relative path).

    Raises:
        DatasetError: the folder does not exist or holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return [_file_item(p, str(p.relative_to(folder))) for p in paths]


def synthetic_source(count: int, seed: int = 0) -> list[ImageItem]:
    """Scenes ``(seed, 0)`` … ``(seed, count − 1)`` of :mod:`litesam.train.synthetic`, pixels only."""
    from ..train.synthetic import SceneConfig, render_scene

    config = SceneConfig()
    settings = json.dumps(asdict(config), sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:12]

    def loader(index: int) -> Callable[[], np.ndarray]:
        return lambda: render_scene(seed, index, config)[0]

    if count < 1:
        raise DatasetError(f"a synthetic set needs at least one image, got {count}")
    return [ImageItem(f"synthetic:{seed}:{i}:{digest}", f"synthetic scene {seed}/{i}", loader(i)) for i in range(count)]


def data_identity(source: ImageSource) -> str:
    """sha256 (hex) of the source's ordered keys."""
    digest = hashlib.sha256()
    for item in source:
        digest.update(item.key.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def read_image_file(path: str | Path) -> np.ndarray:
    """An image file as H×W×3 uint8 RGB, EXIF orientation applied (as the backend decodes a task's image).

    Raises:
        DatasetError: missing or unreadable file.
    """
    from ..cli import read_image

    try:
        return read_image(Path(path))
    except LiteSamError as error:
        raise DatasetError(str(error)) from None


def _file_item(path: Path, name: str) -> ImageItem:
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as error:
        raise DatasetError(f"cannot read image file {path}: {error.strerror or error}") from None
    return ImageItem(digest, name, lambda: read_image_file(path))
