"""Where a click becomes a prompt: Label Studio's interactive ``context`` → SAM prompts in image pixels.

Label Studio 1.23 sends ``{"result": [region, …]}`` on every smart-tool click (labelstudio-protocol.md §1.6):
all smart regions of the same type, label and image as the region just drawn, so keypoint sets are
cumulative. A keypoint region looks like::

    {"type": "keypointlabels", "from_name": "kp", "to_name": "image",
     "original_width": 1080, "original_height": 720, "image_rotation": 0, "is_positive": true,
     "value": {"x": 49.4, "y": 59.9, "width": 0.3, "keypointlabels": ["Banana"]}}

and a rectangle ``{"type": "rectanglelabels", …, "value": {"x", "y", "width", "height", "rotation",
"rectanglelabels": [...]}}`` with ``x, y`` its top-left corner. All values are percent (0–100) of the
image's natural (EXIF-transposed) size ``original_width × original_height``.

Rules:
    * the label is the one of the last region (the one just drawn); regions of other labels or other
      images are ignored (API callers may send them; the Label Studio frontend never does): another
      ``to_name``, or, in a multi-image (``valueList``) task, another ``item_index``;
    * every keypoint of that label is a prompt point, positive unless ``is_positive`` is false;
    * every rectangle is one box and gives one mask; keypoints sent with rectangles go with every box;
    * a rotated rectangle (rotated about its top-left corner, clockwise degrees) becomes its bounding box;
    * coordinates up to :data:`CLIP_TOLERANCE_PERCENT` outside the image are clipped onto it, further
      out is an error, as is any non-finite number, a non-positive size or a missing field.

Frames: percent of ``original_width × original_height`` → pixels of that size (:func:`parse_context`) → pixels
of the image as decoded, if Label Studio's natural size was another (:func:`prompts_for_image`); masks go
back to the regions' size (:func:`mask_for_regions`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import BadRequestError
from .label_config import LabelConfig, OutputTag

#: How far outside the image (in percent of its width/height) a coordinate may lie and still be clipped.
CLIP_TOLERANCE_PERCENT = 2.0

KEYPOINT_TYPES = ("keypointlabels", "keypoint")
RECTANGLE_TYPES = ("rectanglelabels", "rectangle")


@dataclass(frozen=True)
class Prompt:
    """One mask to predict.

    Attributes:
        point_coords: N×2 float32 (x, y) in original-image pixels, or None.
        point_labels: N int64, 1 = positive, 0 = negative, or None.
        box: (4,) float32 XYXY in original-image pixels, or None.
    """

    point_coords: np.ndarray | None
    point_labels: np.ndarray | None
    box: np.ndarray | None


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one interactive call.

    Attributes:
        label: the label of the prompt regions, or None when they carry none.
        to_name: the ``<Image>`` the regions belong to (None if the regions do not say).
        original_width, original_height: natural image size in pixels that the percentages refer to.
        image_rotation: the UI rotation of the image, copied into the results.
        item_index: index of the image in a multi-image task, when the regions carry one.
        prompts: one entry per mask to predict.
    """

    label: str | None
    to_name: str | None
    original_width: int
    original_height: int
    image_rotation: float
    item_index: int | None
    prompts: tuple[Prompt, ...]


def parse_context(context: object) -> PromptSet | None:
    """Parse an interactive ``context``; None when it holds no regions (a batch call).

    Raises:
        BadRequestError: malformed context or region, with a message naming the region and the field.
    """
    if context is None:
        return None
    if not isinstance(context, dict):
        raise BadRequestError(f"context must be an object with a 'result' list, got {type(context).__name__}")
    regions = context.get("result")
    if regions is None or regions == []:
        return None
    if not isinstance(regions, list):
        raise BadRequestError("context.result must be a list of regions")
    for i, region in enumerate(regions):
        if not isinstance(region, dict):
            raise BadRequestError(f"context.result[{i}] must be an object, got {type(region).__name__}")

    last = regions[-1]
    label = _label(last, len(regions) - 1)
    to_name = last.get("to_name")
    item_index = last.get("item_index")
    selected = [
        (i, r)
        for i, r in enumerate(regions)
        if _label(r, i) == label and r.get("to_name") == to_name and r.get("item_index") == item_index
    ]

    width, height = _size(selected)
    points: list[tuple[float, float]] = []
    point_labels: list[int] = []
    boxes: list[np.ndarray] = []
    for i, region in selected:
        kind = region.get("type")
        value = region.get("value")
        if not isinstance(value, dict):
            raise BadRequestError(f"context.result[{i}].value must be an object")
        if kind in KEYPOINT_TYPES:
            x = _clip(_number(value, "x", i), width, f"context.result[{i}].value.x")
            y = _clip(_number(value, "y", i), height, f"context.result[{i}].value.y")
            points.append((x, y))
            point_labels.append(_is_positive(region, i))
        elif kind in RECTANGLE_TYPES:
            boxes.append(_box(value, i, width, height))
        else:
            accepted = ", ".join(KEYPOINT_TYPES + RECTANGLE_TYPES)
            raise BadRequestError(f"context.result[{i}].type is {kind!r}; prompts must be one of: {accepted}")

    coords = np.asarray(points, dtype=np.float32).reshape(-1, 2) if points else None
    labels = np.asarray(point_labels, dtype=np.int64) if points else None
    if boxes:
        prompts = tuple(Prompt(coords, labels, box) for box in boxes)
    else:
        prompts = (Prompt(coords, labels, None),)
    rotation = last.get("image_rotation", 0)
    return PromptSet(
        label=label,
        to_name=to_name if isinstance(to_name, str) else None,
        original_width=width,
        original_height=height,
        image_rotation=rotation if _is_number(rotation) and math.isfinite(rotation) else 0,
        item_index=item_index if isinstance(item_index, int) and not isinstance(item_index, bool) else None,
        prompts=prompts,
    )


def resolve_label(
    prompt_set: PromptSet, config: LabelConfig, output: str = "auto"
) -> tuple[OutputTag, str]:
    """The output tag for the prompts' image (:meth:`LabelConfig.output_for`) and the label their masks get.

    Raises:
        BadRequestError: no such output tag, the label is not one of the output tag's labels (the message
            names it and lists them), or the regions carry no label and the output tag has more than one.
    """
    tag = config.output_for(prompt_set.to_name, output)
    return tag, label_of_output(tag, prompt_set.label)


def label_of_output(tag: OutputTag, label: str | None) -> str:
    """``label`` (a prompt region's label, None when it carries none) checked against the output tag.

    Raises:
        BadRequestError: see :func:`resolve_label`.
    """
    available = ", ".join(repr(value) for value in tag.labels) or "(none)"
    if label is None:
        if len(tag.labels) == 1:
            return tag.labels[0]
        raise BadRequestError(
            f"the prompt regions carry no label; select one of the labels of {tag.tag[:-1]} "
            f"name={tag.from_name!r}>: {available}"
        )
    if label not in tag.labels:
        raise BadRequestError(
            f"label {label!r} is not a label of {tag.tag[:-1]} name={tag.from_name!r}>; "
            f"available labels: {available}. Give the keypoint/rectangle tools the same label values as the "
            f"{tag.kind} tool."
        )
    return label


def _label(region: dict, i: int) -> str | None:
    value = region.get("value")
    if not isinstance(value, dict):
        raise BadRequestError(f"context.result[{i}].value must be an object")
    kind = region.get("type")
    for key in (kind, "labels"):
        if not isinstance(key, str) or key not in value:
            continue
        labels = value[key]
        if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
            raise BadRequestError(f"context.result[{i}].value.{key} must be a list of label strings")
        if labels:
            return labels[0]
    return None


def _size(selected: list[tuple[int, dict]]) -> tuple[int, int]:
    sizes = set()
    for i, region in selected:
        dims = []
        for key in ("original_width", "original_height"):
            if key not in region:
                raise BadRequestError(
                    f"context.result[{i}] has no {key} (the image's natural size in pixels)"
                )
            v = region[key]
            if not _is_number(v) or not math.isfinite(v) or v < 1 or v != int(v):
                raise BadRequestError(f"context.result[{i}].{key} must be a positive whole number, got {v!r}")
            dims.append(int(v))
        sizes.add(tuple(dims))
    if len(sizes) > 1:
        raise BadRequestError(
            f"the prompt regions disagree on original_width/original_height: {sorted(sizes)}"
        )
    return sizes.pop()


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(value: dict, key: str, i: int) -> float:
    if key not in value:
        raise BadRequestError(f"context.result[{i}].value has no {key!r}")
    v = value[key]
    if not _is_number(v) or not math.isfinite(v):
        raise BadRequestError(f"context.result[{i}].value.{key} must be a finite number (percent), got {v!r}")
    return float(v)


def _clip(percent: float, size: int, where: str) -> float:
    """Percent of ``size`` → pixels in [0, size], clipping up to the tolerance outside."""
    if not -CLIP_TOLERANCE_PERCENT <= percent <= 100 + CLIP_TOLERANCE_PERCENT:
        raise BadRequestError(f"{where} = {percent}% lies outside the image (0–100 %)")
    return min(max(percent, 0.0), 100.0) / 100.0 * size


def _is_positive(region: dict, i: int) -> int:
    flag = region.get("is_positive", True)
    if flag is None:
        return 1
    if isinstance(flag, bool) or (isinstance(flag, int) and flag in (0, 1)):
        return int(flag)
    raise BadRequestError(f"context.result[{i}].is_positive must be true or false, got {flag!r}")


def _box(value: dict, i: int, width: int, height: int) -> np.ndarray:
    x, y = _number(value, "x", i), _number(value, "y", i)
    w, h = _number(value, "width", i), _number(value, "height", i)
    if w <= 0 or h <= 0:
        raise BadRequestError(
            f"context.result[{i}] rectangle must have positive width and height, got {w}×{h} %"
        )
    rotation = value.get("rotation", 0) or 0
    if not _is_number(rotation) or not math.isfinite(rotation):
        raise BadRequestError(f"context.result[{i}].value.rotation must be a finite number of degrees")
    x0, y0 = x / 100 * width, y / 100 * height
    dx = np.array([0.0, w / 100 * width, w / 100 * width, 0.0])
    dy = np.array([0.0, 0.0, h / 100 * height, h / 100 * height])
    theta = math.radians(rotation)
    xs = x0 + dx * math.cos(theta) - dy * math.sin(theta)
    ys = y0 + dx * math.sin(theta) + dy * math.cos(theta)
    where = f"context.result[{i}] rectangle"
    left = _clip_px(xs.min(), width, f"{where} left edge")
    right = _clip_px(xs.max(), width, f"{where} right edge")
    top = _clip_px(ys.min(), height, f"{where} top edge")
    bottom = _clip_px(ys.max(), height, f"{where} bottom edge")
    if right <= left or bottom <= top:
        raise BadRequestError(f"{where} has no area inside the image")
    return np.array([left, top, right, bottom], dtype=np.float32)


def _clip_px(px: float, size: int, where: str) -> float:
    return _clip(px / size * 100.0, size, where)


def prompts_for_image(prompt_set: PromptSet, image_size: tuple[int, int]) -> tuple[Prompt, ...]:
    """The prompts in pixels of the image as decoded (``image_size`` = (height, width)).

    The regions' percentages refer to ``original_width × original_height``; when the decoded image has
    another size (Label Studio was given a wrong natural size), the prompts are scaled to it and clipped onto
    it, and :func:`mask_for_regions` scales each mask back.
    """
    height, width = image_size
    scale = np.array(
        [width / prompt_set.original_width, height / prompt_set.original_height], dtype=np.float32
    )
    limit = np.array([width, height], dtype=np.float32)
    return tuple(
        Prompt(
            np.minimum(p.point_coords * scale, limit) if p.point_coords is not None else None,
            p.point_labels,
            np.minimum(p.box * np.tile(scale, 2), np.tile(limit, 2)) if p.box is not None else None,
        )
        for p in prompt_set.prompts
    )


def mask_for_regions(mask: np.ndarray, prompt_set: PromptSet) -> np.ndarray:
    """An H×W bool mask of the decoded image at the size the regions refer to (nearest neighbour), so its
    brush result has ``original_height × original_width`` values."""
    size = (prompt_set.original_height, prompt_set.original_width)
    if mask.shape == size:
        return mask
    rows = np.minimum((np.arange(size[0]) + 0.5) * mask.shape[0] / size[0], mask.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(size[1]) + 0.5) * mask.shape[1] / size[1], mask.shape[1] - 1).astype(int)
    return mask[rows[:, None], cols[None, :]]


def is_ambiguous(prompt: Prompt) -> bool:
    """A single point without a box may mean a part, an object or a group: ask for three masks, keep the
    best by predicted IoU. More points or a box pin the object down, and one mask is better (as in SAM)."""
    return prompt.box is None and prompt.point_coords is not None and len(prompt.point_coords) == 1
