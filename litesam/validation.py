"""Input checks shared by the predictor and SegEvery.

Each check raises a :mod:`litesam.errors` exception that says what was received and what is expected,
so a caller (the CLI, the Label Studio backend) can show the message as it is.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidImageError, InvalidPromptError

#: Smallest accepted image side, in pixels. Below this a mask carries no usable information.
MIN_IMAGE_SIDE = 8
#: Smallest short side after resizing the longest side to the model input, in pixels: one 16-px
#: embedding cell. It bounds the aspect ratio to S/16 (40:1 at 640, 64:1 at 1024).
MIN_RESIZED_SIDE = 16


def check_image(image: object, img_size: int) -> np.ndarray:
    """Check that ``image`` is an H×W×3 uint8 RGB array the model can segment.

    Args:
        image: the candidate image.
        img_size: side S of the model input; the aspect ratio must leave at least
            :data:`MIN_RESIZED_SIDE` pixels on the short side once the long side is S.
    Returns:
        The same array, C-contiguous.
    Raises:
        InvalidImageError: wrong type, channel count, dtype, or a size the model cannot use.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"expected an H×W×3 uint8 numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        raise InvalidImageError(
            f"expected an RGB image H×W×3, got a single-channel (grayscale) array of shape {image.shape}; "
            "convert it to RGB first"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        channels = image.shape[2] if image.ndim == 3 else None
        hint = "; drop the alpha channel (RGBA → RGB) first" if channels == 4 else ""
        raise InvalidImageError(f"expected an RGB image H×W×3, got shape {image.shape}{hint}")
    if image.dtype != np.uint8:
        raise InvalidImageError(
            f"expected 8-bit pixels (uint8), got {image.dtype}; scale 16-bit or float images to 0–255 uint8 first"
        )
    h, w = image.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise InvalidImageError(f"image is {w}×{h} pixels; both sides must be at least {MIN_IMAGE_SIDE}")
    if min(h, w) * img_size / max(h, w) < MIN_RESIZED_SIDE:
        limit = img_size // MIN_RESIZED_SIDE
        raise InvalidImageError(
            f"image is {w}×{h} pixels, an aspect ratio of {max(h, w) / min(h, w):.0f}:1; "
            f"at most {limit}:1 is supported at input size {img_size}"
        )
    return np.ascontiguousarray(image)


def check_points(
    point_coords: object, point_labels: object, original_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Check point prompts in original-image pixels.

    Args:
        point_coords: N×2 (x, y) pixel coordinates; a point may lie on the far border (x = W, y = H).
        point_labels: N labels, 1 = foreground, 0 = background.
        original_size: (H, W) of the image.
    Returns:
        (N×2 float32 coordinates, N int64 labels).
    """
    coords = np.asarray(point_coords, dtype=np.float64)
    labels = np.asarray(point_labels)
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
        raise InvalidPromptError(f"point_coords must be N×2 (x, y) with N ≥ 1, got shape {coords.shape}")
    if labels.shape != (coords.shape[0],):
        raise InvalidPromptError(
            f"point_labels must have one label per point ({coords.shape[0]}), got shape {labels.shape}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise InvalidPromptError(f"point_labels must be 1 (foreground) or 0 (background), got {labels.tolist()}")
    _check_inside(coords, original_size, "point")
    return coords.astype(np.float32), labels.astype(np.int64)


def check_box(box: object, original_size: tuple[int, int]) -> np.ndarray:
    """Check one box prompt, XYXY in original-image pixels; returns it as a float32 array of shape (4,)."""
    values = np.asarray(box, dtype=np.float64)
    if values.shape != (4,):
        raise InvalidPromptError(f"box must be 4 numbers x0, y0, x1, y1, got shape {values.shape}")
    _check_inside(values.reshape(2, 2), original_size, "box corner")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise InvalidPromptError(f"box must have x1 > x0 and y1 > y0, got {values.tolist()}")
    return values.astype(np.float32)


def _check_inside(xy: np.ndarray, original_size: tuple[int, int], what: str) -> None:
    if not np.isfinite(xy).all():
        raise InvalidPromptError(f"{what} coordinates must be finite numbers, got {xy.tolist()}")
    h, w = original_size
    outside = (xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)
    if outside.any():
        raise InvalidPromptError(
            f"{what} {xy[outside][0].tolist()} lies outside the {w}×{h} image (x in [0, {w}], y in [0, {h}])"
        )
