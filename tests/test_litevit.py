"""LiteViT: published totals (params, MACs), shapes, the pooling mixer, and fused-vs-unfused equality."""

import copy

import pytest
import torch
import torch.nn.functional as F

from litesam.complexity import count_macs, count_parameters
from litesam.errors import InvalidImageError
from litesam.modeling.litevit import LiteViT, LiteViTConfig, MultiScalePooling, litevit_classifier
from litesam.modeling.litevit_fused import fuse_for_inference

PAPER_PARAMS = 1.16e6
PAPER_MACS_224 = 1.2e9


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return litevit_classifier().eval()


def test_classifier_has_the_papers_parameter_count(classifier):
    params = count_parameters(classifier)
    assert abs(params - PAPER_PARAMS) / PAPER_PARAMS <= 0.03, params


def test_classifier_has_the_papers_macs_at_224_with_ptflops_default_backend(classifier):
    macs = count_macs(classifier, (3, 224, 224), backend="pytorch")
    assert abs(macs - PAPER_MACS_224) / PAPER_MACS_224 <= 0.10, macs


def test_classifier_macs_with_the_aten_backend_are_close_too(classifier):
    macs = count_macs(classifier, (3, 224, 224), backend="aten")
    assert abs(macs - PAPER_MACS_224) / PAPER_MACS_224 <= 0.10, macs


def test_classifier_outputs_logits():
    model = LiteViT(LiteViTConfig.tiny(), num_classes=7).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7)


@pytest.mark.parametrize("size", [(64, 96), (32, 32), (224, 224)])
def test_features_have_output_stride_16(size):
    torch.manual_seed(0)
    model = LiteViT().eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, *size))
    assert features.shape == (1, model.out_channels, size[0] // 16, size[1] // 16)
    assert model.out_channels == 128


def _randomise_norms_and_scales(model: torch.nn.Module) -> None:
    """Make BatchNorm statistics, norm affines and layer-scales non-trivial, so folding them is tested."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=generator))
        for name, parameter in model.named_parameters():
            if name.endswith(("ls1", "ls2")):
                parameter.copy_(0.2 + 0.8 * torch.rand(parameter.shape, generator=generator))


@pytest.mark.parametrize(
    "cfg, size",
    [
        (LiteViTConfig(), (2, 96, 160)),  # border bands of the pooling mixer at every stage
        (LiteViTConfig(), (1, 16, 32)),  # maps smaller than the 7×7 window: whole-map path
        (LiteViTConfig.tiny(), (2, 64, 48)),
    ],
)
def test_fused_model_gives_the_same_outputs(cfg, size):
    torch.manual_seed(0)
    model = LiteViT(cfg, num_classes=10).eval()
    _randomise_norms_and_scales(model)
    x = torch.randn(size[0], 3, *size[1:])
    fused = fuse_for_inference(copy.deepcopy(model))
    with torch.no_grad():
        expected_features, expected_logits = model.forward_features(x), model(x)
        features, logits = fused.forward_features(x), fused(x)
    torch.testing.assert_close(features, expected_features, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)


def test_fusing_is_idempotent_and_makes_the_model_inference_only():
    model = LiteViT(LiteViTConfig.tiny()).eval()
    fused = fuse_for_inference(model)
    assert fused is model and model.fused
    assert fuse_for_inference(model) is model
    with pytest.raises(RuntimeError, match="cannot be trained"):
        model.train()


def test_eval_outputs_are_deterministic():
    model = LiteViT(LiteViTConfig.tiny()).eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.inference_mode():
        assert torch.equal(model.forward_features(x), model.forward_features(x))


def test_multiscale_pooling_is_the_mean_of_box_averages_and_keeps_constants():
    pool = MultiScalePooling((3, 5, 7))
    x = torch.randn(1, 4, 20, 24)
    expected = sum(F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False) for k in (3, 5, 7)) / 3
    got = pool.pool(x)
    torch.testing.assert_close(got[..., 3:-3, 3:-3], expected[..., 3:-3, 3:-3])  # interior: exactly the pools
    constant = torch.full((1, 2, 9, 11), 2.5)
    torch.testing.assert_close(pool.pool(constant), constant)  # border: only in-image pixels are averaged
    torch.testing.assert_close(pool(constant), torch.zeros_like(constant))


def test_drop_path_only_acts_in_training():
    model = LiteViT(LiteViTConfig(drop_path_rate=0.5, **_tiny_fields())).train()
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    a = model.forward_features(x)
    torch.manual_seed(1)
    b = model.forward_features(x)
    assert not torch.equal(a, b)
    model.eval()
    assert torch.equal(model.forward_features(x), model.forward_features(x))


def _tiny_fields() -> dict:
    tiny = LiteViTConfig.tiny()
    return {
        name: getattr(tiny, name) for name in ("stem_channels", "channels", "depths", "mlp_ratio", "head_dim")
    }


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.randn(1, 3, 40, 64), "multiples of 16"),
        (torch.randn(1, 1, 32, 32), "B×3×H×W"),
        (torch.randn(3, 32, 32), "B×3×H×W"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating-point"),
    ],
)
def test_bad_input_is_refused(x, message):
    model = LiteViT(LiteViTConfig.tiny())
    with pytest.raises(InvalidImageError, match=message):
        model.forward_features(x)


@pytest.mark.parametrize(
    "fields",
    [
        {"strides": (1, 2, 2, 2)},
        {"mixers": ("pool", "pool", "conv", "attn")},
        {"depths": (1, 1, 1)},
        {"channels": (64, 80, 100, 128)},
        {"pool_sizes": (3, 4)},
    ],
)
def test_bad_layouts_are_refused(fields):
    with pytest.raises(ValueError):
        LiteViTConfig(**fields)
