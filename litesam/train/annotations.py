"""Reading instance-mask annotations: COCO-format files and SA-1B-style per-image JSON.

Both formats become a list of :class:`ImageRecord` (image path, size, raw annotations). Masks are decoded
lazily, one at a time, with :func:`decode_mask`: an SA-1B image holds ~100 masks of several megapixels
each, far too many to keep decoded.

Formats:

* **COCO** (``instances_*.json``): ``{"images": [{"id", "file_name", "height", "width"}, …],
  "annotations": [{"id", "image_id", "segmentation", "iscrowd"}, …]}``; image files live in a separate
  folder. ``segmentation`` is a list of polygons (each a flat ``[x0, y0, x1, y1, …]`` list in pixel
  coordinates), an uncompressed RLE (``counts`` a list of run lengths) or a compressed RLE (``counts`` a
  string). Crowd annotations (``iscrowd = 1``) cover groups of objects, not one: they are never instances
  (neither trained on nor prompted) and are kept apart, as the areas evaluation ignores (``crowd``).
* **SA-1B** (one JSON per image, next to the image): ``{"image": {"image_id", "file_name", "height",
  "width"}, "annotations": [{"id", "segmentation": {"size": [H, W], "counts": str}}, …]}``.

Image pixels are read as stored (no EXIF rotation): annotation coordinates refer to the stored frame, and
the stored size must equal the size the annotation file gives.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from ..errors import DatasetError
from ..masks import InvalidMaskError, coco_rle_to_mask


@dataclass(frozen=True)
class Annotation:
    """One instance mask, still encoded.

    Attributes:
        id: the annotation id from the file (or its position when the file gives none).
        segmentation: polygons or a COCO RLE dict, as stored.
    """

    id: int | str
    segmentation: Any


@dataclass(frozen=True)
class ImageRecord:
    """One image and its annotations.

    Attributes:
        image_id: id from the annotation file.
        path: image file.
        height, width: (H, W) of the image in pixels, as the annotation file gives them.
        annotations: its instance masks, in file order.
        crowd: its COCO crowd regions (areas whose objects are not delineated), in file order.
    """

    image_id: int | str
    path: Path
    height: int
    width: int
    annotations: tuple[Annotation, ...]
    crowd: tuple[Annotation, ...] = ()

    def image(self) -> np.ndarray:
        """The image, H×W×3 uint8 RGB (:func:`read_image`)."""
        return read_image(self)

    def instance_masks(self) -> Iterator[np.ndarray]:
        """The annotations' H×W bool masks in file order, decoded one at a time (:func:`decode_mask`)."""
        for annotation in self.annotations:
            yield decode_mask(annotation, self.height, self.width)

    def crowd_masks(self) -> Iterator[np.ndarray]:
        """The crowd regions' H×W bool masks (ignored areas of :mod:`litesam.eval.recall`), one at a time."""
        for annotation in self.crowd:
            yield decode_mask(annotation, self.height, self.width)


def load_records(data: str | Path, images: str | Path | None = None) -> list[ImageRecord]:
    """Read a dataset, detecting its format.

    Args:
        data: a COCO annotation file, a single SA-1B JSON file, or a folder of SA-1B JSON files.
        images: folder of the image files. Required for COCO; for SA-1B it defaults to the folder of
            each JSON file.
    Returns:
        The images that have at least one annotation, in file order (COCO) or sorted file-name order (SA-1B).
    Raises:
        DatasetError: missing files, unknown format, malformed entries, or no annotated image at all.
    """
    data = Path(data)
    if data.is_dir():
        return load_sa1b(sorted(data.glob("*.json")), images)
    if not data.is_file():
        raise DatasetError(f"annotation path {data} does not exist")
    document = _read_json(data)
    if isinstance(document, dict) and isinstance(document.get("image"), dict):
        return load_sa1b([data], images)
    if images is None:
        raise DatasetError(f"{data} looks like a COCO annotation file: give the image folder too")
    return load_coco(data, images, document=document)


def load_coco(
    annotation_file: str | Path,
    images: str | Path,
    document: Any = None,
) -> list[ImageRecord]:
    """Read a COCO-format instance annotation file (see the module docstring).

    Args:
        annotation_file: the JSON file.
        images: folder holding the ``file_name`` of every image.
        document: the already parsed JSON (to avoid reading a large file twice); read from the file if None.
    Returns:
        Records of the images with at least one instance (non-crowd annotation), in the file's image order;
        crowd annotations go to their image's ``crowd``.
    Raises:
        DatasetError: unreadable JSON, missing keys, duplicate or unknown image ids, missing image files.
    """
    annotation_file, images = Path(annotation_file), Path(images)
    if document is None:
        if not annotation_file.is_file():
            raise DatasetError(f"annotation file {annotation_file} does not exist")
        document = _read_json(annotation_file)
    if not images.is_dir():
        raise DatasetError(f"image folder {images} does not exist")
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise DatasetError(f"{annotation_file}: a COCO file needs an 'images' list and an 'annotations' list")
    if not isinstance(document.get("annotations"), list):
        raise DatasetError(f"{annotation_file}: the 'annotations' list is missing")

    infos: dict[Any, dict[str, Any]] = {}
    for position, info in enumerate(document["images"]):
        where = f"{annotation_file}: images[{position}]"
        if not isinstance(info, dict) or "id" not in info or "file_name" not in info:
            raise DatasetError(f"{where} needs 'id' and 'file_name'")
        if info["id"] in infos:
            raise DatasetError(f"{where}: image id {info['id']!r} appears twice")
        _image_size(info, where)
        infos[info["id"]] = info

    per_image: dict[Any, list[Annotation]] = {image_id: [] for image_id in infos}
    crowd: dict[Any, list[Annotation]] = {image_id: [] for image_id in infos}
    for position, entry in enumerate(document["annotations"]):
        where = f"{annotation_file}: annotations[{position}]"
        if not isinstance(entry, dict) or "image_id" not in entry or "segmentation" not in entry:
            raise DatasetError(f"{where} needs 'image_id' and 'segmentation'")
        if entry["image_id"] not in infos:
            raise DatasetError(
                f"{where} refers to image id {entry['image_id']!r}, which 'images' does not list"
            )
        annotation = Annotation(entry.get("id", position), entry["segmentation"])
        (crowd if entry.get("iscrowd", 0) else per_image)[entry["image_id"]].append(annotation)

    records = []
    for image_id, info in infos.items():
        if not per_image[image_id]:
            continue
        height, width = _image_size(info, f"{annotation_file}: image {image_id!r}")
        records.append(
            ImageRecord(
                image_id,
                images / info["file_name"],
                height,
                width,
                tuple(per_image[image_id]),
                tuple(crowd[image_id]),
            )
        )
    return _checked(records, str(annotation_file))


def load_sa1b(json_files: list[Path], images: str | Path | None = None) -> list[ImageRecord]:
    """Read SA-1B-style per-image JSON files (see the module docstring).

    Args:
        json_files: one file per image.
        images: folder of the image files; defaults to the folder of each JSON file (SA-1B's layout).
    Raises:
        DatasetError: no files, unreadable JSON, missing keys or missing image files.
    """
    if not json_files:
        raise DatasetError("no SA-1B JSON files found")
    records = []
    for path in json_files:
        document = _read_json(path)
        if not isinstance(document, dict) or not isinstance(document.get("image"), dict):
            raise DatasetError(f"{path}: an SA-1B file needs an 'image' object and an 'annotations' list")
        info = document["image"]
        entries = document.get("annotations")
        if not isinstance(entries, list):
            raise DatasetError(f"{path}: the 'annotations' list is missing")
        if "file_name" not in info:
            raise DatasetError(f"{path}: 'image' needs a 'file_name'")
        height, width = _image_size(info, f"{path}: image")
        annotations = []
        for position, entry in enumerate(entries):
            if not isinstance(entry, dict) or "segmentation" not in entry:
                raise DatasetError(f"{path}: annotations[{position}] needs a 'segmentation'")
            annotations.append(Annotation(entry.get("id", position), entry["segmentation"]))
        if not annotations:
            continue
        folder = Path(images) if images is not None else path.parent
        records.append(
            ImageRecord(
                info.get("image_id", path.stem), folder / info["file_name"], height, width, tuple(annotations)
            )
        )
    return _checked(records, f"{len(json_files)} SA-1B files")


def decode_mask(annotation: Annotation, height: int, width: int) -> np.ndarray:
    """Decode one annotation into an H×W bool mask (``[row, col]`` = ``[y, x]``) of the original image.

    Raises:
        DatasetError: a polygon with fewer than 3 points or an odd number of coordinates, an RLE whose size
            differs from the image's, or an unknown segmentation type; the message names the annotation.
    """
    segmentation = annotation.segmentation
    where = f"annotation {annotation.id!r}"
    if isinstance(segmentation, dict):
        if list(segmentation.get("size", [])) != [height, width]:
            raise DatasetError(
                f"{where}: RLE size {segmentation.get('size')!r} differs from the image size [{height}, {width}]"
            )
        try:
            return coco_rle_to_mask(segmentation)
        except (InvalidMaskError, KeyError, TypeError) as error:
            raise DatasetError(f"{where}: invalid RLE: {error}") from error
    if isinstance(segmentation, list) and segmentation:
        for polygon in segmentation:
            values = np.asarray(polygon, dtype=object)
            if values.ndim != 1 or len(values) < 6 or len(values) % 2:
                raise DatasetError(
                    f"{where}: each polygon must be a flat list [x0, y0, x1, y1, …] of at least 3 points"
                )
            if not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values
            ):
                raise DatasetError(f"{where}: polygon coordinates must be finite numbers")
        rles = coco_mask.frPyObjects([list(map(float, p)) for p in segmentation], height, width)
        return np.ascontiguousarray(coco_mask.decode(coco_mask.merge(rles)), dtype=bool)
    raise DatasetError(
        f"{where}: segmentation must be a non-empty list of polygons or an RLE dict, got {type(segmentation).__name__}"
    )


def read_image(record: ImageRecord) -> np.ndarray:
    """Read the record's image as H×W×3 uint8 RGB in its stored orientation.

    Raises:
        DatasetError: missing or unreadable file, or a size other than the annotation file's.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(record.path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"image file {record.path} does not exist") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(f"image file {record.path} is not a readable image: {error}") from None
    if pixels.shape[:2] != (record.height, record.width):
        raise DatasetError(
            f"image file {record.path} is {pixels.shape[1]}×{pixels.shape[0]} (W×H) but its annotations say "
            f"{record.width}×{record.height}"
        )
    return pixels


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"annotation file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path} is not a readable JSON file: {error}") from None


def _image_size(info: dict[str, Any], where: str) -> tuple[int, int]:
    height, width = info.get("height"), info.get("width")
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise DatasetError(f"{where}: '{name}' must be a positive int, got {value!r}")
    return height, width


def _checked(records: list[ImageRecord], source: str) -> list[ImageRecord]:
    if not records:
        raise DatasetError(f"{source}: no image has a usable annotation")
    missing = [str(r.path) for r in records if not r.path.is_file()]
    if missing:
        shown = ", ".join(missing[:3])
        raise DatasetError(f"{len(missing)} of {len(records)} image files are missing, e.g. {shown}")
    return records
