"""MobileSAM engine: TinyViT-5M equals MobileSAM's own code (keys, outputs, the whole predictor)."""

import pytest
import torch

from litesam.build import build_model
from litesam.modeling.tiny_vit import UNUSED_KEYS
from tests import sam_reference as ref
from tests.engine_support import assert_predictors_agree, mobile_sam, parity_prompts, save_official
from tests.tiny import synthetic_image


@pytest.fixture(scope="module")
def reference():
    return mobile_sam(seed=3)


@pytest.fixture(scope="module")
def official_file(reference, tmp_path_factory):
    return save_official(reference, tmp_path_factory.mktemp("mobile_sam") / "mobile_sam.pt")


def test_keys_and_parameters_equal_mobilesams_less_the_classifier(reference):
    ours = build_model("mobile_sam")
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items() if not k.startswith(UNUSED_KEYS)}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs
    dropped = [k for k in reference.state_dict() if k.startswith(UNUSED_KEYS)]
    assert sorted(dropped) == [
        "image_encoder.head.bias",
        "image_encoder.head.weight",
        "image_encoder.norm_head.bias",
        "image_encoder.norm_head.weight",
    ]
    encoder = reference.image_encoder.named_parameters()
    used = sum(p.numel() for name, p in encoder if not name.startswith(("head.", "norm_head.")))
    assert sum(p.numel() for p in ours.image_encoder.parameters()) == used


@pytest.mark.slow
def test_embedding_and_predictor_equal_mobilesams(reference, official_file):
    model = build_model(checkpoint=official_file)
    assert model.variant == "mobile_sam"
    image = synthetic_image(300, 420, seed=5)  # non-square, enlarged to 731×1024
    predictor = ref.mobile_sam().SamPredictor(reference)
    assert_predictors_agree(predictor, model, image, parity_prompts(300, 420))


@pytest.mark.slow
def test_fused_encoder_equals_the_plain_one(official_file):
    plain = build_model(checkpoint=official_file)
    fused = build_model(checkpoint=official_file, fuse=True)
    assert fused.image_encoder.fused and not any(
        isinstance(m, torch.nn.BatchNorm2d) for m in fused.image_encoder.modules()
    )
    torch.manual_seed(0)
    x = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        expected, _ = plain.image_encoder(x)
        embedding, _ = fused.image_encoder(x)
    assert (embedding - expected).abs().max() <= 1e-4 * expected.abs().max()
