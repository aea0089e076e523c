"""Tests of the Label Studio brush RLE encoder (backend.labelstudio.brush_rle) against the SDK's codec and the
independent test decoder (tests/brush_rle_decoder.py)."""

import tracemalloc

import numpy as np
import pytest
import torch
from label_studio_sdk.converter.brush import decode_rle, encode_rle, mask2rle

from backend.labelstudio.brush_rle import mask_to_brush_rle
from litesam.masks import InvalidMaskError
from tests.brush_rle_decoder import brush_rle_to_mask
from tests.mask_cases import MASK_CASES, disc


def _sdk_alpha(rle, height, width):
    return decode_rle(rle).reshape(height, width, 4)[:, :, 3]


@pytest.mark.parametrize("name", sorted(MASK_CASES))
def test_brush_rle_is_byte_identical_to_sdk_and_decodes(name):
    mask = MASK_CASES[name]
    ours = mask_to_brush_rle(mask)
    assert ours == mask2rle(mask.astype(np.uint8) * 255)
    assert all(type(value) is int for value in ours)
    assert np.array_equal(_sdk_alpha(ours, *mask.shape), mask.astype(np.uint8) * 255)
    assert np.array_equal(brush_rle_to_mask(ours, *mask.shape), mask)


def test_mixed_run_masks_really_mix_run_lengths():
    lengths = np.concatenate(
        [np.diff(np.flatnonzero(np.diff(np.r_[2, m.ravel().astype(int), 2]))) for m in MASK_CASES.values()]
    )
    assert lengths.min() == 1 and (lengths > 16_384).any() and ((lengths > 64) & (lengths < 500)).any()


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.int32, np.int64])
def test_brush_rle_accepts_bool_and_integer_masks(dtype):
    mask = MASK_CASES["two_blobs"]
    expected = mask2rle(mask.astype(np.uint8) * 255)
    assert mask_to_brush_rle(mask.astype(dtype)) == expected
    assert mask_to_brush_rle(mask.astype(np.uint8) * 255) == expected  # nonzero = on
    assert mask_to_brush_rle(torch.from_numpy(mask)) == expected
    assert mask_to_brush_rle(np.asfortranarray(mask)) == expected


def test_brush_rle_of_a_non_contiguous_view():
    mask = disc(300, 400, 150, 200, 90)[::2, 1::3]
    assert mask_to_brush_rle(mask) == mask2rle(np.ascontiguousarray(mask).astype(np.uint8) * 255)


def test_brush_rle_round_trip_random_masks():
    rng = np.random.default_rng(7)
    for _ in range(30):
        height, width = (int(v) for v in rng.integers(1, 120, size=2))
        mask = rng.random((height, width)) < rng.random()
        assert np.array_equal(brush_rle_to_mask(mask_to_brush_rle(mask), height, width), mask)


def test_brush_encoder_allocates_no_rgba_sized_array():
    mask = disc(2000, 2000, 1000, 900, 700)
    tracemalloc.start()
    try:
        rle = mask_to_brush_rle(mask)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * mask.size  # the SDK's repeated RGBA array alone is 4·H·W elements
    assert np.array_equal(brush_rle_to_mask(rle, 2000, 2000), mask)


def test_brush_decoder_reads_literal_chunks_of_sdk_encode_rle():
    """Arbitrary RGBA data (as the Label Studio editor paints it) makes the SDK write literal chunks."""
    rng = np.random.default_rng(3)
    alpha_on = rng.random((23, 31)) < 0.4
    alpha_on[5:15, 3:25] = True
    rgba = np.zeros((23, 31, 4), dtype=np.uint8)
    rgba[..., :3] = rng.integers(0, 256, size=(23, 31, 3))
    rgba[..., 3] = alpha_on * rng.integers(1, 256, size=(23, 31))
    rle = encode_rle(rgba.ravel())
    assert np.array_equal(brush_rle_to_mask(rle, 23, 31), alpha_on)


def _rle_pack(values, word_bits, field_bits):
    """A plain rle-pack encoder (bit string): repeat chunks for runs ≥ 2, multi-word literal chunks else."""
    bits = [f"{len(values):032b}", f"{word_bits - 1:05b}"] + [f"{b - 1:04b}" for b in field_bits]
    longest = 1 << max(field_bits)

    def field(count):
        index = next(i for i, b in enumerate(field_bits) if count <= 1 << b)
        return f"{index:02b}" + format(count - 1, f"0{field_bits[index]}b")

    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i] and j + 1 - i < longest:
            j += 1
        if j > i:
            bits += ["1", field(j - i + 1), format(values[i], f"0{word_bits}b")]
            i = j + 1
            continue
        j = i
        while j + 1 < len(values) and values[j + 1] != values[j] and j + 1 - i < longest:
            j += 1
        if j + 1 < len(values) and values[j + 1] == values[j] and j > i:
            j -= 1  # leave the start of the next repeat run to a repeat chunk
        bits += ["0", field(j - i + 1)] + [format(v, f"0{word_bits}b") for v in values[i : j + 1]]
        i = j + 1
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return [int(stream[k : k + 8], 2) for k in range(0, len(stream), 8)]


@pytest.mark.parametrize(
    ("word_bits", "field_bits"),
    [(8, (3, 4, 8, 16)), (8, (2, 5, 9, 12)), (16, (1, 3, 6, 10)), (5, (4, 4, 7, 16))],
)
def test_brush_decoder_reads_other_word_sizes_and_multi_word_literals(word_bits, field_bits):
    rng = np.random.default_rng(word_bits * 100 + field_bits[0])
    height, width = 17, 29
    alpha_on = rng.random((height, width)) < 0.5
    alpha_on[2:9, 4:20] = True
    top = (1 << word_bits) - 1
    rgba = np.zeros((height, width, 4), dtype=np.int64)
    rgba[..., :3] = rng.integers(0, top + 1, size=(height, width, 3))
    rgba[..., 3] = alpha_on * rng.integers(1, top + 1, size=(height, width))
    rgba[10:14] = 0  # long zero runs too
    alpha_on[10:14] = False
    rle = _rle_pack(rgba.ravel().tolist(), word_bits, field_bits)
    assert np.array_equal(brush_rle_to_mask(rle, height, width), alpha_on)


def test_brush_decoder_accepts_numpy_input():
    mask = MASK_CASES["disc_333x517"]
    rle = np.array(mask_to_brush_rle(mask), dtype=np.int64)
    assert np.array_equal(brush_rle_to_mask(rle, 333, 517), mask)
    assert np.array_equal(brush_rle_to_mask(rle.astype(np.uint8), np.int64(333), np.int32(517)), mask)


def test_brush_decoder_rejects_a_size_that_does_not_match():
    rle = mask_to_brush_rle(MASK_CASES["disc_333x517"])
    for height, width in [(517, 332), (332, 517), (1, 1)]:
        with pytest.raises(InvalidMaskError, match=r"H·W·4"):
            brush_rle_to_mask(rle, height, width)
    with pytest.raises(ValueError):  # InvalidMaskError is a ValueError
        brush_rle_to_mask(rle, 333, 518)


def test_brush_decoder_rejects_corrupt_streams():
    rle = mask_to_brush_rle(MASK_CASES["two_blobs"])
    with pytest.raises(InvalidMaskError, match="truncated"):
        brush_rle_to_mask(rle[:-3], 200, 300)
    with pytest.raises(InvalidMaskError, match="header"):
        brush_rle_to_mask(rle[:6], 200, 300)
    with pytest.raises(InvalidMaskError, match="header"):
        brush_rle_to_mask([], 200, 300)
    # a 2×2 stream (16 values) whose header claims 12 values (1×3): the runs overshoot
    overshoot = mask_to_brush_rle(np.array([[1, 0], [0, 0]], dtype=bool))  # runs of 4 and 12 values
    overshoot[:4] = list((12).to_bytes(4, "big"))
    with pytest.raises(InvalidMaskError, match="more than"):
        brush_rle_to_mask(overshoot, 1, 3)


@pytest.mark.parametrize(
    "rle", [[0, 0, 0, 4, 57, 27, 256], [0, 0, 0, 4, 57, 27, -1], [0.0, 1.0, 2.0], [[0, 0], [0, 4]], "abc"]
)
def test_brush_decoder_rejects_non_byte_values(rle):
    with pytest.raises(InvalidMaskError, match="0…255"):
        brush_rle_to_mask(rle, 1, 1)


@pytest.mark.parametrize(("height", "width"), [(0, 5), (5, -1), (True, 5), (2.0, 2)])
def test_brush_decoder_rejects_bad_sizes(height, width):
    with pytest.raises(InvalidMaskError, match="positive int"):
        brush_rle_to_mask(mask_to_brush_rle(np.ones((2, 2), dtype=bool)), height, width)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.zeros((2, 3, 4), dtype=bool), "2-D"),
        (np.zeros(5, dtype=bool), "2-D"),
        (np.zeros((0, 5), dtype=bool), "at least one pixel"),
        (np.zeros((3, 3), dtype=np.float32), "bool or integer"),
    ],
)
def test_brush_encoder_rejects_bad_masks(mask, message):
    with pytest.raises(InvalidMaskError, match=message):
        mask_to_brush_rle(mask)
