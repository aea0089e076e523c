import copy
import dataclasses

import numpy as np
import pytest
import torch

from litesam.build import build_model
from litesam.everything import SegEvery
from litesam.inference import BF16_MIN_SPEEDUP, CpuReport, apply_precision, choose_precision, cpu_report
from litesam.proposals import ProposalConfig
from litesam.predictor import LiteSamPredictor, encode_image
from tests.tiny import synthetic_image

REPORT = CpuReport(
    model="test CPU",
    flags=("avx2", "avx512f", "avx512_bf16"),
    capability="AVX512",
    blas="mkl, onednn",
    threads=1,
    fp32_gflops=100.0,
    bf16_gflops=100.0 * BF16_MIN_SPEEDUP,
)

# Parity images: three sizes and aspect ratios of the synthetic scene (random weights everywhere).
PARITY_IMAGES = [((120, 160), 0), ((300, 200), 1), ((480, 640), 2)]


def _bf16_available() -> bool:
    return cpu_report().bf16_gflops is not None


def test_auto_takes_bf16_with_native_instructions_and_a_measured_speedup():
    assert choose_precision("auto", REPORT) == "bf16"


@pytest.mark.parametrize(
    "change",
    [
        {"flags": ("avx2", "avx512f")},  # no native bf16 dot product: bf16 would be emulated
        {"bf16_gflops": 100.0 * BF16_MIN_SPEEDUP * 0.99},  # measured too small a gain
        {"bf16_gflops": None},  # torch's oneDNN has no bf16
    ],
)
def test_auto_falls_back_to_fp32(change):
    assert choose_precision("auto", dataclasses.replace(REPORT, **change)) == "fp32"


def test_explicit_precisions():
    assert choose_precision("fp32", REPORT) == "fp32"
    assert choose_precision("bf16", dataclasses.replace(REPORT, flags=())) == "bf16"  # asked for: honoured
    with pytest.raises(ValueError, match="oneDNN bf16"):
        choose_precision("bf16", dataclasses.replace(REPORT, bf16_gflops=None))
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("fp16", REPORT)


def test_cpu_report_describes_this_machine():
    report = cpu_report()
    assert report.fp32_gflops > 0 and report.capability
    line = report.describe()
    assert report.model in line and f"{report.threads} torch threads" in line and "GFLOP/s" in line


def test_fp32_path_leaves_outputs_exactly_as_torch_computes_them():
    torch.manual_seed(0)
    reference = build_model("litesam_tiny", fuse=True)
    model = copy.deepcopy(reference)
    assert apply_precision(model, "fp32") == "fp32"
    image = synthetic_image(120, 160, seed=0)
    a, b = encode_image(reference, image), encode_image(model, image)
    assert torch.equal(a.features, b.features)
    masks_a, iou_a, low_a = _click(reference, image, (60.0, 50.0))
    masks_b, iou_b, low_b = _click(model, image, (60.0, 50.0))
    np.testing.assert_array_equal(masks_a, masks_b)
    np.testing.assert_allclose(low_a, low_b, rtol=0, atol=1e-4)
    np.testing.assert_allclose(iou_a, iou_b, rtol=0, atol=1e-4)


def test_bf16_path_keeps_float32_interfaces_and_near_fp32_outputs():
    torch.manual_seed(0)
    reference = build_model("litesam_tiny", fuse=True)
    model = copy.deepcopy(reference)
    if not _bf16_available():
        with pytest.raises(ValueError, match="oneDNN bf16"):
            apply_precision(model, "bf16")
        return
    assert apply_precision(model, "bf16") == "bf16"
    assert apply_precision(model, "bf16") == "bf16"  # applying twice changes nothing
    assert model.image_encoder.neck.conv.weight.dtype == torch.bfloat16
    assert model.image_encoder.autoppn.reduce[0].weight.dtype == torch.float32
    image = synthetic_image(120, 160, seed=0)
    a, b = encode_image(reference, image), encode_image(model, image)
    assert b.features.dtype == torch.float32
    assert float((a.features - b.features).norm() / a.features.norm()) < 0.03
    masks, iou, low_res = _click(model, image, (60.0, 50.0))
    assert masks.dtype == bool and iou.dtype == np.float32 and low_res.dtype == np.float32
    records = SegEvery(
        model, pred_iou_thresh=0.0, stability_score_thresh=0.0, proposals=ProposalConfig(score_threshold=0.0, top_k=8)
    ).generate(image)
    assert records and all(r["segmentation"].shape == (120, 160) for r in records)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_bf16_click_masks_keep_mean_iou_099_with_fp32_at_r640(runtime):
    torch.manual_seed(0)
    reference = build_model("litesam_r640", fuse=True)
    torch.manual_seed(0)
    model = build_model("litesam_r640")  # the same weights, unfused: each runtime starts from it
    if not _bf16_available():
        with pytest.raises(ValueError, match="oneDNN bf16"):
            apply_precision(model, "bf16", runtime, fuse=True)
        return
    apply_precision(model, "bf16", runtime, fuse=True)
    assert model.encoder_runtime == runtime
    ious = []
    for (height, width), seed in PARITY_IMAGES:
        image = synthetic_image(height, width, seed=seed)
        fp32, bf16 = LiteSamPredictor(reference), LiteSamPredictor(model)
        fp32.set_image(image)
        bf16.set_image(image)
        rng = np.random.default_rng(seed)
        for point in rng.uniform(0.1, 0.9, (10, 2)) * [width, height]:
            prompt = (point[None], np.array([1]))
            for x, y in zip(fp32.predict(*prompt)[0], bf16.predict(*prompt)[0], strict=True):
                union = np.count_nonzero(x | y)
                ious.append(np.count_nonzero(x & y) / union if union else 1.0)
    assert np.mean(ious) >= 0.99
    assert np.median(ious) >= 0.99
    assert min(ious) >= 0.95


def _click(model, image, point):
    predictor = LiteSamPredictor(model)
    predictor.set_image(image)
    return predictor.predict(np.array([point], dtype=np.float64), np.array([1]))


def test_bf16_path_runs_an_engine_without_autoppn():
    torch.manual_seed(0)
    model = build_model("sam_vit_tiny", fuse=True)
    assert model.image_encoder.autoppn is None
    if not _bf16_available():
        with pytest.raises(ValueError, match="oneDNN bf16"):
            apply_precision(model, "bf16")
        return
    apply_precision(model, "bf16")
    masks, iou, _ = _click(model, synthetic_image(120, 160, seed=1), (60.0, 50.0))
    assert masks.shape[1:] == (120, 160) and iou.dtype == np.float32
