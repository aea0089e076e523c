import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from litesam.build import save_checkpoint
from litesam.cli import main
from tests.tiny import synthetic_image, tiny_model


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


def test_commands_refuse_to_run_without_weights(files, capsys):
    code = main(["segment", str(files["first"]), "--point", "3,3", "-o", str(files["root"] / "m.png")])
    assert code == 2
    assert "no weights" in capsys.readouterr().err


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
