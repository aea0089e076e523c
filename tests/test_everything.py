from dataclasses import replace

import numpy as np
import pytest

from litesam.build import build_model
from litesam.cli import DEMO_CHECKPOINT
from litesam.errors import InvalidImageError
from litesam.everything import SegEvery, SegEveryConfig
from litesam.masks import coco_rle_to_mask
from litesam.modeling.mask_decoder import MaskDecoder
from litesam.proposals import ProposalConfig
from litesam.predictor import encode_image
from litesam.train.synthetic import render_scene
from tests.tiny import synthetic_image, tiny_model

# Random weights score nothing highly: open every filter so the pipeline itself is exercised.
OPEN = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, proposals=ProposalConfig(score_threshold=0.0, top_k=12))


@pytest.fixture(scope="module")
def image():
    return synthetic_image(90, 140, seed=3)


def test_records_have_masks_at_the_original_size(image):
    records = SegEvery(tiny_model(), **OPEN).generate(image)
    assert 0 < len(records) <= 12
    for r in records:
        mask = r["segmentation"]
        assert mask.shape == (90, 140) and mask.dtype == bool
        assert r["area"] == int(mask.sum()) > 0
        x, y, w, h = r["bbox"]
        ys, xs = np.nonzero(mask)
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max(), ys.max())
        assert 0.0 <= r["predicted_iou"] <= 1.0 and 0.0 <= r["stability_score"] <= 1.0
        assert 0.0 <= r["proposal_score"] <= 1.0
        px, py = r["point_coords"][0]
        assert 0 <= px <= 140 and 0 <= py <= 90
        x0, y0, x1, y1 = r["box"]
        assert 0 <= x0 <= x1 <= 140 and 0 <= y0 <= y1 <= 90


def test_is_deterministic(image):
    a = SegEvery(tiny_model(), **OPEN).generate(image)
    b = SegEvery(tiny_model(), **OPEN).generate(image)
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        np.testing.assert_array_equal(ra["segmentation"], rb["segmentation"])
        assert ra["predicted_iou"] == rb["predicted_iou"]


def test_from_embedding_equals_from_image(image):
    generator = SegEvery(tiny_model(), **OPEN)
    direct = generator.generate(image)
    cached = generator.generate_from_embedding(encode_image(tiny_model(), image))
    assert [r["bbox"] for r in direct] == [r["bbox"] for r in cached]


def test_coco_rle_output_matches_binary_masks(image):
    binary = SegEvery(tiny_model(), **OPEN).generate(image)
    rle = SegEvery(tiny_model(), output_mode="coco_rle", **OPEN).generate(image)
    assert len(binary) == len(rle)
    for b, r in zip(binary, rle):
        np.testing.assert_array_equal(coco_rle_to_mask(r["segmentation"]), b["segmentation"])


def test_chunking_does_not_change_the_result(image):
    whole = SegEvery(tiny_model(), points_per_batch=64, **OPEN).generate(image)
    chunked = SegEvery(tiny_model(), points_per_batch=5, **OPEN).generate(image)
    assert [r["bbox"] for r in whole] == [r["bbox"] for r in chunked]


def test_grid_mode_keeps_three_candidates_per_point(image):
    records = SegEvery(
        tiny_model(), prompt_mode="grid", points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0,
        box_nms_thresh=1.0,
    ).generate(image)
    assert 0 < len(records) <= 27
    assert all(r["box"] is None and r["proposal_score"] is None for r in records)


def test_strict_filters_can_remove_everything(image):
    assert SegEvery(tiny_model(), pred_iou_thresh=1.01).generate(image) == []


def test_nms_removes_overlapping_masks(image):
    loose = SegEvery(tiny_model(), **{**OPEN, "box_nms_thresh": 1.0}).generate(image)
    strict = SegEvery(tiny_model(), **{**OPEN, "box_nms_thresh": 0.0}).generate(image)
    assert len(strict) < len(loose)
    boxes = [r["bbox"] for r in strict]
    for i, (x0, y0, w0, h0) in enumerate(boxes):  # what survives a 0-IoU NMS does not overlap
        for x1, y1, w1, h1 in boxes[i + 1 :]:
            assert x0 + w0 <= x1 or x1 + w1 <= x0 or y0 + h0 <= y1 or y1 + h1 <= y0


def test_bad_config_and_image_are_clear_errors():
    with pytest.raises(ValueError, match="prompt_mode"):
        SegEveryConfig(prompt_mode="random")
    for bad in ({"stability_score_thresh": 1.5}, {"box_nms_thresh": -0.1}, {"pred_iou_thresh": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SegEveryConfig(**bad)
    SegEveryConfig(pred_iou_thresh=1.01, stability_score_thresh=0.0, box_nms_thresh=1.0)  # bounds allowed
    with pytest.raises(InvalidImageError):
        SegEvery(tiny_model()).generate(np.zeros((20, 20), np.uint8))


def test_autoppn_boxes_become_pixel_index_prompts(image):
    """AutoPPN boxes are continuous (far edge one past the mask); prompts use the last pixel, as in training."""
    model = tiny_model()
    embedding = encode_image(model, image)
    generator = SegEvery(model, **OPEN)
    prompts = generator._prompts(embedding)
    from litesam.predictor import propose

    proposals = propose(model, embedding, generator.config.proposals)
    torch_boxes = proposals.boxes
    expected = torch_boxes - torch_boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
    expected = expected.maximum(torch_boxes[:, [0, 1, 0, 1]])
    assert (prompts.boxes == expected).all()
    assert ((proposals.points - 0.5).clamp(min=0) == prompts.points).all()


def test_default_proposals_follow_the_variant():
    from litesam.variants import VARIANTS

    assert SegEvery(tiny_model()).config.proposals == VARIANTS["litesam_tiny"].proposals
    opened = SegEveryConfig.for_variant("litesam_r1024", proposal_score_thresh=0.0, proposal_top_k=7).proposals
    assert opened == replace(VARIANTS["litesam_r1024"].proposals, score_threshold=0.0, top_k=7)
    assert SegEveryConfig.for_variant(None) == SegEveryConfig()  # no variant: SAM's defaults


def test_default_filters_are_the_checkpoints_calibrated_ones_else_sams():
    sam = SegEveryConfig()
    model = build_model("litesam_tiny")  # its own: the shared tiny_model() must not be changed
    assert model.segevery_filters is None  # built without a checkpoint: nothing calibrated
    default = SegEvery(model).config
    assert (default.pred_iou_thresh, default.stability_score_thresh) == (sam.pred_iou_thresh, sam.stability_score_thresh)
    model.segevery_filters = {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.8}
    assert (SegEvery(model).config.pred_iou_thresh, SegEvery(model).config.stability_score_thresh) == (0.7, 0.8)
    one_given = SegEvery(model, pred_iou_thresh=0.9).config  # a given filter wins; the other stays calibrated
    assert (one_given.pred_iou_thresh, one_given.stability_score_thresh) == (0.9, 0.8)
    assert SegEvery(model, pred_iou_thresh=None).config.pred_iou_thresh == 0.7
    given = SegEvery(model, SegEveryConfig()).config  # a whole config is taken as it is
    assert (given.pred_iou_thresh, given.stability_score_thresh) == (0.88, 0.95)


def test_max_masks_keeps_the_best_ranked(image):
    everything = SegEvery(tiny_model(), **{**OPEN, "box_nms_thresh": 1.0}).generate(image)
    two = SegEvery(tiny_model(), max_masks=2, **{**OPEN, "box_nms_thresh": 1.0}).generate(image)
    assert len(everything) > 2 and len(two) == 2
    assert [r["bbox"] for r in two] == [r["bbox"] for r in everything[:2]]


AUTOPPN_WEAK = {"proposal_score_thresh": 0.3, "pred_iou_thresh": 0.85}


@pytest.mark.parametrize("mode", [AUTOPPN_WEAK, {"prompt_mode": "grid", "points_per_side": 8}], ids=["autoppn", "grid"])
def test_skipping_the_masks_the_iou_filter_drops_changes_no_record(monkeypatch, mode):
    """Trained weights (the demo checkpoint) on held-out synthetic scenes, AutoPPN prompts (best of three
    masks; the variant's proposal threshold and predicted IoU ≥ 0.85, stricter than the calibrated 0.5 / 0.7,
    which drop no decoded prompt here) or a point grid with the calibrated filters (all three kept): some
    prompts fail the predicted-IoU filter, and SegEvery's records equal those of a decoder that computes every
    mask."""
    model = build_model("litesam_tiny", checkpoint=DEMO_CHECKPOINT).eval()
    scenes = [render_scene(1, index)[0] for index in range(4)]
    decode = MaskDecoder.forward
    calls = []

    def every_mask(self, *args, min_iou=None, **kwargs):
        masks, iou = decode(self, *args, **kwargs)
        calls.append(bool((iou.clamp(0, 1).max(dim=1).values < min_iou).any()))
        return masks, iou

    skipping = [SegEvery(model, **mode).generate(scene) for scene in scenes]
    monkeypatch.setattr(MaskDecoder, "forward", every_mask)
    computing = [SegEvery(model, **mode).generate(scene) for scene in scenes]
    assert any(calls)  # some prompt was dropped by the predicted IoU, so its mask was skipped above
    for a, b in zip(skipping, computing, strict=True):
        assert len(a) == len(b) > 0
        for ra, rb in zip(a, b):
            np.testing.assert_array_equal(ra["segmentation"], rb["segmentation"])
            assert (ra["predicted_iou"], ra["stability_score"]) == (rb["predicted_iou"], rb["stability_score"])
