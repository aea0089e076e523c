"""Tests of litesam.train: annotation reading, samples and targets, prompts, losses, the loop, the CLI."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from litesam.build import build_model, load_checkpoint
from litesam.errors import LiteSamError
from litesam.train.annotations import DatasetError, decode_mask, load_records, read_image
from litesam.train.cli import add_train_command
from litesam.train.config import LossWeights, PromptConfig, TrainConfig, default_workers
from litesam.train.data import SegmentationDataset, collate_samples
from litesam.train.loop import train
from litesam.train.losses import (
    box_losses,
    dice_loss,
    generalized_box_iou,
    heatmap_loss,
    mask_losses,
    sigmoid_focal_loss,
)
from litesam.train.objective import training_losses
from litesam.train.optim import build_optimizer, warmup_cosine
from litesam.train.prompts import jitter_boxes, match_proposals, sample_points

# --- a tiny synthetic COCO dataset ------------------------------------------------------------------------

#: (file name, height, width) of the synthetic images.
SYNTHETIC_IMAGES = (("a.png", 96, 128), ("b.png", 120, 80), ("c.png", 64, 64))


def rectangle(height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """H×W bool, on for columns x0…x1−1 and rows y0…y1−1."""
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def disc(height: int, width: int, cx: float, cy: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2


def synthetic_masks(height: int, width: int) -> dict[str, np.ndarray]:
    """The ground-truth masks drawn into every synthetic image (a rectangle, a disc, a thin bar)."""
    return {
        "rect": rectangle(height, width, width // 8, height // 8, width // 2, height // 2),
        "disc": disc(height, width, width * 0.7, height * 0.65, min(height, width) * 0.2),
        "bar": rectangle(height, width, 2, height - 12, width - 2, height - 6),
    }


def write_synthetic_coco(root: Path) -> tuple[Path, Path, dict]:
    """Write 3 PNG images and a COCO file: rectangles as polygons, discs as compressed RLE, bars as
    uncompressed RLE, plus one crowd annotation on the first image. Returns (annotation file, image dir,
    {(image file, kind): original mask})."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    images, annotations, truth = [], [], {}
    rng = np.random.default_rng(0)
    for image_id, (name, height, width) in enumerate(SYNTHETIC_IMAGES, start=1):
        pixels = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
        masks = synthetic_masks(height, width)
        for colour, mask in zip(((220, 40, 40), (40, 220, 40), (40, 40, 220)), masks.values(), strict=True):
            pixels[mask] = colour
        Image.fromarray(pixels).save(image_dir / name)
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        h8, w8 = height // 8, width // 8
        polygon = [w8, h8, width // 2, h8, width // 2, height // 2, w8, height // 2]
        compressed = coco_mask.encode(np.asfortranarray(masks["disc"].astype(np.uint8)))
        bar_runs = _uncompressed_runs(masks["bar"])
        for kind, segmentation in (
            ("rect", [polygon]),
            ("disc", {"size": [height, width], "counts": compressed["counts"].decode("ascii")}),
            ("bar", {"size": [height, width], "counts": bar_runs}),
        ):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "segmentation": segmentation, "iscrowd": 0}
            )
            truth[(name, kind)] = masks[kind]
    crowd = rectangle(96, 128, 0, 0, 20, 20)
    annotations.append(
        {
            "id": 99,
            "image_id": 1,
            "iscrowd": 1,
            "segmentation": {"size": [96, 128], "counts": _uncompressed_runs(crowd)},
        }
    )
    annotation_file = root / "instances.json"
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    return annotation_file, image_dir, truth


def _uncompressed_runs(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE counts (column-major runs, starting with a run of zeros)."""
    flat = mask.T.ravel().astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


@pytest.fixture
def coco(tmp_path):
    return write_synthetic_coco(tmp_path)


def tiny_dataset(annotation_file, image_dir, **kwargs) -> SegmentationDataset:
    records = load_records(annotation_file, image_dir)
    return SegmentationDataset(records, image_size=256, stride=8, **kwargs)


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
    with_crowd = load_records(annotation_file, image_dir, include_crowd=True)
    assert len(with_crowd[0].annotations) == 4 and with_crowd[0].annotations[-1].iscrowd
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


# --- prompts ----------------------------------------------------------------------------------------------


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


# --- losses -----------------------------------------------------------------------------------------------


def test_mask_losses_perfect_wrong_and_weighting():
    target = torch.zeros(2, 16, 16, dtype=torch.bool)
    target[0, 4:10, 4:10] = True
    target[1, 0:3, :] = True
    perfect = torch.where(target, 30.0, -30.0)
    assert sigmoid_focal_loss(perfect, target).max() < 1e-8
    assert dice_loss(perfect, target).max() < 1e-6
    wrong = -perfect
    assert (sigmoid_focal_loss(wrong, target) > 1.0).all() and (dice_loss(wrong, target) > 0.9).all()

    iou_perfect = torch.ones(2, 1)
    good = mask_losses(perfect[:, None], iou_perfect, target)
    assert float(good["mask"]) < 1e-5 and float(good["iou"]) == 0.0
    bad = mask_losses(wrong[:, None], iou_perfect, target)  # true IoU 0, predicted 1
    assert float(bad["iou"]) == pytest.approx(1.0)
    expected = LossWeights().focal * bad["focal"] + bad["dice"] + bad["iou"]
    assert float(bad["mask"]) == pytest.approx(float(expected))
    heavy = mask_losses(wrong[:, None], iou_perfect, target, LossWeights(focal=40.0))
    assert float(heavy["mask"]) == pytest.approx(float(40 * bad["focal"] + bad["dice"] + bad["iou"]))

    # Three candidates: only the best one (the perfect one, index 1) is trained.
    candidates = torch.stack([wrong, perfect, torch.zeros_like(perfect)], dim=1)
    iou_pred = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    best = mask_losses(candidates.requires_grad_(), iou_pred, target)
    assert float(best["focal"].detach()) < 1e-8 and float(best["dice"].detach()) < 1e-6
    best["mask"].backward()
    assert candidates.grad[:, 0].abs().sum() == 0 and candidates.grad[:, 2].abs().sum() == 0
    # Input-scale targets: the logits are upsampled to them.
    upsampled = mask_losses(
        perfect[:, None], iou_perfect, target.repeat_interleave(2, 1).repeat_interleave(2, 2)
    )
    assert float(upsampled["dice"]) < 0.05
    empty = mask_losses(
        torch.zeros(0, 3, 16, 16), torch.zeros(0, 3), torch.zeros(0, 16, 16, dtype=torch.bool)
    )
    assert float(empty["mask"]) == 0.0


def test_generalized_box_iou_on_known_boxes():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [2.0, 0.0, 3.0, 1.0], [1.0, 1.0, 3.0, 3.0]])
    # identical; disjoint: IoU 0, hull 3, union 2; overlapping: IoU 1/7, hull 9, union 7.
    expected = torch.tensor([1.0, -1.0 / 3.0, 1.0 / 7.0 - 2.0 / 9.0])
    torch.testing.assert_close(generalized_box_iou(a, b), expected, atol=1e-5, rtol=0)


def test_autoppn_losses():
    heat = torch.zeros(1, 8, 8)
    heat[0, 2:5, 2:5] = torch.tensor([[0.2, 0.5, 0.2], [0.5, 1.0, 0.5], [0.2, 0.5, 0.2]])
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    peaks = torch.tensor([1])
    exact = torch.logit(heat.clamp(1e-6, 1 - 1e-6))[:, None]
    assert float(heatmap_loss(exact, heat, valid, peaks)) < 1e-6
    off = float(heatmap_loss(torch.zeros(1, 1, 8, 8), heat, valid, peaks))
    assert off > 1.0
    assert float(heatmap_loss(torch.zeros(1, 1, 8, 8), heat, valid, torch.tensor([4]))) == pytest.approx(
        off / 4
    )
    # Cells in the padding do not count.
    padding = valid.clone()
    padding[0, :, 6:] = False
    wrong_in_padding = exact.clone()
    wrong_in_padding[..., 6:] = 5.0
    assert float(heatmap_loss(wrong_in_padding, heat, padding, peaks)) < 1e-6

    target = torch.full((1, 4, 8, 8), 2.0)
    same = box_losses(target.clone(), target, heat)
    assert float(same["box_l1"]) == 0.0 and float(same["box_giou"]) < 1e-6
    wrong = target.clone()
    wrong[:, :, 3, 3] = 4.0  # the peak cell (heat 1) predicts a box twice as large
    errors = box_losses(wrong, target, heat)
    # One of the five cells with heat ≥ 0.3: weight 1 of a total 3; L1 = 2/8 per distance; GIoU = 1/4.
    assert float(errors["box_l1"]) == pytest.approx((2.0 / 8.0) / 3.0)
    assert float(errors["box_giou"]) == pytest.approx((1 - 0.25) / 3.0, rel=1e-4)
    ignored = target.clone()
    ignored[:, :, 2, 2] = 9.0  # heat 0.2 < 0.3
    assert float(box_losses(ignored, target, heat)["box_l1"]) == 0.0
    nothing = box_losses(target, target, torch.zeros(1, 8, 8))
    assert float(nothing["box_l1"]) == 0.0 and float(nothing["box_giou"]) == 0.0


# --- schedule, optimisation, loop -------------------------------------------------------------------------


def test_warmup_cosine_schedule():
    values = [warmup_cosine(step, 10, 110) for step in range(111)]
    assert (
        values[0] == pytest.approx(0.1)
        and values[9] == pytest.approx(1.0)
        and values[10] == pytest.approx(1.0)
    )
    assert values[60] == pytest.approx(0.5) and values[110] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))
    assert warmup_cosine(110, 10, 110, min_ratio=0.1) == pytest.approx(0.1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = build_optimizer(model, 1e-3, 0.1, (0.9, 0.999)).param_groups
    assert [p.dim() for p in decay["params"]] == [2] and decay["weight_decay"] == 0.1
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_a_few_steps_on_a_fixed_batch_reduce_the_loss(coco):
    annotation_file, image_dir, _ = coco
    dataset = tiny_dataset(annotation_file, image_dir, seed=0)
    batch = collate_samples([dataset[0], dataset[2]])
    torch.manual_seed(0)
    model = build_model("litesam_tiny").train()
    optimizer = build_optimizer(model, 3e-3, 0.0, (0.9, 0.999))
    history = []
    for _ in range(20):
        losses = training_losses(model, batch, dataset.prompts)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert all(math.isfinite(h["loss"]) for h in history)
    trace = [round(h["loss"], 3) for h in history]
    assert last["loss"] < 0.8 * first["loss"], trace
    assert last["mask"] < 0.6 * first["mask"] and last["heat"] < 0.8 * first["heat"], trace
    assert last["box_giou"] < first["box_giou"], trace
    assert first["n_point"] + first["n_box"] == 6 and first["n_proposal"] == 0  # 3 masks per image


def test_autoppn_proposals_matched_to_ground_truth_are_trained(coco):
    annotation_file, image_dir, _ = coco
    prompts = PromptConfig(proposals_per_image=5, proposal_match_iou=0.01)
    batch = collate_samples([tiny_dataset(annotation_file, image_dir, prompts=prompts)[0]])
    torch.manual_seed(0)
    model = build_model("litesam_tiny").train()
    with torch.no_grad():  # every cell a confident proposal with a 64-px box
        model.image_encoder.autoppn.heat.bias.fill_(5.0)
        model.image_encoder.autoppn.box.bias.fill_(4.0)
    losses = training_losses(model, batch, prompts)
    assert 1 <= float(losses["n_proposal"]) <= 5 and math.isfinite(float(losses["loss"].detach()))
    losses["loss"].backward()
    assert model.mask_decoder.iou_token.weight.grad.abs().sum() > 0


def test_train_writes_loadable_checkpoints_and_resumes_to_the_same_weights(coco, tmp_path):
    annotation_file, image_dir, _ = coco
    common = dict(
        data=annotation_file,
        images=image_dir,
        variant="litesam_tiny",
        batch_size=2,
        warmup_steps=2,
        lr=1e-3,
        device="cpu",
        log_every=1,
        checkpoint_every=0,
        max_steps=5,  # 2 steps per epoch (3 images, batch 2): the run crosses two epoch ends
    )
    out = tmp_path / "run"
    summary = train(TrainConfig(output_dir=out, stop_after=3, **common))  # interrupted after step 3
    assert summary["step"] == 3 and summary["total_steps"] == 5 and summary["epoch"] == 1
    # checkpoint_every 0: one checkpoint at the end of the invocation, none at the epoch end (step 2)
    assert sorted(p.name for p in out.glob("*.pt")) == ["last.pt", "last.state.pt", "step_0000003.pt"]
    assert load_checkpoint(out / "last.pt")[0] == "litesam_tiny"
    model = build_model(checkpoint=out / "last.pt")
    assert model.img_size == 256
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3]
    assert log[0]["lr"] < log[1]["lr"] == 1e-3  # the LR each step used: a 2-step warm-up

    resumed = train(TrainConfig(output_dir=out, resume=True, **common))
    assert resumed["step"] == 5
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4, 5]
    assert log[2]["lr"] > log[3]["lr"] > log[4]["lr"] > 0  # the cosine spans the 5 steps the run makes

    # The resumed run ends with exactly the weights of an uninterrupted 5-step run (same seed, CPU).
    straight = tmp_path / "straight"
    train(TrainConfig(output_dir=straight, **common))
    a, b = load_checkpoint(out / "last.pt")[1], load_checkpoint(straight / "last.pt")[1]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    straight_log = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    assert [e["lr"] for e in straight_log] == [e["lr"] for e in log]

    with pytest.raises(LiteSamError, match="cannot resume"):
        train(TrainConfig(output_dir=tmp_path / "empty", resume=True, **common))


def test_max_steps_sets_the_run_and_the_schedule_and_short_warmups_warn(coco, tmp_path, caplog):
    annotation_file, image_dir, _ = coco
    common = dict(data=annotation_file, images=image_dir, variant="litesam_tiny", batch_size=3, device="cpu")
    # 1 step per epoch: max_steps is not capped by epochs (the old trainer stopped at 4 here).
    summary = train(TrainConfig(output_dir=tmp_path / "a", epochs=4, max_steps=6, log_every=1, **common))
    assert summary["step"] == 6 and summary["total_steps"] == 6 and summary["epoch"] == 5
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["lr"] == 2e-3  # litesam_tiny's default peak LR; 5 % of 6 steps: no warm-up
    assert log[-1]["lr"] < 0.1 * 2e-3  # the cosine reaches its end with the run, not a high LR
    assert not [r for r in caplog.records if "warm-up" in r.getMessage()]  # automatic warm-up: 5 %
    with caplog.at_level("WARNING"):
        train(TrainConfig(output_dir=tmp_path / "b", max_steps=2, warmup_steps=1000, **common))
    assert any("warm-up (1000 steps)" in r.getMessage() for r in caplog.records)
    config = TrainConfig(output_dir=tmp_path / "c", **common)
    assert config.resolved_warmup(100) == 5 and config.resolved_warmup(10**6) == 1000
    assert config.total_steps(7) == 28 and config.workers() == default_workers() >= 0


def test_init_from_our_checkpoint_or_from_sam_weights(coco, tmp_path):
    annotation_file, image_dir, _ = coco

    def one_step(name: str, lr: float, **kwargs) -> dict[str, torch.Tensor]:
        summary = train(
            TrainConfig(
                data=annotation_file,
                images=image_dir,
                output_dir=tmp_path / name,
                variant="litesam_tiny",
                max_steps=1,
                batch_size=3,
                warmup_steps=0,
                device="cpu",
                lr=lr,
                **kwargs,
            )
        )
        return load_checkpoint(summary["checkpoint"])[1]

    trained = one_step("ours", 1e-2)
    # A 1e-9 step leaves the starting weights in place (up to 1e-9).
    resumed = one_step("from_ours", 1e-9, init_checkpoint=tmp_path / "ours" / "last.pt")
    for key in ("mask_decoder.iou_token.weight", "image_encoder.neck.conv.weight"):
        torch.testing.assert_close(resumed[key], trained[key], atol=1e-6, rtol=0)

    # An official-SAM-style file: bare prompt_encoder.* / mask_decoder.* (and image_encoder.*) keys.
    torch.manual_seed(123)
    donor = build_model("litesam_tiny").state_dict()
    torch.save(donor, tmp_path / "sam_style.pth")
    from_sam = one_step("from_sam", 1e-9, sam_checkpoint=tmp_path / "sam_style.pth")
    torch.testing.assert_close(
        from_sam["mask_decoder.iou_token.weight"], donor["mask_decoder.iou_token.weight"]
    )
    torch.testing.assert_close(
        from_sam["prompt_encoder.point_embeddings.0.weight"],
        donor["prompt_encoder.point_embeddings.0.weight"],
    )
    assert not torch.allclose(
        from_sam["image_encoder.neck.conv.weight"], donor["image_encoder.neck.conv.weight"]
    )


def test_cli_train_command(coco, tmp_path, capsys):
    annotation_file, image_dir, _ = coco
    parser = argparse.ArgumentParser(prog="litesam")
    add_train_command(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cli"
    args = parser.parse_args(
        [
            "train",
            "--data",
            str(annotation_file),
            "--images",
            str(image_dir),
            "--variant",
            "litesam_tiny",
            "--epochs",
            "1",
            "--batch-size",
            "3",
            "--device",
            "cpu",
            "--workers",
            "0",
            "-o",
            str(out),
        ]
    )
    assert args.run(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 1 and Path(summary["checkpoint"]) == out / "last.pt"

    args = parser.parse_args(
        [
            "train",
            "--data",
            str(tmp_path / "none.json"),
            "--images",
            str(image_dir),
            "--variant",
            "litesam_tiny",
            "-o",
            str(out),
        ]
    )
    with pytest.raises(LiteSamError, match="does not exist"):
        args.run(args)
    args = parser.parse_args(
        [
            "train",
            "--data",
            str(annotation_file),
            "--variant",
            "litesam_tiny",
            "--point-fraction",
            "2",
            "-o",
            str(out),
        ]
    )
    with pytest.raises(LiteSamError, match="point_fraction"):
        args.run(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "x", "-o", "y", "--epochs", "0"])
