"""An independent decoder of Label Studio brush RLEs, for tests and benchmarks only (no production code
decodes brush RLEs): it checks :func:`backend.labelstudio.brush_rle.mask_to_brush_rle` beside the SDK's
``decode_rle``, and reads any stream ``rle-pack`` can write (masks painted in the Label Studio editor too)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from backend.labelstudio.brush_rle import BRUSH_HEADER_BITS, WINDOW_BITS
from litesam.errors import InvalidMaskError


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
    if n_bits < BRUSH_HEADER_BITS:
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
    padded = np.concatenate((data, np.zeros(WINDOW_BITS // 8, dtype=np.uint8)))

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
    position = BRUSH_HEADER_BITS
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
    for k in range(WINDOW_BITS // 8):
        forty |= padded[first + k].astype(np.uint64) << np.uint64(WINDOW_BITS - 8 * (k + 1))
    shift = np.uint64(WINDOW_BITS - word_bits) - (bit_positions & 7).astype(np.uint64)
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


def _positive_int(value: object, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise InvalidMaskError(f"{name} must be a positive int, got {value!r}")
    return int(value)
