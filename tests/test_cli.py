import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from litesam.build import load_checkpoint, save_checkpoint
from litesam.cli import DEMO_CHECKPOINT, main
from litesam.eval.metrics import mask_iou
from litesam.masks import coco_rle_to_mask
from litesam.train.synthetic import render_scene
from tests.tiny import synthetic_image, tiny_model

DEMO_IMAGE = Path(__file__).parent / "data" / "demo.png"


def demo_shapes() -> dict[str, np.ndarray]:
    """The two objects of tests/data/demo.png, exactly (each is one flat colour on a noisy background)."""
    pixels = np.asarray(Image.open(DEMO_IMAGE).convert("RGB"))
    return {name: (pixels == colour).all(axis=2) for name, colour in (("disc", (230, 200, 40)), ("box", (20, 40, 160)))}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    checkpoint = save_checkpoint(tiny_model(), root / "tiny.pt", "litesam_tiny")
    first, second = root / "first.png", root / "second.jpg"
    Image.fromarray(synthetic_image(70, 110, seed=1)).save(first)
    Image.fromarray(synthetic_image(96, 64, seed=2)).save(second)
    return {"checkpoint": checkpoint, "first": first, "second": second, "root": root}


def test_segment_writes_a_mask_of_the_image_size(files, capsys):
    out = files["root"] / "mask.png"
    code = main(
        ["segment", str(files["first"]), "--point", "30,20", "--point", "80,50,0", "--box", "5,5,100,60",
         "-o", str(out), "--checkpoint", str(files["checkpoint"])]
    )
    assert code == 0
    mask = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (70, 110) and set(np.unique(mask)) <= {0, 255}
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["score"] <= 1.0 and result["area"] == int((mask > 0).sum())


def test_without_a_checkpoint_the_demo_checkpoint_is_used_and_named(files, capsys):
    code = main(["segment", str(files["first"]), "--point", "3,3", "-o", str(files["root"] / "m.png")])
    assert code == 0
    assert "demo checkpoint" in capsys.readouterr().err
    code = main(["segment", str(files["first"]), "--point", "3,3", "-o", str(files["root"] / "m.png"),
                 "--variant", "litesam_r640"])
    assert code == 2  # no weights exist for the paper's variants
    assert "no weights for litesam_r640" in capsys.readouterr().err


def test_the_demo_checkpoint_is_small_half_precision_and_labelled():
    assert DEMO_CHECKPOINT.stat().st_size < 1_000_000
    contents = torch.load(DEMO_CHECKPOINT, weights_only=True)
    assert contents["label"] == "trained on synthetic shapes; not for real photos"
    assert "litesam train --data synthetic --variant litesam_tiny" in contents["recipe"]
    variant, state = load_checkpoint(DEMO_CHECKPOINT)
    assert variant == "litesam_tiny"
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}


@pytest.mark.parametrize("shape", ["disc", "box"])
def test_a_click_inside_a_demo_shape_returns_that_shape(shape, tmp_path):
    truth = demo_shapes()[shape]
    ys, xs = np.nonzero(truth)
    out = tmp_path / "mask.png"
    point = f"{int(xs.mean())},{int(ys.mean())}"
    assert main(["segment", str(DEMO_IMAGE), "--point", point, "-o", str(out)]) == 0
    mask = cv2.imread(str(out), cv2.IMREAD_UNCHANGED) > 0
    assert mask_iou(mask, truth) >= 0.8


@pytest.mark.parametrize("filters", [[], ["--pred-iou-thresh", "0.88", "--stability-score-thresh", "0.95"]],
                         ids=["calibrated-filters", "sam-filters"])
def test_everything_on_the_demo_image_finds_both_shapes(tmp_path, filters):
    # The README's first command: the demo checkpoint (no --checkpoint, no --random-weights) with the
    # filters calibrated into it; and with SAM's own (predicted IoU 0.88, stability 0.95), which both shapes pass as
    # well: the demo model gives them predicted IoU 0.965 / 0.913 and stability 0.983 / 0.981 (README,
    # "Training").
    assert main(["everything", str(DEMO_IMAGE), "-o", str(tmp_path), *filters]) == 0
    document = json.loads((tmp_path / "demo.json").read_text())
    assert "synthetic shapes" in document["note"]
    masks = [coco_rle_to_mask(a["segmentation"]) for a in document["annotations"]]
    assert len(masks) == 2
    for name, truth in demo_shapes().items():
        assert max(mask_iou(m, truth) for m in masks) >= 0.8, name
    assert (tmp_path / "demo_overlay.png").is_file()


def test_everything_without_filter_flags_applies_the_checkpoint_filters_and_the_flags_apply_sams(tmp_path):
    # The demo checkpoint (litesam_tiny) on four of the synthetic scenes its filters were calibrated on (seed
    # 2): without flags the JSON records the filters calibrated into the file (0.70 / 0.70, proposal score
    # 0.5) and keeps masks below SAM's bar; with SAM's pair (0.88 / 0.95) it records that pair and keeps fewer
    # masks, all above it.
    images = []
    for index in range(4):
        images.append(tmp_path / f"scene{index}.png")
        Image.fromarray(render_scene(2, index)[0]).save(images[-1])
    sam_flags = ["--pred-iou-thresh", "0.88", "--stability-score-thresh", "0.95"]
    kept = {}
    for name, flags, (iou, stability) in [("calibrated", [], (0.70, 0.70)), ("sam", sam_flags, (0.88, 0.95))]:
        assert main(["everything", *map(str, images), "-o", str(tmp_path / name), "--no-overlay", *flags]) == 0
        kept[name] = []
        for image in images:
            document = json.loads((tmp_path / name / f"{image.stem}.json").read_text())
            used = document["segevery"]
            assert (used["pred_iou_thresh"], used["stability_score_thresh"]) == (iou, stability)
            assert used["proposals"]["score_threshold"] == 0.5  # the calibrated one: no flag sets it
            kept[name] += document["annotations"]
        assert all(a["predicted_iou"] >= iou and a["stability_score"] >= stability for a in kept[name])
    assert any(a["predicted_iou"] < 0.88 or a["stability_score"] < 0.95 for a in kept["calibrated"])
    assert len(kept["sam"]) < len(kept["calibrated"])


def test_random_weights_say_so(files, capsys):
    code = main(
        ["segment", str(files["first"]), "--point", "3,3", "-o", str(files["root"] / "r.png"),
         "--random-weights", "--variant", "litesam_tiny"]
    )
    assert code == 0
    assert "random weights" in capsys.readouterr().err


def test_everything_writes_coco_json_and_overlays(files, capsys):
    out = files["root"] / "everything"
    code = main(
        ["everything", str(files["first"]), str(files["second"]), "-o", str(out),
         "--checkpoint", str(files["checkpoint"]), "--proposal-threshold", "0",
         "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    )
    assert code == 0
    for name, (h, w) in (("first", (70, 110)), ("second", (96, 64))):
        document = json.loads((out / f"{name}.json").read_text())
        assert document["annotations"]
        assert document["images"][0]["height"] == h and document["images"][0]["width"] == w
        for annotation in document["annotations"]:
            assert annotation["segmentation"]["size"] == [h, w]
        overlay = cv2.imread(str(out / f"{name}_overlay.png"))
        assert overlay.shape == (h, w, 3)
    assert "segment everything" in capsys.readouterr().err  # the progress bar


def test_everything_proposal_options_bound_the_masks(files):
    out = files["root"] / "bounded"
    code = main(
        ["everything", str(files["first"]), "-o", str(out), "--checkpoint", str(files["checkpoint"]),
         "--proposal-threshold", "0", "--top-k", "3", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
         "--box-nms-thresh", "1", "--no-overlay"]
    )
    assert code == 0
    document = json.loads((out / "first.json").read_text())
    assert 1 <= len(document["annotations"]) <= 3
    assert not (out / "first_overlay.png").exists()


def test_unreadable_image_is_reported_and_fails_the_run(files, capsys):
    broken = files["root"] / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    code = main(["everything", str(broken), "-o", str(files["root"] / "e2"), "--checkpoint", str(files["checkpoint"])])
    assert code == 1
    assert "not a readable image" in capsys.readouterr().err


def test_bad_point_syntax_is_an_argument_error(files):
    with pytest.raises(SystemExit):
        main(["segment", str(files["first"]), "--point", "1;2", "-o", "x.png"])


def test_info_json_is_machine_readable():
    completed = subprocess.run(
        [sys.executable, "-m", "litesam.cli", "info", "--json", "--variant", "litesam_tiny", "--resolutions", "256"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    report = json.loads(completed.stdout)
    assert report["variant"] == "litesam_tiny"
    assert report["components"]


@pytest.mark.parametrize("option", [["--top-k", "-1"], ["--points-per-side", "0", "--prompt-mode", "grid"], ["--proposal-threshold", "2"]])
def test_out_of_range_settings_are_clear_errors(files, capsys, option):
    code = main(["everything", str(files["first"]), "-o", str(files["root"] / "bad"), "--checkpoint", str(files["checkpoint"]), *option])
    assert code == 2
    assert "litesam: error:" in capsys.readouterr().err
