"""The OpenVINO encoder runtime (litesam.openvino_encoder, chosen by litesam.inference): parity with torch,
the choice rule, the converted-graph cache, concurrent callers. Random weights throughout."""

import threading

import numpy as np
import pytest
import torch

from litesam.build import build_model, save_checkpoint
from litesam.errors import CheckpointError, InvalidImageError
from litesam.everything import SegEvery
from litesam.inference import apply_precision, choose_runtime, cpu_report
from litesam.openvino_encoder import OpenVinoImageEncoder
from litesam.predictor import LiteSamPredictor, encode_image
from litesam.proposals import ProposalConfig
from tests.tiny import synthetic_image


def _pair(variant="litesam_tiny", seed=0):
    """(fused torch reference, unfused copy with the same weights)."""
    torch.manual_seed(seed)
    reference = build_model(variant, fuse=True)
    torch.manual_seed(seed)
    return reference, build_model(variant)


def _rel_max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_openvino_f32_embedding_equals_torch_within_1e4_and_serves_clicks_and_segevery(tmp_path):
    reference, model = _pair()
    assert apply_precision(model, "fp32", "openvino", cache_dir=tmp_path) == "fp32"
    assert model.encoder_runtime == "openvino" and isinstance(model.image_encoder, OpenVinoImageEncoder)
    for (height, width), seed in [((120, 160), 0), ((300, 200), 1)]:
        image = synthetic_image(height, width, seed=seed)
        a, b = encode_image(reference, image), encode_image(model, image)
        assert b.features.dtype == torch.float32 and b.features.is_contiguous()
        assert _rel_max_diff(b.features, a.features) <= 1e-4
        fp32, ov = LiteSamPredictor(reference), LiteSamPredictor(model)
        fp32.set_image(image)
        ov.set_image(image)
        point = (np.array([[width * 0.4, height * 0.6]]), np.array([1]))
        masks_a, iou_a, low_a = fp32.predict(*point)
        masks_b, iou_b, low_b = ov.predict(*point)
        np.testing.assert_allclose(low_b, low_a, rtol=0, atol=1e-3 * np.abs(low_a).max())
        np.testing.assert_allclose(iou_b, iou_a, rtol=0, atol=1e-4)
    proposals = ProposalConfig(score_threshold=0.0, top_k=8)
    config = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, proposals=proposals)
    image = synthetic_image(120, 160, seed=0)
    boxes = [r["bbox"] for r in SegEvery(reference, **config).generate(image)]
    assert boxes and [r["bbox"] for r in SegEvery(model, **config).generate(image)] == boxes
    with pytest.raises(CheckpointError, match="fused for inference"):
        save_checkpoint(model, tmp_path / "x.pt", "litesam_tiny")


def test_the_converted_graph_is_cached_by_weights_and_read_back(tmp_path):
    _, first = _pair(seed=0)
    OpenVinoImageEncoder(first.image_encoder, "f32", cache_dir=tmp_path)
    files = sorted((tmp_path / "openvino").iterdir())
    assert [f.suffix for f in files] == [".bin", ".xml"]
    written = files[1].stat().st_mtime_ns
    _, same = _pair(seed=0)
    again = OpenVinoImageEncoder(same.image_encoder, "f32", cache_dir=tmp_path)
    assert files[1].stat().st_mtime_ns == written and sorted((tmp_path / "openvino").iterdir()) == files
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        np.testing.assert_allclose(again.embed(x), same.image_encoder.embed(x), rtol=0, atol=1e-4)
    _, other = _pair(seed=1)  # other weights: another graph, not the cached one
    converted = OpenVinoImageEncoder(other.image_encoder, "f32", cache_dir=tmp_path)
    assert len(list((tmp_path / "openvino").glob("*.xml"))) == 2
    with torch.inference_mode():
        np.testing.assert_allclose(converted.embed(x), other.image_encoder.embed(x), rtol=0, atol=1e-4)


def test_the_runtime_rule():
    _, unfused = _pair()
    fused, _ = _pair()
    engine = build_model("sam_vit_tiny")
    assert choose_runtime("auto", "bf16", unfused) == "openvino"
    assert choose_runtime("auto", "fp32", unfused) == "torch"  # OpenVINO f32 measured below the 1.3× bar
    assert choose_runtime("openvino", "fp32", unfused) == "openvino"
    assert choose_runtime("torch", "bf16", unfused) == "torch"
    assert choose_runtime("auto", "bf16", fused) == "torch"
    assert choose_runtime("auto", "bf16", engine) == "torch"
    with pytest.raises(ValueError, match="fused"):
        choose_runtime("openvino", "bf16", fused)
    with pytest.raises(ValueError, match="engine"):
        choose_runtime("openvino", "fp32", engine)
    with pytest.raises(ValueError, match="runtime must be one of torch, openvino, auto"):
        choose_runtime("onnx", "fp32", unfused)
    off_cpu = unfused.to("meta")  # a model on another device (no accelerator here; meta has no data)
    assert choose_runtime("auto", "bf16", off_cpu) == "torch"
    with pytest.raises(ValueError, match="runtime openvino: the model is not on the CPU"):
        choose_runtime("openvino", "bf16", off_cpu)


def test_apply_precision_fuses_the_torch_path_and_refuses_a_second_different_path():
    _, model = _pair()
    assert apply_precision(model, "fp32", "auto", fuse=True) == "fp32"
    assert model.encoder_runtime == "torch" and model.image_encoder.backbone.fused
    assert apply_precision(model, "fp32") == "fp32"
    if cpu_report().bf16_gflops is not None:
        with pytest.raises(ValueError, match="already on the fp32 path"):
            apply_precision(model, "bf16")


def test_the_encoder_is_refused_where_it_cannot_be_converted():
    fused, _ = _pair()
    with pytest.raises(ValueError, match="cannot run: the encoder is fused"):
        OpenVinoImageEncoder(fused.image_encoder, "f32")
    with pytest.raises(ValueError, match="cannot run: .*not an engine's"):
        OpenVinoImageEncoder(build_model("sam_vit_tiny").image_encoder, "f32")


def test_wrong_input_is_refused_with_the_expected_shape():
    _, model = _pair()
    encoder = OpenVinoImageEncoder(model.image_encoder, "f32")
    with pytest.raises(InvalidImageError, match=r"B×3×256×256 float"):
        encoder.embed(torch.zeros(1, 3, 128, 128))
    with pytest.raises(InvalidImageError):
        encoder.embed(torch.zeros(1, 3, 256, 256, dtype=torch.int64))


def test_callers_in_two_threads_get_their_own_embeddings():
    _, model = _pair()
    encoder = OpenVinoImageEncoder(model.image_encoder, "f32", streams=2)
    inputs = [torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    with torch.inference_mode():
        serial = [encoder.embed(x) for x in inputs]
    results: dict[int, torch.Tensor] = {}

    def run(indices):
        with torch.inference_mode():
            for i in indices:
                results[i] = encoder.embed(inputs[i])

    threads = [threading.Thread(target=run, args=(range(k, 6, 2),)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == list(range(6))
    for i, expected in enumerate(serial):
        assert torch.equal(results[i], expected)


def test_a_batch_of_two_images_equals_two_single_calls():
    _, model = _pair()
    encoder = OpenVinoImageEncoder(model.image_encoder, "f32")
    x = torch.randn(2, 3, 256, 256)
    with torch.inference_mode():
        singles = torch.cat([encoder.embed(x[:1]), encoder.embed(x[1:])])
        np.testing.assert_allclose(encoder.embed(x), singles, rtol=0, atol=1e-5)


def test_bf16_openvino_encoder_keeps_the_embedding_near_fp32():
    reference, model = _pair()
    if cpu_report().bf16_gflops is None:
        with pytest.raises(ValueError, match="oneDNN bf16"):
            apply_precision(model, "bf16", "auto")
        return
    apply_precision(model, "bf16", "auto")
    assert model.encoder_runtime == "openvino" and model.image_encoder.precision == "bf16"
    assert model.mask_decoder.output_upscaling[0].weight.dtype == torch.bfloat16
    image = synthetic_image(120, 160, seed=0)
    a, b = encode_image(reference, image), encode_image(model, image)
    assert b.features.dtype == torch.float32
    assert float((a.features - b.features).norm() / a.features.norm()) < 0.03
    predictor = LiteSamPredictor(model)
    predictor.set_image(image)
    masks, iou, low_res = predictor.predict(np.array([[60.0, 50.0]]), np.array([1]))
    assert masks.shape == (3, 120, 160) and iou.dtype == np.float32 and low_res.dtype == np.float32
