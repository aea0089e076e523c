"""COCO RLE (pycocotools' compressed string form), ``{"size": [H, W], "counts": str}``, column-major runs:
what SegEvery's ``coco_rle`` output mode and COCO evaluation use; and :func:`as_binary_mask`, the check every
mask encoder applies to its input."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from ..errors import InvalidMaskError


def mask_to_coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode one H×W mask as a compressed COCO RLE.

    Args:
        mask: H×W numpy array (or CPU tensor), bool or integer (nonzero = on).
    Returns:
        ``{"size": [H, W], "counts": str}``, JSON-serialisable; pycocotools accepts it as is.
    Raises:
        InvalidMaskError: not 2-D, empty, or not bool/integer.
    """
    binary = as_binary_mask(mask)
    return _json_rle(coco_mask.encode(np.asfortranarray(binary, dtype=np.uint8)))


def masks_to_coco_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """Encode N masks at once (one pycocotools call) as compressed COCO RLEs.

    Args:
        masks: N×H×W numpy array (or CPU tensor), bool or integer (nonzero = on); N may be 0.
    Returns:
        N dicts ``{"size": [H, W], "counts": str}``, in input order.
    Raises:
        InvalidMaskError: not 3-D, H or W is 0, or not bool/integer.
    """
    stack = np.asarray(masks)
    if stack.ndim != 3:
        raise InvalidMaskError(f"masks must be N×H×W, got shape {stack.shape}")
    if stack.shape[0] == 0:
        return []
    as_binary_mask(stack[0])  # dtype and H×W checks
    column_major = np.asfortranarray(np.moveaxis(stack != 0, 0, -1), dtype=np.uint8)  # H×W×N
    return [_json_rle(rle) for rle in coco_mask.encode(column_major)]


def coco_rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE (compressed ``counts`` str/bytes, or uncompressed list of run lengths).

    Returns:
        H×W bool numpy array, C-contiguous.
    Raises:
        InvalidMaskError: not a ``{"size": [H, W], "counts": …}`` dict, or counts inconsistent with the size.
    """
    checked = _pycocotools_rle(rle)
    try:
        decoded = coco_mask.decode(checked)
    except ValueError as error:
        raise InvalidMaskError(f"invalid COCO RLE for size {checked['size']}: {error}") from error
    return np.ascontiguousarray(decoded, dtype=bool)


def coco_rle_area(rle: dict[str, Any]) -> int:
    """Number of on pixels of a COCO RLE (compressed or uncompressed), without decoding it to a mask."""
    return int(coco_mask.area(_pycocotools_rle(rle)))


def _json_rle(rle: dict[str, Any]) -> dict[str, Any]:
    height, width = rle["size"]
    return {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")}


def _pycocotools_rle(rle: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise InvalidMaskError('a COCO RLE must be a dict {"size": [H, W], "counts": ...}')
    size = rle["size"]
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_is_int(s) and s >= 0 for s in size):
        raise InvalidMaskError(f"COCO RLE size must be [H, W] non-negative ints, got {size!r}")
    height, width = int(size[0]), int(size[1])
    counts = rle["counts"]
    if isinstance(counts, str):
        if not counts.isascii():
            raise InvalidMaskError("compressed COCO RLE counts must be an ASCII string")
        return {"size": [height, width], "counts": counts.encode("ascii")}
    if isinstance(counts, bytes):
        return {"size": [height, width], "counts": counts}
    runs = np.asarray(counts)
    if runs.ndim != 1 or not np.issubdtype(runs.dtype, np.integer) or (runs < 0).any():
        raise InvalidMaskError("COCO RLE counts must be a str, bytes or a list of non-negative run lengths")
    if int(runs.sum()) != height * width:
        raise InvalidMaskError(
            f"COCO RLE runs add up to {int(runs.sum())} pixels, not H·W = {height * width}"
        )
    return coco_mask.frPyObjects({"size": [height, width], "counts": runs.tolist()}, height, width)


def as_binary_mask(mask: np.ndarray) -> np.ndarray:
    """H×W bool view/copy of a bool or integer mask (nonzero = on)."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise InvalidMaskError(f"mask must be a 2-D H×W array, got shape {array.shape}")
    if array.size == 0:
        raise InvalidMaskError(f"mask must have at least one pixel, got shape {array.shape}")
    if array.dtype == bool:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise InvalidMaskError(
            f"mask must be bool or integer (nonzero = on), got {array.dtype}; threshold logits or "
            "probabilities first"
        )
    return array != 0


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
