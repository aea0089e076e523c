"""Official SAM-family checkpoints as engines: recognised by build_model, refused clearly when wrong, served
by our predictor, SegEvery and CLI exactly as Meta's pipeline does (random weights saved in official format)."""

import json
import logging
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from litesam.build import build_model, load_checkpoint, save_checkpoint
from litesam.cli import main
from litesam.errors import CheckpointError, NoProposalHeadError
from litesam.everything import SegEvery
from litesam.modeling.autoppn import AutoPPN
from litesam.predictor import LiteSamPredictor
from tests import sam_reference as ref
from tests.engine_support import assert_predictors_agree, meta_sam, parity_prompts, save_official, tiny_vit_sam
from tests.tiny import synthetic_image


@pytest.fixture(scope="module")
def reference():
    return tiny_vit_sam(seed=7)


@pytest.fixture(scope="module")
def official_file(reference, tmp_path_factory):
    return save_official(reference, tmp_path_factory.mktemp("sam") / "sam_vit_tiny.pth")


def test_official_state_dict_is_recognised_and_loads_every_key(reference, official_file, caplog):
    with caplog.at_level(logging.INFO, logger="litesam.build"):
        model = build_model(checkpoint=official_file)
    assert model.variant == "sam_vit_tiny" and model.image_encoder.autoppn is None
    assert "engine sam_vit_tiny" in caplog.text
    ours = model.state_dict()
    assert set(ours) == set(reference.state_dict())
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0)


def test_predictor_equals_metas_sam_predictor_on_a_non_square_image(reference, official_file):
    model = build_model(checkpoint=official_file)
    image = synthetic_image(150, 230, seed=4)  # shrunk to 167×256: SAM's PIL bilinear resize matters
    assert_predictors_agree(ref.SamPredictor(reference), model, image, parity_prompts(150, 230))


def test_segevery_uses_sams_grid_without_an_autoppn_head(official_file):
    model = build_model(checkpoint=official_file)
    generator = SegEvery(model, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert generator.config.prompt_mode == "grid" and generator.config.points_per_side == 4
    records = generator.generate(synthetic_image(90, 120, seed=2))
    assert records and all(r["box"] is None and r["proposal_score"] is None for r in records)
    assert all(r["segmentation"].shape == (90, 120) for r in records)
    with pytest.raises(NoProposalHeadError, match="no AutoPPN head"):
        SegEvery(model, prompt_mode="autoppn")
    predictor = LiteSamPredictor(model)
    predictor.set_image(synthetic_image(40, 50))
    with pytest.raises(NoProposalHeadError, match="grid"):
        predictor.proposals()


def test_an_autoppn_head_carried_by_the_checkpoint_is_used(reference, tmp_path):
    state = dict(reference.state_dict())
    head = AutoPPN(256)
    state.update({f"image_encoder.autoppn.{k}": v for k, v in head.state_dict().items()})
    path = tmp_path / "sam_vit_tiny_with_autoppn.pth"
    torch.save(state, path)
    model = build_model(checkpoint=path)
    assert model.variant == "sam_vit_tiny" and isinstance(model.image_encoder.autoppn, AutoPPN)
    torch.testing.assert_close(model.image_encoder.autoppn.heat.weight, head.heat.weight, rtol=0, atol=0)
    assert SegEvery(model).config.prompt_mode == "autoppn"
    # and it survives our own checkpoint format
    saved = save_checkpoint(model, tmp_path / "ours.pt", "sam_vit_tiny")
    assert isinstance(build_model(checkpoint=saved).image_encoder.autoppn, AutoPPN)


def test_wrapped_state_dicts_and_our_format_load_too(reference, tmp_path):
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": reference.state_dict()}, wrapped)
    assert load_checkpoint(wrapped)[0] == "sam_vit_tiny"
    ours = save_checkpoint(build_model(checkpoint=wrapped), tmp_path / "ours.pt", "sam_vit_tiny")
    assert build_model(checkpoint=ours).variant == "sam_vit_tiny"


def test_a_truncated_file_is_a_clear_error(official_file, tmp_path):
    data = official_file.read_bytes()
    path = tmp_path / "sam_vit_b_01ec64.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*truncated"):
        build_model(checkpoint=path)


def test_a_file_that_fits_no_engine_names_the_closest_and_the_keys(reference, tmp_path):
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("image_encoder.blocks.1.")}
    state["image_encoder.extra.weight"] = torch.zeros(3)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(
        CheckpointError,
        match=r"fits no engine; the closest is sam_vit_tiny .*missing keys \[image_encoder\.blocks\.1\..*"
        r"unexpected keys \[image_encoder\.extra\.weight\]",
    ):
        build_model(checkpoint=path)


def test_the_wrong_engine_asked_for_is_refused(official_file):
    with pytest.raises(CheckpointError, match="closest is mobile_sam"):
        build_model("mobile_sam", checkpoint=official_file)


def test_another_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet.pth"
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    torch.save(net.state_dict(), path)
    message = "not a SAM-family checkpoint: it has no image_encoder / prompt_encoder / mask_decoder"
    with pytest.raises(CheckpointError, match=message):
        build_model(checkpoint=path)
    path.write_bytes(b"")
    torch.save({"epoch": 3, "note": "no tensors"}, path)
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        build_model(checkpoint=path)


def test_a_sam_hq_file_is_refused_by_name(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's registry warnings
        from segment_anything_hq import sam_model_registry as hq_registry

        torch.manual_seed(0)
        path = save_official(hq_registry["vit_tiny"](), tmp_path / "sam_hq_vit_tiny.pth")
    with pytest.raises(CheckpointError, match="SAM-HQ checkpoint.*hf_token"):
        build_model(checkpoint=path)


def test_an_efficientsam_file_is_refused_by_name(reference, tmp_path):
    # EfficientSAM publishes {"model": state_dict}; its prompt encoder and decoder have their own names
    # (yformer/EfficientSAM efficient_sam_decoder.py). Its ViT encoder keys are SAM-like; the decoder gives it away.
    state = {k: v for k, v in reference.state_dict().items() if k.startswith("image_encoder.")}
    for name in ("invalid_points", "point_embeddings", "bbox_top_left_embeddings", "bbox_bottom_right_embeddings"):
        state[f"prompt_encoder.{name}.weight"] = torch.zeros(1, 256)
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.zeros(2, 128)
    state["mask_decoder.final_output_upscaling_layers.0.0.weight"] = torch.zeros(256, 64, 2, 2)
    path = tmp_path / "efficient_sam_vitt.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match="EfficientSAM checkpoint"):
        build_model(checkpoint=path)


def test_cli_needs_nothing_but_the_official_file(official_file, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray(synthetic_image(80, 130, seed=3)).save(image)
    out = tmp_path / "mask.png"
    assert main(["segment", str(image), "--point", "40,30", "-o", str(out), "--checkpoint", str(official_file)]) == 0
    captured = capsys.readouterr()
    assert "variant sam_vit_tiny" in captured.err
    assert np.asarray(Image.open(out)).shape == (80, 130)
    folder = tmp_path / "everything"
    code = main(
        ["everything", str(image), "-o", str(folder), "--checkpoint", str(official_file), "--points-per-side", "4",
         "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--no-overlay"]
    )
    assert code == 0
    document = json.loads((folder / "photo.json").read_text())
    assert document["annotations"] and all(a["box"] is None for a in document["annotations"])


@pytest.mark.slow
def test_full_vit_b_state_dict_from_metas_registry_serves_the_same_masks(tmp_path):
    reference = meta_sam("vit_b", seed=11)
    path = save_official(reference, tmp_path / "sam_vit_b_01ec64.pth")
    model = build_model(checkpoint=path)
    assert model.variant == "sam_vit_b"
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    image = synthetic_image(480, 640, seed=6)  # 768×1024 inside the 1024² input
    assert_predictors_agree(ref.SamPredictor(reference), model, image, parity_prompts(480, 640)[:2])


def test_complexity_report_of_an_engine_counts_at_its_input_size():
    from litesam.complexity import complexity_report
    from litesam.errors import LiteSamError

    model = build_model("sam_vit_tiny")
    report = complexity_report(model, backends=("pytorch",))
    parts = report["components"]
    assert report["resolutions"] == [256] and "image_encoder.autoppn" not in parts
    backbone, neck = parts["image_encoder.backbone"]["params"], parts["image_encoder.neck"]["params"]
    assert backbone + neck == parts["image_encoder"]["params"]
    assert parts["image_encoder"]["macs"]["256"] > parts["image_encoder.neck"]["macs"]["256"] > 0
    with pytest.raises(LiteSamError, match="input size only"):
        complexity_report(model, resolutions=(224,), backends=("pytorch",))
