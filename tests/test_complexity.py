"""Parameter and MAC counting (ptflops, both backends), the one-prompt wrapper and the report."""

import json

import pytest
import torch
from torch import nn

from litesam.complexity import OnePromptModel, complexity_report, count_macs, count_parameters
from tests.tiny import tiny_model


class _ConvThenMatmul(nn.Module):
    """A 3×3 conv (counted by both backends) followed by an ``@`` matmul (counted only by aten)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.register_buffer("right", torch.ones(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) @ self.right


def test_count_parameters_counts_parameters_not_buffers():
    assert count_parameters(_ConvThenMatmul()) == 4 * 2 * 9
    assert count_parameters(nn.Linear(3, 2)) == 8


def test_count_macs_follows_each_backends_rules():
    module = _ConvThenMatmul()
    conv = 8 * 8 * 4 * 2 * 9
    matmul = 4 * 8 * 8 * 5
    assert count_macs(module, (2, 8, 8), backend="pytorch") == conv
    assert count_macs(module, (2, 8, 8), backend="aten") == conv + matmul
    with torch.inference_mode():  # the aten backend must not lose the matmul under inference mode
        assert count_macs(module, (2, 8, 8), backend="aten") == conv + matmul
    with pytest.raises(ValueError, match="backend"):
        count_macs(module, (2, 8, 8), backend="fvcore")


def test_count_macs_leaves_the_module_untouched():
    module = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)).train()
    count_macs(module, (1, 4, 4))
    assert module.training and module[1].training
    assert not hasattr(module, "__flops__") and not hasattr(module[0], "__flops__")


def test_one_prompt_model_returns_three_masks_and_scores():
    model = tiny_model()
    wrapper = OnePromptModel(model)
    side = model.img_size
    with torch.no_grad():
        masks, iou = wrapper(torch.zeros(1, 3, side, side))
    assert masks.shape == (1, 3, side // 4, side // 4)
    assert iou.shape == (1, 3)


def test_report_is_json_and_its_parts_add_up():
    model = tiny_model()
    report = complexity_report(model, resolutions=(64, model.img_size))
    assert json.loads(json.dumps(report)) == report
    assert report["backends"] == ["pytorch", "aten"] and report["ptflops_version"]
    parts = report["components"]
    encoder = parts["image_encoder"]
    assert encoder["params"] == sum(
        parts[f"image_encoder.{n}"]["params"] for n in ("backbone", "neck", "autoppn")
    )
    assert (
        parts["total"]["params"]
        == encoder["params"] + parts["prompt_encoder"]["params"] + parts["mask_decoder"]["params"]
    )
    side = str(model.img_size)
    for key in ("macs", "macs_aten"):
        assert set(encoder[key]) == {"64", side}
        assert encoder[key]["64"] < encoder[key][side]
        backbone = parts["image_encoder.backbone"][key][side]
        assert (
            backbone + parts["image_encoder.neck"][key][side] + parts["image_encoder.autoppn"][key][side]
            == encoder[key][side]
        )
        for size in ("64", side):
            assert parts["mask_decoder"][key][size] > 0
            assert parts["total"][key][size] == encoder[key][size] + parts["mask_decoder"][key][size]
        # The decoder attends over (side/16)² image tokens: fewer at the smaller size.
        assert parts["mask_decoder"][key]["64"] < parts["mask_decoder"][key][side]
    assert model.prompt_encoder.image_embedding_size == (model.img_size // 16,) * 2  # counted on copies
    assert model.training is False  # counting left the shared model as it was
