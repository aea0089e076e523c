"""Tests of litesam.masks: COCO RLE, boxes, scores and NMS (against SAM's amg where it has them)."""

import json
import math

import numpy as np
import pytest
import torch

from litesam.masks import (
    InvalidMaskError,
    batched_mask_to_box,
    box_iou_matrix,
    box_nms,
    box_xyxy_to_xywh,
    calculate_stability_score,
    coco_rle_area,
    coco_rle_to_mask,
    mask_iou_matrix,
    mask_nms,
    mask_to_coco_rle,
    masks_to_coco_rle,
)
from tests.mask_cases import MASK_CASES
from tests.sam_reference import amg

# --- COCO RLE ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["noise_half", "disc_333x517", "disc_517x333", "empty", "full", "one_pixel_on"]
)
def test_coco_rle_round_trip_area_and_sam_equality(name):
    mask = MASK_CASES[name]
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
