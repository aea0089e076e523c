"""Tests of litesam.train's data side: annotation reading, samples and AutoPPN targets, prompt simulation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from litesam.train.annotations import DatasetError, decode_mask, load_records, read_image
from litesam.train.data import SegmentationDataset, area_downsample, cache_budget, collate_samples
from litesam.train.prompts import jitter_boxes, match_proposals, sample_points
from tests.coco_support import coco, disc, rectangle, tiny_dataset  # noqa: F401 (coco: a fixture)


# --- annotations ------------------------------------------------------------------------------------------


def test_coco_records_decode_polygons_and_both_rle_forms(coco):
    annotation_file, image_dir, truth = coco
    records = load_records(annotation_file, image_dir)
    assert [r.path.name for r in records] == ["a.png", "b.png", "c.png"]
    assert all(len(r.annotations) == 3 for r in records)  # the crowd annotation is left out
    for record in records:
        for kind, annotation in zip(("rect", "disc", "bar"), record.annotations, strict=True):
            decoded = decode_mask(annotation, record.height, record.width)
            assert decoded.dtype == bool and decoded.shape == (record.height, record.width)
            np.testing.assert_array_equal(decoded, truth[(record.path.name, kind)])
    assert [len(r.crowd) for r in records] == [1, 0, 0]  # kept apart, as an area to ignore
    (crowd,) = records[0].crowd_masks()
    assert crowd.shape == (96, 128) and crowd[:20, :20].all() and crowd.sum() == 400
    assert read_image(records[1]).shape == (120, 80, 3)


def test_sa1b_records_from_a_folder(tmp_path):
    mask = disc(40, 50, 25, 20, 10)
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(tmp_path / "sa_1.jpg")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    document = {
        "image": {"image_id": 1, "file_name": "sa_1.jpg", "height": 40, "width": 50},
        "annotations": [{"id": 7, "segmentation": {"size": [40, 50], "counts": rle["counts"].decode()}}],
    }
    (tmp_path / "sa_1.json").write_text(json.dumps(document))
    for source in (tmp_path, tmp_path / "sa_1.json"):
        (record,) = load_records(source)
        assert record.path == tmp_path / "sa_1.jpg" and record.annotations[0].id == 7
        np.testing.assert_array_equal(decode_mask(record.annotations[0], 40, 50), mask)


def _rewrite(annotation_file: Path, change) -> None:
    document = json.loads(annotation_file.read_text())
    change(document)
    annotation_file.write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["annotations"].append({"image_id": 42, "segmentation": [[0, 0, 5, 0, 5, 5]]}),
            "image id 42",
        ),
        (lambda d: d["images"].append(dict(d["images"][0])), "appears twice"),
        (lambda d: d["images"][0].update(file_name="missing.png"), "missing"),
        (lambda d: d["images"][0].update(height=0), "'height' must be a positive int"),
        (lambda d: d.pop("annotations"), "'annotations' list"),
        (lambda d: d["annotations"].clear(), "no image has a usable annotation"),
    ],
)
def test_bad_coco_files_raise_clear_errors(coco, change, message):
    annotation_file, image_dir, _ = coco
    _rewrite(annotation_file, change)
    with pytest.raises(DatasetError, match=message):
        load_records(annotation_file, image_dir)


def test_missing_paths_and_bad_segmentations_raise_clear_errors(coco, tmp_path):
    annotation_file, image_dir, _ = coco
    with pytest.raises(DatasetError, match="does not exist"):
        load_records(tmp_path / "nope.json", image_dir)
    with pytest.raises(DatasetError, match="image folder"):
        load_records(annotation_file, tmp_path / "no_images")
    with pytest.raises(DatasetError, match="give the image folder"):
        load_records(annotation_file)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not a readable JSON"):
        load_records(tmp_path / "broken.json", image_dir)

    def bad(segmentation):
        _rewrite(annotation_file, lambda d: d["annotations"][0].update(segmentation=segmentation))
        record = load_records(annotation_file, image_dir)[0]
        return lambda: decode_mask(record.annotations[0], record.height, record.width)

    with pytest.raises(DatasetError, match="at least 3 points"):
        bad([[1, 2, 3, 4, 5]])()
    with pytest.raises(DatasetError, match="RLE size"):
        bad({"size": [10, 10], "counts": [100]})()
    with pytest.raises(DatasetError, match="invalid RLE"):
        bad({"size": [96, 128], "counts": [5, 5]})()
    with pytest.raises(DatasetError, match="segmentation must be"):
        bad("rle?")()

    _rewrite(annotation_file, lambda d: d["images"][0].update(width=100))
    record = load_records(annotation_file, image_dir)[0]
    with pytest.raises(DatasetError, match="annotations say 100×96"):
        read_image(record)


# --- samples and targets ----------------------------------------------------------------------------------


def test_sample_shapes_prompts_and_targets(coco):
    annotation_file, image_dir, truth = coco
    dataset = tiny_dataset(annotation_file, image_dir, mask_scale="input", seed=3)
    sample = dataset[0]  # a.png, 96×128 → 192×256
    assert sample.image.shape == (3, 192, 256) and sample.image.dtype == torch.float32
    assert sample.input_size == (192, 256) and sample.original_size == (96, 128)
    assert 0 <= sample.image.min() and sample.image.max() <= 255
    n = len(sample.gt_masks)
    assert n == 3 and sample.gt_masks.shape == (3, 256, 256) and sample.gt_masks.dtype == torch.bool
    assert not sample.gt_masks[:, 192:].any()  # nothing in the padding
    # The rectangle (columns 16…63, rows 12…47 of the original) doubles in the input frame.
    rect = np.zeros((256, 256), dtype=bool)
    rect[24:96, 32:128] = True
    assert any(np.array_equal(m.numpy(), rect) for m in sample.gt_masks)
    for mask, box, point, prompt in zip(
        sample.gt_masks, sample.gt_boxes, sample.point_coords, sample.prompt_boxes, strict=True
    ):
        ys, xs = np.nonzero(mask.numpy())
        assert box.tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]  # tight, pixel-inclusive
        assert mask[int(point[1]), int(point[0])]  # the point lies on the mask
        assert (prompt - box).abs().max() <= 20.0 + 1e-4
        assert prompt[0] <= prompt[2] and prompt[1] <= prompt[3]
    assert sample.use_point.shape == (3,) and sample.use_point.dtype == torch.bool

    grid = 256 // 8
    assert sample.heat_target.shape == (grid, grid) and sample.box_target.shape == (4, grid, grid)
    assert sample.num_peaks == 3
    assert sample.heat_valid.shape == (grid, grid)
    assert sample.heat_valid[:24].all() and not sample.heat_valid[24:].any()  # rows of 192 px / 8
    assert float(sample.heat_target.max()) > 0.9 and float(sample.heat_target[24:].max()) == 0.0
    # The rectangle's peak lies at its centre (x 80, y 60 in the input frame), with its box as target.
    peak_row, peak_col = 60 // 8, 80 // 8
    assert float(sample.heat_target[peak_row, peak_col]) > 0.9
    centre = ((peak_col + 0.5) * 8, (peak_row + 0.5) * 8)
    expected = [(centre[0] - 32) / 8, (centre[1] - 24) / 8, (128 - centre[0]) / 8, (96 - centre[1]) / 8]
    np.testing.assert_allclose(sample.box_target[:, peak_row, peak_col].numpy(), expected, atol=1e-5)


def test_low_res_masks_are_the_decoder_scale(coco):
    annotation_file, image_dir, _ = coco
    low = tiny_dataset(annotation_file, image_dir, seed=3)[0]
    full = tiny_dataset(annotation_file, image_dir, mask_scale="input", seed=3)[0]
    assert low.gt_masks.shape == (3, 64, 64)
    pooled = torch.nn.functional.avg_pool2d(full.gt_masks.float()[:, None], 4)[:, 0] >= 0.5
    assert torch.equal(low.gt_masks, pooled)
    assert torch.equal(low.point_coords, full.point_coords)


def test_low_res_cells_are_on_from_half_of_their_pixels():
    """The area rule at its edge: random masks whose 4×4 cells hold every count from 0 to 16, 8 included."""
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 17, size=(64, 64))
    cells = np.arange(16)[None, None, :] < counts[..., None]  # the first `count` pixels of each cell on
    cells = rng.permuted(cells, axis=-1).reshape(64, 64, 4, 4)
    mask = cells.transpose(0, 2, 1, 3).reshape(256, 256)
    assert np.array_equal(area_downsample(mask, 4), counts >= 8)
    assert (counts == 8).sum() > 100


def test_samples_are_deterministic_and_capped(coco):
    annotation_file, image_dir, _ = coco
    first, second = (
        tiny_dataset(annotation_file, image_dir, seed=1),
        tiny_dataset(annotation_file, image_dir, seed=1),
    )
    a, b = first[2], second[2]
    for name in (
        "image",
        "gt_masks",
        "point_coords",
        "prompt_boxes",
        "use_point",
        "heat_target",
        "box_target",
    ):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    second.set_epoch(1)
    assert not torch.equal(a.point_coords, second[2].point_coords)
    capped = tiny_dataset(annotation_file, image_dir, max_masks=2)[0]
    assert len(capped.gt_masks) == 2 and capped.num_peaks == 3  # all masks still shape the heat target
    batch = collate_samples([first[0], first[1]])
    assert len(batch) == 2 and batch.heat_target.shape == (2, 32, 32) and batch.num_peaks.tolist() == [3, 3]


def test_image_cache_gives_the_same_samples_reads_each_image_once_and_keeps_its_budget(coco):
    annotation_file, image_dir, _ = coco
    reads = []

    class Counted:  # the records of the set, counting image reads
        def __init__(self, record):
            self.record = record
            self.height, self.width = record.height, record.width

        def image(self):
            reads.append(self.record.image_id)
            return self.record.image()

        def instance_masks(self):
            return self.record.instance_masks()

    records = [Counted(r) for r in load_records(annotation_file, image_dir)]
    plain = SegmentationDataset(records, image_size=256, stride=8, seed=3)
    cached = SegmentationDataset(records, image_size=256, stride=8, seed=3, cache_bytes=2**30)
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for index in range(len(records)):
            a, b = plain[index], cached[index]
            for f in dataclasses.fields(a):
                x, y = getattr(a, f.name), getattr(b, f.name)
                assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, (epoch, index, f.name)
    assert len(reads) == 3 * len(records)  # plain: every epoch; cached: the first only

    probe = SegmentationDataset(records[:1], image_size=256, stride=8, cache_bytes=2**30)
    probe[0]
    one_image = 2**30 - probe.cache_left  # what keeping the first image costs
    small = SegmentationDataset(records, image_size=256, stride=8, cache_bytes=one_image + 1)
    for index in range(len(records)):
        small[index]
    assert small.cache_left == 1  # the budget holds, and is used (by the first image only: below)
    reads.clear()
    small[0], small[1]
    assert len(reads) == 1  # the kept image is not read again, the others are
    cached[0].heat_target.fill_(7.0)
    assert torch.equal(cached[0].heat_target, plain[0].heat_target)  # a sample does not alias the cache
    with pytest.raises(ValueError, match="cache_bytes"):
        SegmentationDataset(records, image_size=256, stride=8, cache_bytes=-1)


# --- prompts ----------------------------------------------------------------------------------------------


def test_the_cache_is_used_only_where_the_training_process_builds_the_samples():
    assert cache_budget(1024, loader_workers=0) == 2**30
    assert cache_budget(1024, loader_workers=2) == 0  # a worker's cache would die with its epoch's DataLoader
    assert cache_budget(0, loader_workers=0) == 0


def test_prompt_simulation():
    rng = np.random.default_rng(0)
    masks = np.stack([rectangle(50, 60, 10, 5, 20, 9), disc(50, 60, 40, 30, 6)])
    points = sample_points(masks, rng)
    assert points.shape == (2, 2) and points.dtype == np.float32
    assert all(masks[i, int(y), int(x)] for i, (x, y) in enumerate(points))
    with pytest.raises(ValueError, match="empty"):
        sample_points(np.zeros((1, 5, 5), dtype=bool), rng)

    big = np.array([[100.0, 100.0, 899.0, 699.0]] * 500, dtype=np.float32)
    noisy = jitter_boxes(big, rng, (1000, 1000), noise=0.1, cap=20.0)
    offsets = np.abs(noisy - big)
    assert offsets.max() <= 20.0 + 1e-4 and (offsets > 19.9).mean() > 0.3  # σ = 80 px: mostly capped
    small = np.array([[10.0, 10.0, 19.0, 19.0]] * 2000, dtype=np.float32)
    std = (jitter_boxes(small, rng, (100, 100)) - small).std(axis=0)
    np.testing.assert_allclose(std, 1.0, rtol=0.1)  # 10 % of a 10-px side
    edge = jitter_boxes(np.array([[0.0, 0.0, 9.0, 9.0]]), rng, (10, 10), noise=1.0)
    assert edge.min() >= 0 and edge.max() <= 9

    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [1.0, 1.0, 11.0, 11.0]])
    gt = torch.tensor([[40.0, 40.0, 48.0, 48.0], [0.0, 0.0, 10.0, 10.0]])
    found, matched = match_proposals(proposals, gt, min_iou=0.5, limit=5)
    assert found.tolist() == [0, 2] and matched.tolist() == [1, 1]
    assert match_proposals(proposals, gt, 0.5, limit=1)[0].tolist() == [0]

