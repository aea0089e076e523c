"""Tests of litesam.masks: brush RLE against the Label Studio SDK, COCO RLE, boxes, scores and NMS."""

import json
import math
import tracemalloc

import numpy as np
import pytest
import torch
from label_studio_sdk.converter.brush import decode_rle, encode_rle, mask2rle

from litesam.masks import (
    InvalidMaskError,
    batched_mask_to_box,
    box_iou_matrix,
    box_nms,
    box_xyxy_to_xywh,
    brush_rle_to_mask,
    calculate_stability_score,
    coco_rle_area,
    coco_rle_to_mask,
    mask_iou_matrix,
    mask_nms,
    mask_to_brush_rle,
    mask_to_coco_rle,
    masks_to_coco_rle,
)
from tests.sam_reference import amg

# --- test masks -------------------------------------------------------------------------------------------


def _disc(height, width, cy, cx, radius):
    yy, xx = np.mgrid[:height, :width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2


def _mixed_runs(seed):
    """A random-size mask built from runs whose lengths mix 1–3, tens, hundreds and >16,384 pixels."""
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(1, 400, size=2))
    total = height * width
    runs, value, filled = [], bool(rng.integers(2)), 0
    while filled < total:
        scale = rng.choice([3, 20, 80, 300, 20_000])
        length = min(int(rng.integers(1, scale + 1)), total - filled)
        runs.append((value, length))
        value, filled = not value, filled + length
    flat = np.concatenate([np.full(length, value) for value, length in runs])
    return flat.reshape(height, width)


def _run_boundaries_mask():
    """Runs of 1, 2, 3, 4, 5, 64, 65, 16,384 and 16,385 pixels: the SDK's field-width and split limits."""
    lengths = [1, 2, 3, 4, 5, 64, 65, 16_384, 16_385, 2, 32_768, 32_769, 1]
    flat = np.concatenate([np.full(n, i % 2 == 1) for i, n in enumerate(lengths)])
    width = 7
    flat = np.concatenate([flat, np.zeros(-flat.size % width, dtype=bool)])
    return flat.reshape(-1, width)


_RNG = np.random.default_rng(2024)
BRUSH_CASES = {
    "noise_half": _RNG.random((48, 64)) < 0.5,
    "noise_sparse": _RNG.random((61, 37)) < 0.03,
    "noise_dense": _RNG.random((37, 61)) > 0.03,
    "disc_333x517": _disc(333, 517, 150, 260, 120),
    "disc_517x333": _disc(517, 333, 260, 150, 120),
    "two_blobs": _disc(200, 300, 60, 80, 50) | _disc(200, 300, 140, 220, 45),
    "empty": np.zeros((90, 70), dtype=bool),
    "full": np.ones((70, 90), dtype=bool),
    "one_pixel_on": np.ones((1, 1), dtype=bool),
    "one_pixel_off": np.zeros((1, 1), dtype=bool),
    "one_row": _RNG.random((1, 257)) < 0.5,
    "one_column": _RNG.random((257, 1)) < 0.5,
    "long_runs_full_400": np.ones((400, 400), dtype=bool),
    "long_runs_bands": np.repeat(np.arange(12) % 2 == 0, 50)[:, None] & np.ones((600, 700), dtype=bool),
    "run_boundaries": _run_boundaries_mask(),
    **{f"mixed_runs_seed{seed}": _mixed_runs(seed) for seed in range(12)},
}


def _sdk_alpha(rle, height, width):
    return decode_rle(rle).reshape(height, width, 4)[:, :, 3]


# --- Label Studio brush RLE -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BRUSH_CASES))
def test_brush_rle_is_byte_identical_to_sdk_and_decodes(name):
    mask = BRUSH_CASES[name]
    ours = mask_to_brush_rle(mask)
    assert ours == mask2rle(mask.astype(np.uint8) * 255)
    assert all(type(value) is int for value in ours)
    assert np.array_equal(_sdk_alpha(ours, *mask.shape), mask.astype(np.uint8) * 255)
    assert np.array_equal(brush_rle_to_mask(ours, *mask.shape), mask)


def test_mixed_run_masks_really_mix_run_lengths():
    lengths = np.concatenate(
        [np.diff(np.flatnonzero(np.diff(np.r_[2, m.ravel().astype(int), 2]))) for m in BRUSH_CASES.values()]
    )
    assert lengths.min() == 1 and (lengths > 16_384).any() and ((lengths > 64) & (lengths < 500)).any()


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.int32, np.int64])
def test_brush_rle_accepts_bool_and_integer_masks(dtype):
    mask = BRUSH_CASES["two_blobs"]
    expected = mask2rle(mask.astype(np.uint8) * 255)
    assert mask_to_brush_rle(mask.astype(dtype)) == expected
    assert mask_to_brush_rle(mask.astype(np.uint8) * 255) == expected  # nonzero = on
    assert mask_to_brush_rle(torch.from_numpy(mask)) == expected
    assert mask_to_brush_rle(np.asfortranarray(mask)) == expected


def test_brush_rle_of_a_non_contiguous_view():
    mask = _disc(300, 400, 150, 200, 90)[::2, 1::3]
    assert mask_to_brush_rle(mask) == mask2rle(np.ascontiguousarray(mask).astype(np.uint8) * 255)


def test_brush_rle_round_trip_random_masks():
    rng = np.random.default_rng(7)
    for _ in range(30):
        height, width = (int(v) for v in rng.integers(1, 120, size=2))
        mask = rng.random((height, width)) < rng.random()
        assert np.array_equal(brush_rle_to_mask(mask_to_brush_rle(mask), height, width), mask)


def test_brush_encoder_allocates_no_rgba_sized_array():
    mask = _disc(2000, 2000, 1000, 900, 700)
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
    mask = BRUSH_CASES["disc_333x517"]
    rle = np.array(mask_to_brush_rle(mask), dtype=np.int64)
    assert np.array_equal(brush_rle_to_mask(rle, 333, 517), mask)
    assert np.array_equal(brush_rle_to_mask(rle.astype(np.uint8), np.int64(333), np.int32(517)), mask)


def test_brush_decoder_rejects_a_size_that_does_not_match():
    rle = mask_to_brush_rle(BRUSH_CASES["disc_333x517"])
    for height, width in [(517, 332), (332, 517), (1, 1)]:
        with pytest.raises(InvalidMaskError, match=r"H·W·4"):
            brush_rle_to_mask(rle, height, width)
    with pytest.raises(ValueError):  # InvalidMaskError is a ValueError
        brush_rle_to_mask(rle, 333, 518)


def test_brush_decoder_rejects_corrupt_streams():
    rle = mask_to_brush_rle(BRUSH_CASES["two_blobs"])
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


# --- COCO RLE ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["noise_half", "disc_333x517", "disc_517x333", "empty", "full", "one_pixel_on"]
)
def test_coco_rle_round_trip_area_and_sam_equality(name):
    mask = BRUSH_CASES[name]
    rle = mask_to_coco_rle(mask)
    assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
    assert json.loads(json.dumps(rle)) == rle
    decoded = coco_rle_to_mask(rle)
    assert decoded.dtype == bool and decoded.flags.c_contiguous and np.array_equal(decoded, mask)
    assert coco_rle_area(rle) == int(mask.sum())
    sam = amg.coco_encode_rle(amg.mask_to_rle_pytorch(torch.from_numpy(mask)[None])[0])
    assert rle == sam


def test_coco_rle_batched_equals_single():
    rng = np.random.default_rng(5)
    masks = rng.random((6, 41, 29)) < 0.3
    masks[2] = False
    assert masks_to_coco_rle(masks) == [mask_to_coco_rle(m) for m in masks]
    assert masks_to_coco_rle(torch.from_numpy(masks)) == masks_to_coco_rle(masks)
    assert masks_to_coco_rle(np.zeros((0, 4, 4), dtype=bool)) == []


def test_coco_rle_accepts_bytes_and_uncompressed_counts():
    mask = np.array([[0, 1, 1], [0, 1, 0]], dtype=bool)
    rle = mask_to_coco_rle(mask)
    as_bytes = {"size": rle["size"], "counts": rle["counts"].encode()}
    uncompressed = {"size": [2, 3], "counts": [2, 3, 1]}  # column-major: 0 0 | 1 1 1 | 0
    for variant in (as_bytes, uncompressed):
        assert np.array_equal(coco_rle_to_mask(variant), mask)
        assert coco_rle_area(variant) == 3


@pytest.mark.parametrize(
    "rle",
    [
        {"counts": "0"},
        {"size": [2], "counts": "0"},
        {"size": [2, -3], "counts": "0"},
        {"size": [2, 3], "counts": [2, 3]},
        {"size": [2, 3], "counts": [2, -1, 5]},
        {"size": [2, 3], "counts": "zzzz"},
        {"size": [2, 3], "counts": "ø"},
        {"size": 6, "counts": "06"},
        {"size": [2, 3], "counts": 6},
        [1, 2],
    ],
)
def test_coco_rle_rejects_malformed(rle):
    with pytest.raises(InvalidMaskError):
        coco_rle_to_mask(rle)


# --- boxes and stability score against SAM's amg ----------------------------------------------------------


def test_batched_mask_to_box_equals_sam():
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(2, 3, 37, 53, generator=gen) > 0.995
    masks[0, 1] = False  # empty
    masks[1, 2] = False
    masks[1, 2, 36, 52] = True  # one pixel in the far corner
    masks[1, 0] = True  # full
    ours = batched_mask_to_box(masks)
    assert ours.shape == (2, 3, 4) and ours.dtype == torch.int64
    assert torch.equal(ours, amg.batched_mask_to_box(masks))
    assert torch.equal(ours[0, 1], torch.zeros(4, dtype=torch.int64))
    assert torch.equal(ours[1, 2], torch.tensor([52, 36, 52, 36]))
    for single in (masks[0, 0], masks[0, 1]):  # H×W in, 4 out
        assert torch.equal(batched_mask_to_box(single), amg.batched_mask_to_box(single))
    flat = masks.flatten(0, 1)
    assert torch.equal(batched_mask_to_box(flat), amg.batched_mask_to_box(flat))
    assert torch.equal(batched_mask_to_box(flat.to(torch.uint8)), amg.batched_mask_to_box(flat))


def test_batched_mask_to_box_of_no_masks():
    for shape in [(0, 5, 5), (2, 0, 5, 5), (3, 0, 4)]:
        ours = batched_mask_to_box(torch.zeros(shape, dtype=torch.bool))
        sam = amg.batched_mask_to_box(torch.zeros(shape, dtype=torch.bool))
        assert ours.shape == sam.shape and ours.dtype == torch.int64 and not ours.any()


def test_box_xyxy_to_xywh():
    box = torch.tensor([3, 4, 10, 20])
    assert torch.equal(box_xyxy_to_xywh(box), amg.box_xyxy_to_xywh(box))
    assert torch.equal(box, torch.tensor([3, 4, 10, 20]))  # input untouched
    boxes = torch.tensor([[[1.5, 2.0, 4.0, 8.0], [0.0, 0.0, 0.0, 0.0]]])
    assert torch.equal(box_xyxy_to_xywh(boxes), torch.tensor([[[1.5, 2.0, 2.5, 6.0], [0.0, 0.0, 0.0, 0.0]]]))
    assert torch.equal(box_xyxy_to_xywh(np.array([1, 1, 2, 3])), torch.tensor([1, 1, 1, 2]))
    with pytest.raises(InvalidMaskError):
        box_xyxy_to_xywh(torch.zeros(3, 5))


@pytest.mark.parametrize(("threshold", "offset"), [(0.0, 1.0), (0.5, 0.25), (-1.0, 0.0)])
def test_stability_score_equals_sam(threshold, offset):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 64, 48, generator=gen) * 3 + torch.linspace(-4, 4, 48)
    ours = calculate_stability_score(logits, threshold, offset)
    assert ours.shape == (2, 5) and ours.dtype == torch.float32
    assert torch.equal(ours, amg.calculate_stability_score(logits, threshold, offset))


def test_stability_score_of_an_empty_mask_is_zero_not_nan():
    logits = torch.full((2, 8, 8), -10.0)
    logits[1, :4] = 5.0
    ours = calculate_stability_score(logits, 0.0, 1.0)
    assert ours.tolist() == [0.0, 1.0]
    assert math.isnan(amg.calculate_stability_score(logits, 0.0, 1.0)[0].item())
    with pytest.raises(InvalidMaskError):
        calculate_stability_score(logits, 0.0, -1.0)


# --- NMS --------------------------------------------------------------------------------------------------


def _reference_iou(a, b):
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else math.nan


def _reference_nms(boxes, scores, threshold, iou=_reference_iou):
    """Greedy NMS: highest score first (ties: lower index); drop what has IoU > threshold with a kept box."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if not any(iou(boxes[i], boxes[k]) > threshold for k in keep):
            keep.append(i)
    return keep


def _random_boxes(rng, n):
    centres = rng.integers(0, 60, size=(n, 2))
    sizes = rng.integers(0, 25, size=(n, 2))  # some zero-width/height boxes
    return np.concatenate([centres, centres + sizes], axis=1).astype(np.float64)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_box_nms_equals_reference(threshold):
    rng = np.random.default_rng(int(threshold * 10))
    for n in (1, 2, 40, 150):
        boxes = _random_boxes(rng, n)
        boxes[n // 2] = boxes[0]  # exact duplicates
        scores = rng.integers(0, 8, size=n).astype(np.float64)  # many ties
        keep = box_nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold)
        assert keep.dtype == torch.int64
        assert keep.tolist() == _reference_nms(boxes.tolist(), scores.tolist(), threshold)


def test_box_nms_float32_int_and_empty():
    rng = np.random.default_rng(11)
    boxes = _random_boxes(rng, 80)
    scores = rng.random(80)
    expected = _reference_nms(boxes.tolist(), scores.tolist(), 0.5)
    as_float32 = box_nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores).float(), 0.5)
    assert as_float32.tolist() == expected
    assert box_nms(torch.from_numpy(boxes).long(), torch.from_numpy(scores), 0.5).tolist() == expected
    empty = box_nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.int64 and empty.numel() == 0


def test_box_iou_matrix():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 5.0, 10.0]])
    expected = torch.tensor([[1.0, 0.0, 0.5], [25 / 175, 0.0, 0.0]])
    assert torch.allclose(box_iou_matrix(a, b), expected)


@pytest.mark.parametrize(
    ("boxes", "scores"),
    [
        (torch.zeros(3, 4), torch.zeros(2)),
        (torch.zeros(3, 5), torch.zeros(3)),
        (torch.zeros(3, 4), torch.zeros(3, 1)),
        (np.zeros((3, 4)), torch.zeros(3)),
    ],
)
def test_box_nms_rejects_bad_shapes(boxes, scores):
    with pytest.raises(InvalidMaskError):
        box_nms(boxes, scores, 0.5)


def _random_masks(gen, n, height, width):
    """Axis-aligned rectangles and their noisy variants, so that many pairs overlap."""
    masks = torch.zeros(n, height, width, dtype=torch.bool)
    corners = torch.randint(0, min(height, width) // 2, (n, 2), generator=gen)
    sizes = torch.randint(1, min(height, width) // 2, (n, 2), generator=gen)
    for i in range(n):
        y, x = corners[i].tolist()
        h, w = sizes[i].tolist()
        masks[i, y : y + h, x : x + w] = True
    return masks ^ (torch.rand(n, height, width, generator=gen) > 0.97)


def test_mask_iou_matrix_equals_direct_computation():
    gen = torch.Generator().manual_seed(4)
    a, b = _random_masks(gen, 7, 32, 40), _random_masks(gen, 5, 32, 40)
    a[0] = False
    b[0] = False
    ious = mask_iou_matrix(a, b)
    assert ious.shape == (7, 5) and ious.dtype == torch.float32
    for i in range(7):
        for j in range(5):
            union = (a[i] | b[j]).sum().item()
            expected = (a[i] & b[j]).sum().item() / union if union else 0.0
            assert ious[i, j].item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(InvalidMaskError):
        mask_iou_matrix(a, b[:, :, :10])


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.8])
def test_mask_nms_equals_reference(threshold):
    gen = torch.Generator().manual_seed(int(threshold * 10))
    masks = _random_masks(gen, 40, 24, 24)
    masks[7] = masks[3]
    scores = torch.randint(0, 6, (40,), generator=gen).float()
    flat = masks.flatten(1).numpy()

    def iou(i, j):
        union = (flat[i] | flat[j]).sum()
        return (flat[i] & flat[j]).sum() / union if union else 0.0

    expected = _reference_nms(list(range(40)), scores.tolist(), threshold, iou=iou)
    assert mask_nms(masks, scores, threshold).tolist() == expected
