import pytest
import torch

from litesam.build import (
    build_model,
    checkpoint_sha256,
    load_checkpoint,
    load_sam_weights,
    save_checkpoint,
)
from litesam.errors import CheckpointError
from litesam.variants import VARIANTS
from tests.sam_reference import MaskDecoder as RefMaskDecoder
from tests.sam_reference import PromptEncoder as RefPromptEncoder
from tests.sam_reference import TwoWayTransformer as RefTransformer
from tests.tiny import tiny_model


def test_registry_has_the_paper_variants_and_a_tiny_one():
    assert {"litesam_r640", "litesam_r1024", "litesam_tiny"} <= set(VARIANTS)
    assert VARIANTS["litesam_r640"].image_size == 640 and VARIANTS["litesam_r1024"].image_size == 1024


@pytest.mark.parametrize("variant, side", [("litesam_r640", 40), ("litesam_r1024", 64)])
def test_paper_variants_build_with_sam_sized_decoders(variant, side):
    model = build_model(variant)
    assert model.img_size == side * 16
    assert model.prompt_encoder.get_dense_pe().shape == (1, 256, side, side)
    assert sum(p.numel() for p in model.mask_decoder.parameters()) == 4_058_340
    assert sum(p.numel() for p in model.prompt_encoder.parameters()) == 6_220
    assert not model.training


def test_checkpoint_round_trip_records_the_variant(tmp_path):
    model = tiny_model()
    path = save_checkpoint(model, tmp_path / "tiny.pt", "litesam_tiny")
    variant, state = load_checkpoint(path)
    assert variant == "litesam_tiny"
    loaded = build_model(checkpoint=path)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    assert "pixel_mean" not in state  # a non-persistent buffer
    assert len(checkpoint_sha256(path)) == 64


def test_checkpoint_of_the_wrong_variant_is_refused(tmp_path):
    path = save_checkpoint(tiny_model(), tmp_path / "tiny.pt", "litesam_tiny")
    with pytest.raises(CheckpointError, match="variant 'litesam_tiny'.*'litesam_r640'"):
        build_model("litesam_r640", checkpoint=path)


def test_mislabelled_checkpoint_names_the_bad_keys(tmp_path):
    path = tmp_path / "bad.pt"
    state = tiny_model().state_dict()
    state.pop("mask_decoder.iou_token.weight")
    state["mask_decoder.extra.weight"] = torch.zeros(1)
    torch.save({"format": "litesam-checkpoint/1", "variant": "litesam_tiny", "state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"missing keys \[mask_decoder.iou_token.weight\].*unexpected keys \[mask_decoder.extra.weight\]"):
        build_model(checkpoint=path)


@pytest.mark.parametrize("contents", [b"", b"not a checkpoint at all"])
def test_unreadable_files_are_clear_errors(tmp_path, contents):
    path = tmp_path / "broken.pt"
    path.write_bytes(contents)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        build_model(checkpoint=path)


def test_missing_file_and_unknown_variant(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model(checkpoint=tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="known variants"):
        build_model("litesam_huge")


def _sam_state_dict():
    torch.manual_seed(1)
    prompt = RefPromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16)
    decoder = RefMaskDecoder(
        num_multimask_outputs=3,
        transformer=RefTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    state = {f"prompt_encoder.{k}": v for k, v in prompt.state_dict().items()}
    state.update({f"mask_decoder.{k}": v for k, v in decoder.state_dict().items()})
    state["image_encoder.patch_embed.proj.weight"] = torch.zeros(768, 3, 16, 16)  # ignored part of a SAM file
    return state


def test_official_sam_checkpoint_initialises_prompt_encoder_and_decoder(tmp_path):
    state = _sam_state_dict()
    path = tmp_path / "sam_vit_b.pth"
    torch.save(state, path)
    model = build_model("litesam_r640")
    load_sam_weights(model, path)
    for key, value in state.items():
        if key.startswith(("prompt_encoder.", "mask_decoder.")):
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_sam_checkpoint_with_a_missing_key_is_named(tmp_path):
    state = _sam_state_dict()
    del state["mask_decoder.output_upscaling.0.weight"]
    path = tmp_path / "sam_broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="output_upscaling.0.weight"):
        load_sam_weights(build_model("litesam_r640"), path)


def test_partial_sam_checkpoint_names_the_closest_engine(tmp_path):
    path = tmp_path / "sam.pth"
    torch.save(_sam_state_dict(), path)
    with pytest.raises(CheckpointError, match=r"fits no engine; the closest is sam_vit_b .*missing keys \[image_encoder"):
        build_model(checkpoint=path)
