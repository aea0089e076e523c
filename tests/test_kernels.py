import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from litesam import kernels
from litesam.build import build_model
from litesam.predictor import LiteSamPredictor

needs_onednn = pytest.mark.skipif(not kernels.onednn_linear_available(), reason="torch built without oneDNN")


@pytest.fixture
def kernel(monkeypatch):
    """Force the process's float32 kernel for one test: ``kernel("onednn")``; the choice is reset after."""

    def force(name: str) -> None:
        monkeypatch.setenv(kernels.KERNEL_ENV, name)
        kernels.fp32_kernel.cache_clear()

    yield force
    kernels.fp32_kernel.cache_clear()


def test_auto_takes_onednn_only_for_a_measured_speedup():
    fast = 100.0 * kernels.ONEDNN_MIN_SPEEDUP
    assert kernels.choose_kernel("auto", 100.0, fast) == "onednn"
    assert kernels.choose_kernel("auto", 100.0, fast * 0.99) == "mkl"
    assert kernels.choose_kernel("auto", 100.0, None) == "mkl"
    assert kernels.choose_kernel("mkl", 100.0, 1000.0) == "mkl"
    assert kernels.choose_kernel("onednn", 100.0, 50.0) == "onednn"  # asked for: honoured


def test_bad_kernel_requests_are_refused():
    with pytest.raises(ValueError, match="LITESAM_FP32_KERNEL must be one of mkl, onednn, auto"):
        kernels.choose_kernel("avx512", 100.0, 200.0)
    with pytest.raises(ValueError, match="no oneDNN linear op"):
        kernels.choose_kernel("onednn", 100.0, None)


def test_environment_forces_the_kernel_and_is_checked(kernel):
    kernel("mkl")
    assert kernels.fp32_kernel() == "mkl"
    kernel("bogus")
    with pytest.raises(ValueError, match="must be one of"):
        kernels.fp32_kernel()


def test_forced_kernel_is_restored_and_checked():
    with kernels.forced("onednn"):
        with kernels.forced("mkl"):
            assert kernels._forced == "mkl"
        assert kernels._forced == "onednn"
    assert kernels._forced is None
    with pytest.raises(ValueError, match="mkl or onednn"), kernels.forced("auto"):
        pass


def test_probe_measures_both_kernels():
    mkl, onednn = kernels.probe_gflops()
    assert mkl > 0
    assert (onednn is not None) == kernels.onednn_linear_available()


@needs_onednn
def test_probe_keeps_each_kernels_best_round(monkeypatch):
    """A half-speed first measurement (seen on a Zen 4) does not decide: the kernels alternate, best kept."""
    speeds = iter([35.0, 85.0, 80.0, 84.0, 81.0, 86.0])  # mkl, onednn, mkl, onednn, mkl, onednn
    monkeypatch.setattr(kernels, "gflops_on_one_core", lambda run, flops: next(speeds))
    kernels.probe_gflops.cache_clear()
    try:
        mkl, onednn = kernels.probe_gflops()
    finally:
        kernels.probe_gflops.cache_clear()
    assert (mkl, onednn) == (81.0, 86.0)
    assert kernels.choose_kernel("auto", mkl, onednn) == "mkl"


@needs_onednn
@pytest.mark.parametrize("name", ["mkl", "onednn"])
def test_products_equal_torch_on_either_kernel(name):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 48, generator=generator)
    weight = torch.randn(96, 48, generator=generator)
    bias = torch.randn(96, generator=generator)
    residual = torch.randn(300, 96, generator=generator)
    batch = torch.randn(3, 96, 20, generator=generator)
    with torch.inference_mode(), kernels.forced(name):
        torch.testing.assert_close(kernels.linear(x, weight, bias), F.linear(x, weight, bias))
        torch.testing.assert_close(kernels.linear(x.view(3, 100, 48), weight), F.linear(x.view(3, 100, 48), weight))
        torch.testing.assert_close(kernels.linear_gelu(x, weight, bias), F.gelu(F.linear(x, weight, bias)))
        torch.testing.assert_close(kernels.linear_residual(x, weight, residual), residual + x @ weight.t())
        left = kernels.linear(x.view(3, 100, 48), weight)
        torch.testing.assert_close(kernels.bmm(left, batch), torch.bmm(left, batch))
        torch.testing.assert_close(kernels.bmm(left[:1].expand(3, -1, -1), batch), torch.bmm(left[:1].expand(3, -1, -1), batch))
        scores = torch.randn(3, 20, 100, generator=generator).transpose(1, 2)  # B×100×20, strided as the decoder's
        for shared in (torch.randn(1, 100, 96, generator=generator), torch.randn(3, 100, 96, generator=generator)):
            values = batch.transpose(1, 2)  # B×20×96
            torch.testing.assert_close(kernels.baddbmm(shared, scores, values), torch.baddbmm(shared, scores, values))


@needs_onednn
def test_bfloat16_gelu_product_is_fused_on_onednn_and_equals_torch():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 48, generator=generator).bfloat16()
    weight, bias = torch.randn(96, 48, generator=generator).bfloat16(), torch.randn(96, generator=generator).bfloat16()
    with torch.inference_mode(), torch.profiler.profile() as profile:
        fused = kernels.linear_gelu(x, weight, bias)
    assert any("_linear_pointwise" in event.name for event in profile.events())
    expected = F.gelu(F.linear(x.float(), weight.float(), bias.float()))
    assert fused.dtype == torch.bfloat16
    torch.testing.assert_close(fused.float(), expected, rtol=2e-2, atol=2e-2)  # bf16 rounding of the output


@needs_onednn
def test_products_that_need_gradients_run_on_torch():
    x = torch.randn(20, 8, requires_grad=True)
    weight = torch.randn(16, 8, requires_grad=True)
    with kernels.forced("onednn"):
        kernels.linear_gelu(x, weight).sum().backward()
    expected_x, expected_w = torch.autograd.grad(F.gelu(F.linear(x, weight)).sum(), (x, weight))
    torch.testing.assert_close(x.grad, expected_x)
    torch.testing.assert_close(weight.grad, expected_w)


def _outputs(model, image, points):
    """(embedding, low-res logits, predicted IoU) of one click, as tensors."""
    predictor = LiteSamPredictor(model)
    embedding = predictor.set_image(image).features.clone()
    _, scores, low_res = predictor.predict(point_coords=np.array(points), point_labels=np.array([1]))
    return embedding, torch.from_numpy(low_res), torch.from_numpy(scores)


@needs_onednn
@pytest.mark.parametrize("variant", ["litesam_tiny", "litesam_r640"])
def test_fused_model_outputs_agree_on_both_kernels(variant):
    """The whole fused encoder and the decoder give the same embedding and logits on MKL and oneDNN (1e-4)."""
    torch.manual_seed(0)
    model = build_model(variant, fuse=True)
    image = torch.Generator().manual_seed(1)
    image = (torch.rand(200, 300, 3, generator=image) * 255).to(torch.uint8).numpy()
    with kernels.forced("mkl"):
        reference = _outputs(copy.deepcopy(model), image, [[150.0, 100.0]])
    with torch.profiler.profile() as profile, kernels.forced("onednn"):
        candidate = _outputs(model, image, [[150.0, 100.0]])
    assert any("_linear_pointwise" in event.name for event in profile.events())  # oneDNN really ran
    for ours, theirs in zip(candidate, reference, strict=True):
        scale = theirs.abs().max().clamp_min(1e-6)
        assert ((ours - theirs).abs().max() / scale).item() < 1e-4
