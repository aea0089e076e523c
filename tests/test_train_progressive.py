"""Tests of progressive resizing: ``LiteSAM.set_input_size`` and ``litesam train``'s phases at two input sides."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from litesam.build import build_model, load_checkpoint
from litesam.train.config import LossWeights, TrainConfig, input_side_at
from litesam.train.loop import train
from litesam.variants import VARIANTS
from tests.coco_support import coco  # noqa: F401 (a fixture)


def test_progressive_resizing_plan_and_its_defaults(tmp_path):
    def plan(**kwargs) -> tuple[int, float]:
        return TrainConfig(data="synthetic", output_dir=tmp_path, **kwargs).resolved_progressive()

    assert plan(variant="litesam_tiny") == (128, 0.5)  # the variant's default
    assert plan(variant="litesam_tiny", progressive_side=0) == (0, 0.0)
    assert plan(variant="litesam_r640") == (0, 0.0)  # off for the others
    assert plan(variant="litesam_tiny", progressive_side=128) == (128, 0.5)
    assert plan(variant="litesam_tiny", progressive_side=128, progressive_fraction=0.0) == (0, 0.0)
    assert plan(variant="litesam_r640", progressive_side=320, progressive_fraction=0.25) == (320, 0.25)
    for bad in (dict(progressive_side=100), dict(progressive_side=-16), dict(progressive_fraction=1.5)):
        with pytest.raises(ValueError, match="progressive"):
            plan(variant="litesam_tiny", **bad)

    assert input_side_at(0, 8000, 256, (128, 0.75)) == (128, 6000)
    assert input_side_at(5999, 8000, 256, (128, 0.75)) == (128, 6000)
    assert input_side_at(6000, 8000, 256, (128, 0.75)) == (256, 8000)
    assert input_side_at(0, 8000, 256, (256, 0.75)) == (256, 8000)  # not smaller: off
    assert input_side_at(0, 8000, 256, (0, 0.0)) == (256, 8000)
    assert input_side_at(0, 1, 256, (128, 0.75)) == (128, 1)  # round(0.75) = 1


def test_a_model_at_another_input_side_equals_one_built_for_it(monkeypatch):
    torch.manual_seed(0)
    model = build_model("litesam_tiny").eval()
    at_128 = replace(VARIANTS["litesam_tiny"], name="litesam_tiny_128", image_size=128)
    monkeypatch.setitem(VARIANTS, "litesam_tiny_128", at_128)
    built = build_model("litesam_tiny_128").eval()
    built.load_state_dict(model.state_dict())
    model.set_input_size(128)
    assert model.img_size == 128 and model.prompt_encoder.get_dense_pe().shape == (1, 64, 8, 8)
    image = torch.rand(1, 3, 128, 96) * 255
    point = (torch.tensor([[[40.0, 70.0]]]), torch.ones(1, 1, dtype=torch.int64))
    with torch.no_grad():
        outputs = []
        for m in (model, built):
            embedding, ppn = m.image_encoder(m.preprocess(image))
            sparse, dense = m.prompt_encoder(points=point, boxes=None, masks=None)
            masks, iou = m.mask_decoder(embedding, m.prompt_encoder.get_dense_pe(), sparse, dense, True)
            outputs.append((embedding, ppn.heat_logits, masks, iou))
    assert outputs[0][2].shape == (1, 3, 32, 32)
    for ours, theirs in zip(*outputs):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    model.set_input_size(256)
    assert model.prompt_encoder.get_dense_pe().shape == (1, 64, 16, 16)
    with pytest.raises(ValueError, match="multiple of 16"):
        model.set_input_size(120)
    with pytest.raises(ValueError, match="engine"):
        build_model("sam_vit_tiny").set_input_size(512)


def test_a_resumed_run_keeps_its_input_sides_without_the_flags(coco, tmp_path):
    annotation_file, image_dir, _ = coco
    common = dict(data=annotation_file, images=image_dir, variant="litesam_tiny", batch_size=3, device="cpu",
                  log_every=1, checkpoint_every=0, max_steps=4)
    out = tmp_path / "run"
    train(TrainConfig(output_dir=out, progressive_side=64, stop_after=1, **common))  # 2 of 4 steps at 64 px
    assert torch.load(out / "last.state.pt", weights_only=True)["progressive"] == [64, 0.5]
    train(TrainConfig(output_dir=out, resume=True, **common))  # no progressive flags: the state's plan holds
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [(entry["step"], entry["side"]) for entry in log] == [(1, 64), (2, 64), (3, 256), (4, 256)]
    assert build_model(checkpoint=out / "last.pt").img_size == 256


def test_a_switch_inside_an_epoch_interrupted_and_resumed_gives_the_uninterrupted_weights(coco, tmp_path):
    annotation_file, image_dir, _ = coco
    # 3 images, batch 2: 2 steps an epoch; round(0.6 · 5) = 3 steps at 128 px, so the switch falls inside
    # the second epoch (its first step at 128, its second at 256).
    common = dict(data=annotation_file, images=image_dir, variant="litesam_tiny", batch_size=2, warmup_steps=2,
                  lr=1e-3, device="cpu", log_every=1, checkpoint_every=0, max_steps=5, progressive_side=128,
                  progressive_fraction=0.6)
    straight = tmp_path / "straight"
    train(TrainConfig(output_dir=straight, **common))
    log = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    assert [(e["step"], e["epoch"], e["side"]) for e in log] == [
        (1, 0, 128), (2, 0, 128), (3, 1, 128), (4, 1, 256), (5, 2, 256)
    ]
    # The heat term weighs (256 / 128)² = 4× at 128 px (its cells are a quarter as many), 1× at 256.
    w = LossWeights()
    for e in log:
        scale = (256 / e["side"]) ** 2
        autoppn = scale * w.heat * e["heat"] + w.box_l1 * e["box_l1"] + w.box_giou * e["box_giou"]
        assert e["loss"] == pytest.approx(e["mask"] + w.autoppn * autoppn, abs=1e-5), e
    # Interrupted at the switch: the resumed invocation reaches step 3 by the resume path (skipping the
    # epoch's done batch), the straight run by the phase break; the weights must agree bit for bit.
    out = tmp_path / "run"
    train(TrainConfig(output_dir=out, stop_after=3, **common))
    train(TrainConfig(output_dir=out, resume=True, **common))
    a, b = load_checkpoint(out / "last.pt")[1], load_checkpoint(straight / "last.pt")[1]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
