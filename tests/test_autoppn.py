"""Image encoder shapes, the AutoPPN head, its distance-transform targets (litesam.train.autoppn_targets) and
proposal decoding (litesam.proposals)."""

import copy
import math

import numpy as np
import pytest
import torch

from litesam.masks import InvalidMaskError
from litesam.modeling.autoppn import (
    AutoPPN,
    AutoPPNConfig,
    AutoPPNOutput,
    boxes_to_ltrb,
    cell_centres,
    ltrb_to_boxes,
)
from litesam.modeling.image_encoder import ImageEncoder, Neck
from litesam.modeling.litevit import LiteViT, LiteViTConfig
from litesam.proposals import ProposalConfig, decode_proposals
from litesam.train.autoppn_targets import build_autoppn_targets, heatmap_target, heatmap_target_with_owner

# ----------------------------------------------------------------------------------------------------------
# Image encoder


def _encoder(
    img_size: int, cfg: LiteViTConfig | None = None, ppn: AutoPPNConfig | None = None
) -> ImageEncoder:
    torch.manual_seed(0)
    backbone = LiteViT(cfg)
    return ImageEncoder(backbone, Neck(backbone.out_channels, 256), AutoPPN(256, ppn), img_size).eval()


@pytest.fixture(scope="module")
def encoded_640():
    """(unfused encoder, input, its outputs) at 640, computed once for the tests below."""
    encoder = _encoder(640)
    x = torch.randn(1, 3, 640, 640, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return encoder, x, encoder(x)


def test_encoder_at_640_returns_a_40x40_embedding_and_stride_8_maps(encoded_640):
    encoder, _, out = encoded_640
    assert isinstance(out, tuple) and len(out) == 2
    embedding, ppn = out
    assert embedding.shape == (1, 256, 40, 40) and embedding.is_contiguous()
    assert isinstance(ppn, AutoPPNOutput)
    assert encoder.autoppn.stride == 8
    assert ppn.heat_logits.shape == (1, 1, 80, 80)
    assert ppn.box_ltrb.shape == (1, 4, 80, 80)
    assert (ppn.box_ltrb >= 0).all()


def test_fused_encoder_at_1024_returns_a_64x64_embedding_and_stride_8_maps():
    encoder = _encoder(1024).fuse_for_inference()
    with torch.inference_mode():
        embedding, ppn = encoder(torch.randn(1, 3, 1024, 1024))
    assert embedding.shape == (1, 256, 64, 64)
    assert ppn.heat_logits.shape == (1, 1, 128, 128)
    assert ppn.box_ltrb.shape == (1, 4, 128, 128)


def test_fused_encoder_matches_the_unfused_one_at_640(encoded_640):
    encoder, x, (expected, expected_ppn) = encoded_640
    fused = copy.deepcopy(encoder).fuse_for_inference()
    with torch.inference_mode():
        embedding, ppn = fused(x)
    torch.testing.assert_close(embedding, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ppn.heat_logits, expected_ppn.heat_logits, rtol=1e-4, atol=1e-4)


def test_neck_is_a_bias_free_1x1_conv_with_layernorm():
    neck = Neck(128, 256)
    assert neck.conv.bias is None and neck.conv.kernel_size == (1, 1)
    assert sum(p.numel() for p in neck.parameters()) == 128 * 256 + 2 * 256


# ----------------------------------------------------------------------------------------------------------
# AutoPPN head


def test_autoppn_head_is_light_and_starts_at_the_prior():
    head = AutoPPN(256).eval()
    assert sum(p.numel() for p in head.parameters()) <= 50_000
    with torch.no_grad():
        out = head(torch.zeros(2, 256, 5, 7))
    assert out.heat_logits.shape == (2, 1, 10, 14)
    torch.testing.assert_close(torch.sigmoid(head.heat.bias), torch.tensor([0.1]))
    assert (out.box_ltrb >= 0).all()


def test_autoppn_without_upsampling_works_at_stride_16():
    head = AutoPPN(32, AutoPPNConfig(hidden_channels=8, upsample=1)).eval()
    assert head.stride == 16
    with torch.no_grad():
        out = head(torch.randn(1, 32, 6, 4))
    assert out.heat_logits.shape == (1, 1, 6, 4)


def test_autoppn_is_deterministic_in_eval_mode():
    head = AutoPPN(256).eval()
    x = torch.randn(1, 256, 8, 8)
    with torch.inference_mode():
        a, b = head(x), head(x)
    assert torch.equal(a.heat_logits, b.heat_logits) and torch.equal(a.box_ltrb, b.box_ltrb)
    pa = decode_proposals(a, (128, 128), head.stride, ProposalConfig(score_threshold=0.0))[0]
    pb = decode_proposals(b, (128, 128), head.stride, ProposalConfig(score_threshold=0.0))[0]
    assert torch.equal(pa.points, pb.points) and torch.equal(pa.boxes, pb.boxes)


def test_autoppn_refuses_an_embedding_of_the_wrong_width():
    with pytest.raises(ValueError, match="B×256×h×w"):
        AutoPPN(256)(torch.zeros(1, 128, 4, 4))


# ----------------------------------------------------------------------------------------------------------
# Distance-transform heatmap target (supplement Listing 1.1, corrected)


def _rectangle(h, w, top, left, bottom, right):
    """H×W bool with rows top..bottom-1 and columns left..right-1 on."""
    mask = np.zeros((h, w), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def test_one_rectangle_peaks_at_its_centre_and_follows_the_formula():
    mask = _rectangle(40, 50, 10, 12, 31, 39)  # 21 rows × 27 columns
    heat = heatmap_target([mask])
    assert heat.shape == (40, 50) and heat.dtype == np.float32
    assert heat[19:22, 24:27].max() == heat.max()  # the centre (20, 25) ± 1 px holds the maximum
    assert heat.max() == pytest.approx(1.0, abs=1e-3)
    square = heatmap_target([_rectangle(40, 50, 10, 12, 31, 33)])  # 21 × 21: a single peak
    assert np.unravel_index(np.argmax(square), square.shape) == (20, 22)
    # For an axis-aligned rectangle the distance to the nearest off pixel is the distance to the nearest side.
    rows, cols = np.nonzero(mask)
    d = np.minimum.reduce([rows - 10 + 1, 31 - rows, cols - 12 + 1, 39 - cols]).astype(np.float64)
    expected = (d / (d.max() + 1e-4)) ** 4
    np.testing.assert_allclose(heat[rows, cols], expected, rtol=1e-5)
    assert (heat[~mask] == 0).all()
    ring = np.zeros_like(mask)
    ring[9:32, 11:40] = True
    ring &= ~mask
    assert (heat[ring] == 0).all()  # the pixels bordering the mask from outside
    edge = mask & ~_rectangle(40, 50, 11, 13, 30, 38)
    assert heat[edge].max() == pytest.approx((1 / d.max()) ** 4, rel=1e-3)  # distance 1: ≈ 0
    assert heat[edge].max() < 1e-4


def test_a_mask_touching_the_image_edge_is_zero_on_that_edge():
    mask = _rectangle(30, 30, 0, 0, 20, 30)  # touches top, left and right edges
    heat = heatmap_target([mask])
    d_max = 10.0  # the middle row 9 or 10 is 10 pixels from the top pad row / the bottom off row
    assert heat.shape == (30, 30)
    assert heat[0].max() <= (1 / d_max) ** 4 + 1e-7  # the padding makes the top row boundary
    assert heat[:, 0].max() <= (1 / d_max) ** 4 + 1e-7
    assert heat.max() == pytest.approx(1.0, abs=1e-3)
    assert np.argmax(heat.max(axis=1)) in (9, 10)


def test_two_disjoint_masks_each_peak_at_one():
    a = _rectangle(40, 60, 2, 2, 20, 20)
    b = _rectangle(40, 60, 25, 30, 31, 40)  # much smaller
    heat = heatmap_target([a, b])
    assert heat[a].max() == pytest.approx(1.0, abs=1e-3)
    assert heat[b].max() == pytest.approx(1.0, abs=1e-3)


def test_heatmap_does_not_depend_on_mask_order():
    rng = np.random.default_rng(0)
    masks = [rng.random((24, 32)) > 0.4 for _ in range(4)]
    masks.append(_rectangle(24, 32, 3, 3, 20, 28))
    heat = heatmap_target(masks)
    np.testing.assert_array_equal(heatmap_target(masks[::-1]), heat)
    np.testing.assert_array_equal(heatmap_target(np.stack(masks)), heat)


def _listing_1_1(masks, alpha=4.0, eps=1e-4):
    """Test oracle: the supplement's Listing 1.1 with the notes' corrections, on the full frame."""
    import cv2

    heat = np.zeros(masks[0].shape, dtype=np.float32)
    for mask in sorted(masks, key=lambda m: m.sum(), reverse=True):
        dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
        heat = np.maximum(heat, (dist / (dist.max() + eps)) ** alpha)
    return heat


def test_heatmap_equals_the_full_frame_listing():
    rng = np.random.default_rng(3)
    masks = [rng.random((37, 45)) > 0.35 for _ in range(3)]  # ragged blobs touching every edge
    masks += [_rectangle(37, 45, 5, 7, 30, 20), _rectangle(37, 45, 0, 30, 12, 45), np.zeros((37, 45), bool)]
    yy, xx = np.mgrid[:37, :45]
    masks.append((yy - 20) ** 2 + (xx - 25) ** 2 < 81)
    np.testing.assert_allclose(heatmap_target(masks), _listing_1_1(masks), rtol=1e-6, atol=1e-7)


def test_owner_map_gives_ties_to_the_smaller_mask():
    small = _rectangle(30, 60, 5, 5, 16, 16)
    # Same rectangle plus a thinner, disjoint blob: larger area, identical values on the shared rectangle.
    large = small | _rectangle(30, 60, 20, 30, 24, 58)
    heat, owner = heatmap_target_with_owner([large, small])
    assert (owner[small] == 1).all()
    assert (owner[large & ~small] == 0).all()
    assert (owner[~large] == -1).all()
    np.testing.assert_array_equal(heat, heatmap_target([small, large]))


def test_owner_map_picks_the_larger_value():
    outer = _rectangle(40, 40, 0, 0, 40, 40)
    inner = _rectangle(40, 40, 1, 1, 5, 5)  # in the corner, where the outer mask's heat is low
    heat, owner = heatmap_target_with_owner([outer, inner])
    assert owner[3, 3] == 1  # inner's centre: inner gives ~1
    assert owner[20, 20] == 0


def test_empty_inputs_need_a_shape_and_bad_masks_are_refused():
    assert heatmap_target([], shape=(4, 5)).shape == (4, 5)
    assert heatmap_target(np.zeros((0, 4, 5), dtype=bool)).shape == (4, 5)
    with pytest.raises(InvalidMaskError, match="shape"):
        heatmap_target([])
    with pytest.raises(InvalidMaskError):
        heatmap_target([np.ones((4, 4), bool), np.ones((4, 5), bool)])
    with pytest.raises(InvalidMaskError):
        heatmap_target(np.ones((4, 4), bool))


def test_targets_at_the_autoppn_stride():
    mask = _rectangle(64, 64, 8, 16, 40, 48)  # box (16, 8, 48, 40) XYXY
    targets = build_autoppn_targets([mask], stride=8)
    assert targets.heat.shape == (8, 8) and targets.box_ltrb.shape == (4, 8, 8)
    assert targets.num_peaks == 1
    peak = np.unravel_index(np.argmax(targets.heat), targets.heat.shape)
    assert peak in {(2, 3), (2, 4), (3, 3), (3, 4)}  # the mask's centre (32, 24) is on cell corners
    assert targets.heat.max() == pytest.approx(1.0, abs=1e-3)
    owned = targets.owner >= 0
    assert (targets.heat[~owned] == 0).all() and (targets.box_ltrb[:, ~owned] == 0).all()
    centres = cell_centres(8, 8, 8)
    inside = (centres[..., 0] > 16) & (centres[..., 0] < 48) & (centres[..., 1] > 8) & (centres[..., 1] < 40)
    decoded = ltrb_to_boxes(centres, torch.from_numpy(targets.box_ltrb).permute(1, 2, 0), 8)
    torch.testing.assert_close(
        decoded[inside], torch.tensor([16.0, 8.0, 48.0, 40.0]).expand(int(inside.sum()), 4)
    )
    with pytest.raises(InvalidMaskError, match="multiple of the stride"):
        build_autoppn_targets([np.ones((20, 16), bool)], stride=8)


# ----------------------------------------------------------------------------------------------------------
# Proposal decoding


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _maps(rows: int, cols: int, peaks: dict, ltrb=(1.0, 1.0, 1.0, 1.0), background: float = 0.01):
    """AutoPPN maps with the given {(row, col): score} peaks and the same ltrb everywhere."""
    heat = torch.full((1, 1, rows, cols), _logit(background))
    for (r, c), p in peaks.items():
        heat[0, 0, r, c] = _logit(p)
    box = torch.tensor(ltrb, dtype=torch.float32).view(1, 4, 1, 1).expand(1, 4, rows, cols).clone()
    return AutoPPNOutput(heat, box)


def test_decoding_finds_exactly_the_peaks_above_threshold_sorted_by_score():
    peaks = {(2, 3): 0.9, (10, 12): 0.6, (5, 14): 0.75, (12, 2): 0.2, (7, 7): 0.31}
    out = _maps(16, 16, peaks)
    result = decode_proposals(out, (128, 128), 8, ProposalConfig(score_threshold=0.3, nms_iou=1.0))[0]
    expected = sorted(
        ((p, (c + 0.5) * 8, (r + 0.5) * 8) for (r, c), p in peaks.items() if p >= 0.3), reverse=True
    )
    assert len(result) == 4
    torch.testing.assert_close(result.scores, torch.tensor([e[0] for e in expected]))
    torch.testing.assert_close(result.points, torch.tensor([[e[1], e[2]] for e in expected]))
    assert result.points.dtype == result.boxes.dtype == result.scores.dtype == torch.float32
    limited = decode_proposals(out, (128, 128), 8, ProposalConfig(score_threshold=0.3, top_k=2))[0]
    torch.testing.assert_close(limited.scores, result.scores[:2])


def test_decoded_boxes_round_trip_the_ltrb_exactly():
    stride = 8
    boxes = {(3, 4): (20.0, 12.0, 60.0, 44.0), (9, 11): (80.0, 70.5, 100.25, 90.0)}
    heat = torch.full((1, 1, 14, 16), _logit(0.01))
    ltrb = torch.zeros(1, 4, 14, 16)
    centres = cell_centres(14, 16, stride)
    for (r, c), box in boxes.items():
        heat[0, 0, r, c] = _logit(0.8 if r == 3 else 0.7)
        ltrb[0, :, r, c] = boxes_to_ltrb(centres[r, c], torch.tensor(box), stride)
    result = decode_proposals(AutoPPNOutput(heat, ltrb), (112, 128), stride)[0]
    assert torch.equal(result.boxes, torch.tensor([boxes[(3, 4)], boxes[(9, 11)]]))


def test_boxes_are_clipped_to_the_valid_region_and_padded_cells_are_ignored():
    out = _maps(10, 10, {(1, 1): 0.9, (8, 8): 0.95}, ltrb=(4.0, 4.0, 4.0, 4.0))
    result = decode_proposals(out, (48, 40), 8)[0]  # cell (8, 8) has its centre (68, 68) in the padding
    assert len(result) == 1
    torch.testing.assert_close(result.boxes, torch.tensor([[0.0, 0.0, 40.0, 44.0]]))


def test_nms_removes_duplicate_proposals():
    # Peaks 2 cells (16 px) apart with ±80 px boxes, clipped to the 160×160 image: IoU 140/156 ≈ 0.9 > 0.7.
    # The third peak's box overlaps the first with IoU ≈ 0.37 and stays.
    out = _maps(20, 20, {(10, 10): 0.9, (10, 12): 0.8, (2, 2): 0.5}, ltrb=(10.0, 10.0, 10.0, 10.0))
    kept = decode_proposals(out, (160, 160), 8, ProposalConfig(nms_iou=0.7))[0]
    everything = decode_proposals(out, (160, 160), 8, ProposalConfig(nms_iou=1.0))[0]
    assert len(everything) == 3
    assert len(kept) == 2
    torch.testing.assert_close(kept.scores, torch.tensor([0.9, 0.5]))


def test_decoding_handles_a_batch_and_no_peaks():
    quiet = _maps(6, 6, {})
    both = AutoPPNOutput(
        torch.cat([quiet.heat_logits, _maps(6, 6, {(2, 2): 0.9}).heat_logits]),
        quiet.box_ltrb.expand(2, 4, 6, 6),
    )
    first, second = decode_proposals(both, (48, 48), 8)
    assert len(first) == 0 and first.boxes.shape == (0, 4) and first.points.shape == (0, 2)
    assert len(second) == 1


def test_proposal_config_is_validated():
    with pytest.raises(ValueError):
        ProposalConfig(score_threshold=1.5)
    with pytest.raises(ValueError):
        ProposalConfig(top_k=-1)
    with pytest.raises(ValueError):
        ProposalConfig(nms_iou=2.0)
