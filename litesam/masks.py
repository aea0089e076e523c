"""Stateless helpers on binary masks and boxes: mask encodings, mask → box, stability score, NMS.

Conventions used throughout:

* a mask is an H×W array (or a ``…×H×W`` tensor) indexed ``[row, col]`` = ``[y, x]``; "on" means ``True``
  (or nonzero where another dtype is accepted);
* boxes are in pixels of whatever frame the masks live in. **XYXY** = ``(x1, y1, x2, y2)``; boxes measured on
  masks are pixel-inclusive (``x2`` is the column of the right-most on pixel, as in SAM). **XYWH** =
  ``(x1, y1, x2 − x1, y2 − y1)`` (SAM's convention: no ``+ 1``);
* functions never modify their inputs and keep no state.

Two mask encodings are produced:

* **COCO RLE** (pycocotools' compressed string form), ``{"size": [H, W], "counts": str}``, column-major runs;
  what SegEvery's ``coco_rle`` output mode and COCO evaluation use.
* **Label Studio brush RLE**, the ``value.rle`` list of a ``brushlabels`` result. Label Studio decodes it with
  thi-ng's ``rle-pack`` into a flat RGBA image (H·W·4 bytes, row-major, channel 3 is the mask). The bit
  stream, written most significant bit first and sent as a list of byte values, is:

  ========================  =================================================================
  32 bits                   number of values N (= H·W·4)
  5 bits                    word size − 1 (8-bit words here)
  4 × 4 bits                the four run-length field widths − 1 (3, 4, 8 and 16 bits here)
  chunks, until N values    1 flag bit (1 = one word repeated, 0 = literal words), 2 bits picking one of
                            the four field widths, run length − 1 in that many bits, then one word
                            (repeat) or run-length words (literal)
  zero padding              up to the next byte boundary
  ========================  =================================================================

  :func:`mask_to_brush_rle` reproduces, byte for byte, what ``label_studio_sdk.converter.brush.mask2rle``
  writes for a 0/255 mask: every run of equal pixels becomes one repeat chunk of 4·run values whose field
  width is the smallest of 3, 4, 8 or 16 bits that the SDK would pick for that run; runs of more than 65,536
  values are cut into 65,536-value chunks plus a remainder, all with the 16-bit field; the stream is padded
  with 1 to 8 zero bits (a full zero byte when it already ends on a byte boundary).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as coco_mask

from .errors import InvalidMaskError


# --- Label Studio brush RLE -------------------------------------------------------------------------------

#: Bits per value word; Label Studio brush values are bytes.
BRUSH_WORD_BITS = 8
#: Widths of the four run-length fields, selected by the 2-bit field index of each chunk.
BRUSH_RUN_FIELD_BITS = (3, 4, 8, 16)
#: Bits before the first chunk: value count, word size, the four field widths.
_BRUSH_HEADER_BITS = 32 + 5 + 4 * 4
#: The SDK cuts runs longer than this many values into chunks of exactly this many values.
_BRUSH_MAX_CHUNK = 1 << 16
#: Longest run (in values) of the first three field widths: the SDK takes the narrowest that holds a run.
_BRUSH_FIELD_LIMITS = np.array([1 << bits for bits in BRUSH_RUN_FIELD_BITS[:3]])
#: Total bits of a repeat chunk for each field index: flag, index, length field, one 8-bit word.
_BRUSH_CHUNK_BITS = np.array([3 + bits + BRUSH_WORD_BITS for bits in BRUSH_RUN_FIELD_BITS], dtype=np.uint64)
#: The 21 header bits after the value count: word size − 1, then each field width − 1.
_BRUSH_PARAMS = int(f"{BRUSH_WORD_BITS - 1:05b}" + "".join(f"{b - 1:04b}" for b in BRUSH_RUN_FIELD_BITS), 2)
#: Every encoded code fits, at any bit offset inside its first byte, in this many bits (5 bytes).
_WINDOW_BITS = 40


def mask_to_brush_rle(mask: np.ndarray) -> list[int]:
    """Encode a binary mask as a Label Studio brush RLE (``value.rle`` of a ``brushlabels`` result).

    The output equals ``label_studio_sdk.converter.brush.mask2rle((mask != 0).astype(np.uint8) * 255)``
    exactly (same list of byte values), but works on the runs of the mask, not on a repeated RGBA array:
    its cost grows with the number of runs plus one pass over the H·W pixels. Every RGBA channel of an on
    pixel is 255 and of an off pixel 0.

    Args:
        mask: H×W numpy array, bool or any integer dtype (nonzero = on), row-major pixels of the original
            image. A CPU torch tensor is accepted too.
    Returns:
        The RLE as a list of Python ints in 0…255.
    Raises:
        InvalidMaskError: not 2-D, empty, a float/other dtype, or more than 2³⁰ − 1 pixels (the value count
            H·W·4 must fit the 32-bit header).
    """
    flat = _as_binary_mask(mask).ravel()
    n_pixels = flat.size
    if 4 * n_pixels >= 1 << 32:
        raise InvalidMaskError(
            f"a brush RLE holds at most 2^32 - 1 values (H·W·4); a mask of {n_pixels} pixels is too large"
        )
    # Runs of equal pixels in row-major order; each pixel is 4 equal RGBA values.
    bounds = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [n_pixels]))
    run_values = np.where(flat[bounds[:-1]], np.uint64(255), np.uint64(0))
    run_lengths = 4 * np.diff(bounds)
    field_index = np.searchsorted(_BRUSH_FIELD_LIMITS, run_lengths)

    # Runs longer than 65,536 values become full 65,536-value chunks plus a remainder chunk; all of them
    # keep the run's 16-bit field (the SDK picks the field from the run, not from the chunk).
    extra_chunks = (run_lengths - 1) // _BRUSH_MAX_CHUNK
    chunk_lengths = run_lengths
    if extra_chunks.any():
        per_run = extra_chunks + 1
        run_of_chunk = np.repeat(np.arange(run_lengths.size), per_run)
        piece = np.arange(run_of_chunk.size) - np.repeat(np.cumsum(per_run) - per_run, per_run)
        remainder = run_lengths - extra_chunks * _BRUSH_MAX_CHUNK
        full = piece < extra_chunks[run_of_chunk]
        chunk_lengths = np.where(full, _BRUSH_MAX_CHUNK, remainder[run_of_chunk])
        run_values = run_values[run_of_chunk]
        field_index = field_index[run_of_chunk]

    field_index = field_index.astype(np.uint64)
    widths = _BRUSH_CHUNK_BITS[field_index]
    codes = (
        (np.uint64(1) << (widths - np.uint64(1)))  # repeat flag
        | (field_index << (widths - np.uint64(3)))
        | ((chunk_lengths.astype(np.uint64) - np.uint64(1)) << np.uint64(BRUSH_WORD_BITS))
        | run_values
    )
    codes = np.concatenate((np.array([4 * n_pixels, _BRUSH_PARAMS], dtype=np.uint64), codes))
    widths = np.concatenate((np.array([32, _BRUSH_HEADER_BITS - 32], dtype=np.uint64), widths))
    return _pack_codes(codes, widths).tolist()


def _pack_codes(codes: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Concatenate variable-width codes into a big-endian bit stream; returns the uint8 byte array.

    ``codes`` and ``widths`` are uint64 arrays; every width is between 9 and 33 bits, so consecutive codes
    start in distinct bytes and a code at any offset fits a 5-byte window. The stream is padded with zero
    bits to ``total_bits // 8 + 1`` bytes: 1 to 8 padding bits, as the SDK writes it.
    """
    ends = np.cumsum(widths)
    starts = ends - widths
    n_bytes = int(ends[-1]) // 8 + 1
    first_byte = (starts >> np.uint64(3)).astype(np.intp)
    window = codes << (np.uint64(_WINDOW_BITS) - (starts & np.uint64(7)) - widths)
    out = np.zeros(n_bytes + _WINDOW_BITS // 8, dtype=np.uint8)
    for k in range(_WINDOW_BITS // 8):
        # first_byte is strictly increasing, so the fancy-indexed read-modify-write has no duplicates.
        out[first_byte + k] |= (window >> np.uint64(_WINDOW_BITS - 8 * (k + 1))).astype(np.uint8)
    return out[:n_bytes]


def brush_rle_to_mask(rle: Sequence[int] | np.ndarray, height: int, width: int) -> np.ndarray:
    """Decode a Label Studio brush RLE into an H×W bool mask (alpha channel nonzero = on).

    Accepts any stream ``rle-pack`` can write (word sizes 1–32 bits, field widths 1–16 bits, repeat and
    literal chunks), e.g. masks painted in the Label Studio editor, not only those of
    :func:`mask_to_brush_rle`. Vectorised: a lookup table gives, for every bit position, where a chunk
    starting there would end; the chain of real chunk starts through that table is found by pointer
    doubling, and the pixels are filled with ``np.repeat``. Time and memory grow with the RLE's length in
    bits (about 20 bytes of temporaries per bit) plus H·W; Python-level steps are bounded by a constant.

    Args:
        rle: the ``value.rle`` list (ints 0…255), or a 1-D integer numpy array.
        height: H, the image height in pixels (``original_height`` of the result).
        width: W, the image width in pixels (``original_width``).
    Returns:
        H×W bool numpy array, row-major (``[y, x]``), True where the RGBA alpha value is nonzero.
    Raises:
        InvalidMaskError: ``rle`` is not a list of byte values, its value count differs from H·W·4, it ends
            before H·W·4 values are decoded, or its runs overshoot H·W·4.
    """
    data = _as_rle_bytes(rle)
    height, width = _positive_int(height, "height"), _positive_int(width, "width")
    n_pixels = height * width
    n_bits = 8 * data.size
    if n_bits < _BRUSH_HEADER_BITS:
        raise InvalidMaskError(f"brush RLE has {data.size} bytes, shorter than its 7-byte header")
    header = int.from_bytes(data[:7].tobytes(), "big")
    n_values = header >> 24
    if n_values != 4 * n_pixels:
        raise InvalidMaskError(
            f"brush RLE holds {n_values} values but a {width}×{height} (W×H) RGBA mask needs "
            f"H·W·4 = {4 * n_pixels}; pass the original_height/original_width the RLE was made for"
        )
    word_bits = ((header >> 19) & 31) + 1
    field_bits = tuple(((header >> (15 - 4 * i)) & 15) + 1 for i in range(4))
    padded = np.concatenate((data, np.zeros(_WINDOW_BITS // 8, dtype=np.uint8)))

    chain = _chunk_chain(padded, data.size, word_bits, field_bits)
    repeat, counts, word_start, chunk_end = _chunk_fields(padded, chain, word_bits, field_bits)
    totals = np.cumsum(counts)
    last = int(np.searchsorted(totals, n_values))
    if last == chain.size or chunk_end[last] > n_bits:
        done = int(totals[last - 1]) if last else 0
        raise InvalidMaskError(
            f"brush RLE ends after {done} of its {n_values} values; it is truncated or corrupt"
        )
    if totals[last] != n_values:
        raise InvalidMaskError(
            f"brush RLE runs add up to {int(totals[last])} values, more than its {n_values}"
        )
    repeat, word_start, ends = repeat[: last + 1], word_start[: last + 1], totals[: last + 1]
    begins = ends - counts[: last + 1]
    # Pixel k's alpha is value 4k + 3, so a chunk of values [b, e) holds the alpha of pixels b//4 … e//4 − 1.
    pixels_per_chunk = ends // 4 - begins // 4
    if repeat.all():
        flat = np.repeat(_read_words(padded, word_start, word_bits) != 0, pixels_per_chunk)
    else:
        chunk_of_pixel = np.repeat(np.arange(last + 1), pixels_per_chunk)
        alpha_index = 4 * np.arange(n_pixels, dtype=np.int64) + 3
        literal_step = np.where(repeat, 0, word_bits)[chunk_of_pixel]
        positions = word_start[chunk_of_pixel] + (alpha_index - begins[chunk_of_pixel]) * literal_step
        flat = _read_words(padded, positions, word_bits) != 0
    return flat.reshape(height, width)


#: The chain walk in :func:`_chunk_chain` takes at most about this many Python steps.
_MAX_WALK_STEPS = 16384


def _chunk_chain(padded: np.ndarray, n_bytes: int, word_bits: int, field_bits: tuple[int, ...]) -> np.ndarray:
    """Bit positions of the successive chunk starts, from the first chunk to the end of the stream (int64).

    ``jump[p]`` is where the next chunk starts if one starts at bit ``p`` (``n_bits`` = past the end). The
    chain from the first chunk is ``start, jump[start], jump[jump[start]], …``. ``k`` rounds of
    ``jump = jump[jump]`` give a table that skips ``2**k`` chunks; ``k`` is chosen so that walking it takes at
    most ~:data:`_MAX_WALK_STEPS` steps, and the skipped chunks are then filled in with ``2**k − 1`` gathers
    on arrays of the walk's length.
    """
    n_bits = 8 * n_bytes
    steps = _chunk_step_table(word_bits, field_bits)
    window_bits = 3 + max(field_bits)
    by_byte = np.zeros(n_bytes, dtype=np.uint32)
    for k in range(4):
        by_byte |= padded[k : k + n_bytes].astype(np.uint32) << np.uint32(24 - 8 * k)
    shifts = (32 - window_bits - np.arange(8)).astype(np.uint32)
    windows = (by_byte[:, None] >> shifts[None, :]) & np.uint32((1 << window_bits) - 1)  # n_bytes×8
    position_dtype = np.int32 if n_bits + int(steps.max()) < 2**31 else np.int64
    first_bits = (8 * np.arange(n_bytes, dtype=position_dtype))[:, None] + np.arange(8, dtype=position_dtype)
    single = np.empty(n_bits + 1, dtype=position_dtype)
    np.minimum(steps[windows] + first_bits, n_bits, out=single[:n_bits].reshape(n_bytes, 8))
    single[n_bits] = n_bits
    del windows, first_bits

    longest_chain = n_bits // int(steps.min()) + 1
    rounds = max(0, int(np.ceil(np.log2(longest_chain / _MAX_WALK_STEPS))))
    jump = single
    for _ in range(rounds):
        jump = jump[jump]
    sparse = []
    position = _BRUSH_HEADER_BITS
    while position < n_bits:
        sparse.append(position)
        position = int(jump[position])
    del jump
    rows = [np.asarray(sparse, dtype=position_dtype)]
    for _ in range(2**rounds - 1):
        rows.append(single[rows[-1]])
    chain = np.stack(rows, axis=1).ravel()
    return chain[chain < n_bits].astype(np.int64)


@functools.lru_cache(maxsize=8)
def _chunk_step_table(word_bits: int, field_bits: tuple[int, ...]) -> np.ndarray:
    """Length in bits of a chunk, indexed by its first ``3 + max(field_bits)`` bits (read-only, int32)."""
    window_bits = 3 + max(field_bits)
    window = np.arange(1 << window_bits, dtype=np.int64)
    width = np.asarray(field_bits, dtype=np.int64)[(window >> (window_bits - 3)) & 3]
    counts = ((window >> (window_bits - 3 - width)) & ((1 << width) - 1)) + 1
    repeat = (window >> (window_bits - 1)).astype(bool)
    table = (3 + width + np.where(repeat, word_bits, counts * word_bits)).astype(np.int32)
    table.setflags(write=False)
    return table


def _chunk_fields(
    padded: np.ndarray, starts: np.ndarray, word_bits: int, field_bits: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse the chunks starting at bit positions ``starts`` (int64).

    Returns (repeat flag bool, value count int64, bit position of the first word int64, bit position
    just after the chunk int64).
    """
    window_bits = 3 + max(field_bits)
    window = _read_words(padded, starts, window_bits).astype(np.int64)
    repeat = (window >> (window_bits - 1)).astype(bool)
    width = np.asarray(field_bits, dtype=np.int64)[(window >> (window_bits - 3)) & 3]
    counts = ((window >> (window_bits - 3 - width)) & ((1 << width) - 1)) + 1
    word_start = starts + 3 + width
    return repeat, counts, word_start, starts + _chunk_step_table(word_bits, field_bits)[window]


def _read_words(padded: np.ndarray, bit_positions: np.ndarray, word_bits: int) -> np.ndarray:
    """Read ``word_bits``-bit (≤ 32) big-endian words starting at the given bit positions; uint64 array."""
    first = bit_positions >> 3
    forty = np.zeros(bit_positions.shape, dtype=np.uint64)
    for k in range(_WINDOW_BITS // 8):
        forty |= padded[first + k].astype(np.uint64) << np.uint64(_WINDOW_BITS - 8 * (k + 1))
    shift = np.uint64(_WINDOW_BITS - word_bits) - (bit_positions & 7).astype(np.uint64)
    return (forty >> shift) & np.uint64((1 << word_bits) - 1)


def _as_rle_bytes(rle: Sequence[int] | np.ndarray) -> np.ndarray:
    values = np.asarray(rle)
    if values.ndim != 1 or not (values.size == 0 or np.issubdtype(values.dtype, np.integer)):
        raise InvalidMaskError(
            f"brush RLE must be a flat list of ints 0…255, got an array of shape {values.shape} and dtype "
            f"{values.dtype}"
        )
    if values.size and (values.min() < 0 or values.max() > 255):
        raise InvalidMaskError(
            f"brush RLE values must be bytes 0…255, got values from {values.min()} to {values.max()}"
        )
    return values.astype(np.uint8)


# --- COCO RLE (pycocotools) -------------------------------------------------------------------------------


def mask_to_coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode one H×W mask as a compressed COCO RLE.

    Args:
        mask: H×W numpy array (or CPU tensor), bool or integer (nonzero = on).
    Returns:
        ``{"size": [H, W], "counts": str}``, JSON-serialisable; pycocotools accepts it as is.
    Raises:
        InvalidMaskError: not 2-D, empty, or not bool/integer.
    """
    binary = _as_binary_mask(mask)
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
    _as_binary_mask(stack[0])  # dtype and H×W checks
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


def _as_binary_mask(mask: np.ndarray) -> np.ndarray:
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


def _positive_int(value: object, name: str) -> int:
    if not _is_int(value) or value <= 0:
        raise InvalidMaskError(f"{name} must be a positive int, got {value!r}")
    return int(value)


# --- boxes, scores, NMS (torch) ---------------------------------------------------------------------------


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes around masks, pixel-inclusive; ``[0, 0, 0, 0]`` for an empty mask.

    Args:
        masks: ``…×H×W`` tensor, bool (other dtypes: nonzero = on), any number of leading dims (also none).
    Returns:
        ``…×4`` int64 tensor on the masks' device: ``(x1, y1, x2, y2)`` = (left-most column, top row,
        right-most column, bottom row) of the on pixels, in the masks' pixel frame.
    Raises:
        InvalidMaskError: fewer than 2 dims.
    """
    if not isinstance(masks, torch.Tensor) or masks.dim() < 2:
        raise InvalidMaskError(f"masks must be a …×H×W tensor, got {getattr(masks, 'shape', type(masks))}")
    lead, (height, width) = masks.shape[:-2], masks.shape[-2:]
    if masks.numel() == 0:
        return torch.zeros(*lead, 4, dtype=torch.int64, device=masks.device)
    flat = masks.reshape(-1, height, width)
    if flat.dtype != torch.bool:
        flat = flat != 0
    rows = flat.any(dim=2)  # B×H: row holds an on pixel
    cols = flat.any(dim=1)  # B×W
    ys = torch.arange(height, device=masks.device)
    xs = torch.arange(width, device=masks.device)
    boxes = torch.stack(
        (
            torch.where(cols, xs, width).amin(dim=1),
            torch.where(rows, ys, height).amin(dim=1),
            torch.where(cols, xs, -1).amax(dim=1),
            torch.where(rows, ys, -1).amax(dim=1),
        ),
        dim=1,
    )
    boxes = boxes * rows.any(dim=1, keepdim=True)
    return boxes.reshape(*lead, 4)


def box_xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """Convert ``…×4`` XYXY boxes to XYWH ``(x1, y1, x2 − x1, y2 − y1)``; same dtype, a new tensor.

    A numpy array or list is accepted and converted with ``torch.as_tensor``.
    """
    boxes = torch.as_tensor(boxes)
    if boxes.dim() == 0 or boxes.shape[-1] != 4:
        raise InvalidMaskError(f"boxes must be …×4 XYXY, got shape {tuple(boxes.shape)}")
    return torch.cat((boxes[..., :2], boxes[..., 2:] - boxes[..., :2]), dim=-1)


def calculate_stability_score(
    mask_logits: torch.Tensor, mask_threshold: float, threshold_offset: float
) -> torch.Tensor:
    """IoU of each mask thresholded at ``threshold + offset`` with the same mask at ``threshold − offset``.

    The higher threshold's mask lies inside the lower one's, so the IoU is the ratio of their pixel counts.

    Args:
        mask_logits: ``…×H×W`` float tensor of mask logits.
        mask_threshold: logit threshold of the binary mask (0.0 in SAM).
        threshold_offset: non-negative offset (1.0 in SAM).
    Returns:
        ``…`` float32 tensor in [0, 1]. A mask with no pixel above ``threshold − offset`` scores 0.0 (SAM's
        ``amg`` returns 0/0 = NaN there); all other values equal ``amg.calculate_stability_score``.
    """
    if threshold_offset < 0:
        raise InvalidMaskError(f"threshold_offset must be >= 0, got {threshold_offset}")
    if not isinstance(mask_logits, torch.Tensor) or mask_logits.dim() < 2:
        raise InvalidMaskError(
            f"mask_logits must be a …×H×W tensor, got {getattr(mask_logits, 'shape', type(mask_logits))}"
        )
    inner = (mask_logits > mask_threshold + threshold_offset).sum(dim=(-2, -1))
    outer = (mask_logits > mask_threshold - threshold_offset).sum(dim=(-2, -1))
    return inner.to(torch.float32) / outer.clamp(min=1).to(torch.float32)


def box_iou_matrix(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of XYXY boxes, areas ``(x2 − x1)·(y2 − y1)`` (torchvision's convention).

    Args:
        boxes_a: M×4 XYXY, boxes_b: N×4 XYXY, same frame; integer boxes are computed in float32.
    Returns:
        M×N float tensor (float32, or the boxes' floating dtype). Two zero-area boxes give NaN (0/0), which
        no IoU threshold exceeds.
    """
    a, b = _float_boxes(boxes_a, "boxes_a"), _float_boxes(boxes_b, "boxes_b")
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    overlap = (bottom_right - top_left).clamp(min=0)
    intersection = overlap[..., 0] * overlap[..., 1]
    return intersection / (area_a[:, None] + area_b[None, :] - intersection)


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression of XYXY boxes (same result as ``torchvision.ops.nms``).

    Boxes are visited by descending score (equal scores: lower index first); a box is kept unless its IoU
    (:func:`box_iou_matrix`) with an already kept box is greater than ``iou_threshold``.

    Args:
        boxes: N×4 XYXY tensor (any frame, float or int).
        scores: N tensor of scores.
        iou_threshold: IoU above which the lower-scored box is dropped.
    Returns:
        int64 tensor of kept indices into ``boxes``, by descending score, on the boxes' device.
    Memory: an N×N bool matrix (9 MB at N = 3,000).
    """
    order, count = _nms_order(boxes, scores, iou_threshold, "boxes")
    sorted_boxes = _float_boxes(boxes, "boxes")[order]
    suppresses = np.empty((count, count), dtype=bool)
    for start in range(0, count, _NMS_ROWS):
        rows = box_iou_matrix(sorted_boxes[start : start + _NMS_ROWS], sorted_boxes)
        suppresses[start : start + _NMS_ROWS] = (rows > iou_threshold).cpu().numpy()
    return order[torch.from_numpy(_greedy_keep(suppresses)).to(order.device)]


def mask_iou_matrix(masks_a: torch.Tensor, masks_b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of binary masks of one frame (meant for low-resolution masks, e.g. 256×256).

    Args:
        masks_a: M×H×W tensor, masks_b: N×H×W tensor; bool (other dtypes: nonzero = on).
    Returns:
        M×N float32 tensor; two empty masks have IoU 0. Cost: one M×(H·W) by (H·W)×N matrix product.
    """
    a, b = _flat_masks(masks_a, "masks_a"), _flat_masks(masks_b, "masks_b")
    if a.shape[1] != b.shape[1]:
        raise InvalidMaskError(f"masks must share H×W, got {tuple(masks_a.shape)} and {tuple(masks_b.shape)}")
    # Pixel counts are exact in float32 up to 2^24 pixels per mask.
    dtype = torch.float32 if a.shape[1] <= 1 << 24 else torch.float64
    a, b = a.to(dtype), b.to(dtype)
    intersection = a @ b.T
    union = a.sum(dim=1)[:, None] + b.sum(dim=1)[None, :] - intersection
    return (intersection / union.clamp(min=1)).to(torch.float32)


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS on mask IoU (:func:`mask_iou_matrix`), with the ordering rules of :func:`box_nms`.

    Args:
        masks: N×H×W tensor, bool (other dtypes: nonzero = on).
        scores: N tensor of scores.
        iou_threshold: mask IoU above which the lower-scored mask is dropped.
    Returns:
        int64 tensor of kept indices into ``masks``, by descending score.
    """
    if not isinstance(masks, torch.Tensor) or masks.dim() != 3:
        raise InvalidMaskError(f"masks must be an N×H×W tensor, got {getattr(masks, 'shape', type(masks))}")
    order, count = _nms_order(masks, scores, iou_threshold, "masks")
    sorted_masks = masks[order]
    suppresses = np.empty((count, count), dtype=bool)
    for start in range(0, count, _NMS_ROWS):
        rows = mask_iou_matrix(sorted_masks[start : start + _NMS_ROWS], sorted_masks)
        suppresses[start : start + _NMS_ROWS] = (rows > iou_threshold).cpu().numpy()
    return order[torch.from_numpy(_greedy_keep(suppresses)).to(order.device)]


#: Rows of the pairwise IoU matrix computed at once by the NMS functions (bounds temporary memory).
_NMS_ROWS = 1024


def _nms_order(items: torch.Tensor, scores: torch.Tensor, iou_threshold: float, name: str):
    if not isinstance(items, torch.Tensor) or not isinstance(scores, torch.Tensor):
        raise InvalidMaskError(f"{name} and scores must be torch tensors")
    if scores.dim() != 1 or items.dim() == 0 or items.shape[0] != scores.shape[0]:
        raise InvalidMaskError(
            f"scores must be a 1-D tensor with one score per entry of {name}, got {name} "
            f"{tuple(items.shape)} and scores {tuple(scores.shape)}"
        )
    if not np.isfinite(iou_threshold):
        raise InvalidMaskError(f"iou_threshold must be a finite number, got {iou_threshold}")
    order = torch.sort(scores, descending=True, stable=True).indices
    return order, int(scores.shape[0])


def _greedy_keep(suppresses: np.ndarray) -> np.ndarray:
    """Positions kept by greedy NMS; ``suppresses[i, j]``: i, if kept, removes j (visiting order)."""
    removed = np.zeros(suppresses.shape[0], dtype=bool)
    keep = []
    for i in range(suppresses.shape[0]):
        if not removed[i]:
            keep.append(i)
            removed |= suppresses[i]
    return np.asarray(keep, dtype=np.int64)


def _float_boxes(boxes: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        got = getattr(boxes, "shape", type(boxes))
        raise InvalidMaskError(f"{name} must be an N×4 XYXY tensor, got {got}")
    return boxes if boxes.is_floating_point() else boxes.to(torch.float32)


def _flat_masks(masks: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(masks, torch.Tensor) or masks.dim() != 3:
        raise InvalidMaskError(f"{name} must be an N×H×W tensor, got {getattr(masks, 'shape', type(masks))}")
    flat = masks.flatten(1)
    return flat if flat.dtype == torch.bool else flat != 0
