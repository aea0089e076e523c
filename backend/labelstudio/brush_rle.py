"""Masks ↔ Label Studio brush RLE, the codec of ``brushlabels`` results (labelstudio-protocol.md §1.7).

It lives beside the Label Studio code because only Label Studio reads this format. The encoder's one
production caller is :mod:`backend.labelstudio.results`; the decoder's is :mod:`backend.labelstudio.regions`
(annotations read for training). The tests and the benchmark check both against an independent decoder
(``tests/brush_rle_decoder.py``) and the SDK's.

The Label Studio **brush RLE** is the ``value.rle`` list of a ``brushlabels`` result. Label Studio decodes it with
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

import numpy as np

from litesam.errors import InvalidMaskError
from litesam.masks import as_binary_mask

#: Bits per value word; Label Studio brush values are bytes.
BRUSH_WORD_BITS = 8
#: Widths of the four run-length fields, selected by the 2-bit field index of each chunk.
BRUSH_RUN_FIELD_BITS = (3, 4, 8, 16)
#: Bits before the first chunk: value count, word size, the four field widths.
BRUSH_HEADER_BITS = 32 + 5 + 4 * 4
#: The SDK cuts runs longer than this many values into chunks of exactly this many values.
_BRUSH_MAX_CHUNK = 1 << 16
#: Longest run (in values) of the first three field widths: the SDK takes the narrowest that holds a run.
_BRUSH_FIELD_LIMITS = np.array([1 << bits for bits in BRUSH_RUN_FIELD_BITS[:3]])
#: Total bits of a repeat chunk for each field index: flag, index, length field, one 8-bit word.
_BRUSH_CHUNK_BITS = np.array([3 + bits + BRUSH_WORD_BITS for bits in BRUSH_RUN_FIELD_BITS], dtype=np.uint64)
#: The 21 header bits after the value count: word size − 1, then each field width − 1.
_BRUSH_PARAMS = int(f"{BRUSH_WORD_BITS - 1:05b}" + "".join(f"{b - 1:04b}" for b in BRUSH_RUN_FIELD_BITS), 2)
#: Every encoded code fits, at any bit offset inside its first byte, in this many bits (5 bytes).
WINDOW_BITS = 40


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
    flat = as_binary_mask(mask).ravel()
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
    widths = np.concatenate((np.array([32, BRUSH_HEADER_BITS - 32], dtype=np.uint64), widths))
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
    window = codes << (np.uint64(WINDOW_BITS) - (starts & np.uint64(7)) - widths)
    out = np.zeros(n_bytes + WINDOW_BITS // 8, dtype=np.uint8)
    for k in range(WINDOW_BITS // 8):
        # first_byte is strictly increasing, so the fancy-indexed read-modify-write has no duplicates.
        out[first_byte + k] |= (window >> np.uint64(WINDOW_BITS - 8 * (k + 1))).astype(np.uint8)
    return out[:n_bytes]


def brush_rle_to_mask(rle, height: int, width: int) -> np.ndarray:
    """Decode a Label Studio brush RLE into an H×W bool mask: on where the alpha value is at least 128.

    Reads any stream ``rle-pack`` writes (any word size and field widths, repeat and literal chunks), so
    masks painted in the Label Studio editor too, whose antialiased edges carry partial alpha: a pixel at
    least half covered is on, as everywhere masks are resized in Lite-SAM. One Python step per chunk (about
    a microsecond each; a mask has one chunk per run of equal pixels, plus literal stretches).

    Args:
        rle: the ``value.rle`` list (ints 0…255).
        height, width: the mask's size in pixels (``original_height`` / ``original_width`` of the result).
    Raises:
        InvalidMaskError: not a list of bytes, a value count other than H·W·4, or a stream that ends early.
    """
    try:
        data = np.asarray(rle, dtype=np.int64)
    except (TypeError, ValueError):
        raise InvalidMaskError("a brush RLE must be a list of integers 0…255") from None
    if data.ndim != 1 or data.size < 7 or data.min() < 0 or data.max() > 255:
        raise InvalidMaskError("a brush RLE must be a list of at least 7 integers 0…255")
    bits = np.unpackbits(data.astype(np.uint8))
    reader = _BitReader(bits)
    count = reader.read(32)
    if count != 4 * height * width:
        raise InvalidMaskError(
            f"the brush RLE holds {count} values, but a {width}×{height} mask needs {4 * height * width}"
        )
    word = reader.read(5) + 1
    fields = [reader.read(4) + 1 for _ in range(4)]
    values, lengths = [], []
    done = 0
    while done < count:
        literal = reader.read(1) == 0
        run = reader.read(fields[reader.read(2)]) + 1
        if literal:
            words = reader.read_many(word, run)
            values.extend(words.tolist())
            lengths.extend([1] * run)
        else:
            values.append(reader.read(word))
            lengths.append(run)
        done += run
    if done != count:
        raise InvalidMaskError(f"the brush RLE's chunks hold {done} values, its header says {count}")
    flat = np.repeat(np.asarray(values, dtype=np.int64), np.asarray(lengths, dtype=np.int64))
    return flat.reshape(height, width, 4)[:, :, 3] >= 128


class _BitReader:
    """Big-endian unsigned integers from a bit array (one uint8 0/1 per bit)."""

    def __init__(self, bits: np.ndarray) -> None:
        self.bits = bits
        self.position = 0

    def read(self, width: int) -> int:
        end = self.position + width
        if end > self.bits.size:
            raise InvalidMaskError("the brush RLE ends in the middle of a chunk")
        value = 0
        for bit in self.bits[self.position : end].tolist():
            value = (value << 1) | bit
        self.position = end
        return value

    def read_many(self, width: int, count: int) -> np.ndarray:
        end = self.position + width * count
        if end > self.bits.size:
            raise InvalidMaskError("the brush RLE ends in the middle of a literal chunk")
        block = self.bits[self.position : end].reshape(count, width).astype(np.int64)
        self.position = end
        return block @ (1 << np.arange(width - 1, -1, -1, dtype=np.int64))
