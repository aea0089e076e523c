"""End to end: fine-tuning on a real Label Studio 1.23.2 project's annotations (``--data labelstudio``).

The project (tests/e2e/finetune_support.py): synthetic scenes of another look than the demo checkpoint's
training scenes, one uploaded as an EXIF-rotated JPEG, each annotated through the API with brush, polygon and
rectangle regions made from its exact instance masks; plus a task without annotation, one whose only
annotation was cancelled, one with an empty annotation, and a task whose latest annotation is a cancelled one.

Checked: the records read through the backend's client and fetcher (a personal access token, as a user gives
it) equal the annotations, masks at the natural, EXIF-transposed size; the split rule holds; and ``litesam
train`` from the proof-trained ``litesam_tiny`` on the project's train tasks, then ``litesam eval`` on its
held-out tasks, run through ``litesam.cli.main`` as a user runs them (key from ``LABEL_STUDIO_API_KEY``, never
printed): a few steps change the weights with a finite loss. That a short fine-tune *raises* held-out mIoU
is measured by ``bench/finetune_ls_proof.py`` (README, "Fine-tune on your project"): 150 steps take about 8
minutes on this shared 2-core machine, too long for the suite. The starting checkpoint:
``LITESAM_FINETUNE_CHECKPOINT``, else the shipped demo checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.settings import Secret, Settings
from backend.training_data import project_records
from litesam.build import build_model
from litesam.cli import DEMO_CHECKPOINT, main
from tests.backend_support import png_bytes
from tests.e2e.finetune_support import build_project

#: Scenes in the project: 30 consecutive task ids hold 6 multiples of 5, the held-out tasks.
SCENES = 30
#: Fine-tuning run: steps × batch, at the CLI's other defaults except a fine-tuning LR.
STEPS, BATCH, LR = 4, 2, "1e-3"


@pytest.fixture(scope="module")
def project(label_studio):
    project, expected = build_project(label_studio, SCENES)
    ls = label_studio.client()
    first = min(expected)
    ls.annotations.create(id=first, result=[], was_cancelled=True)  # the latest, but skipped: not chosen
    extra = label_studio.upload_images(project, [(f"extra{i}.png", png_bytes(64, 48, seed=i)) for i in range(3)])
    ls.annotations.create(id=extra[1], result=[], was_cancelled=True)  # only a cancelled annotation
    ls.annotations.create(id=extra[2], result=[])  # an empty annotation
    return project, expected


@pytest.fixture
def settings(label_studio, tmp_path) -> Settings:
    return Settings(
        label_studio_url=label_studio.url, label_studio_api_key=Secret(label_studio.pat), cache_dir=tmp_path
    )


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.e2e
def test_project_reads_back_as_its_annotations(label_studio, project, settings):
    project_id, expected = project
    records = project_records(None, project_id, "all", settings=settings)
    assert [r.image_id for r in records] == sorted(expected)  # the three extra tasks are left out
    kinds = set()
    for record in records:
        want = expected[record.image_id]
        image = record.image()
        assert (record.height, record.width) == image.shape[:2] == want.image.shape[:2]
        assert np.abs(image.astype(int) - want.image).mean() < 3  # PNG exact; the EXIF JPEG shown upright
        masks = list(record.instance_masks())
        assert len(masks) == len(want.masks)
        mask_kinds = [k for k in want.kinds if k != "rectangle"]
        for got, wanted, kind in zip(masks, want.masks, mask_kinds, strict=True):
            assert got.shape == wanted.shape
            if kind == "brush":
                assert np.array_equal(got, wanted)
            else:
                assert iou(got, wanted) >= 0.98, (record.image_id, kind)
            kinds.add(kind)
        boxes = list(record.box_masks())
        assert len(boxes) == len(want.boxes)
        for got, wanted in zip(boxes, want.boxes, strict=True):
            assert np.array_equal(got, wanted)
            kinds.add("rectangle")
    assert kinds == {"brush", "polygon", "rectangle"}
    exif_task = sorted(expected)[1]
    exif_record = next(r for r in records if r.image_id == exif_task)
    assert exif_record.path.read_bytes()[:2] == b"\xff\xd8"  # the JPEG, stored turned, read upright above

    held_out = project_records(None, project_id, "held-out", settings=settings)
    train = project_records(None, project_id, "train", settings=settings)
    assert all(r.image_id % 5 == 0 for r in held_out) and len(held_out) == SCENES // 5
    assert sorted(r.image_id for r in held_out + train) == sorted(expected)


@pytest.mark.e2e
def test_fine_tune_on_the_project_trains_and_evaluates_through_the_cli(
    label_studio, project, tmp_path, monkeypatch, capsys
):
    project_id, _ = project
    checkpoint = Path(os.environ.get("LITESAM_FINETUNE_CHECKPOINT") or DEMO_CHECKPOINT)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.pat)
    monkeypatch.setenv("LITESAM_CACHE_DIR", str(tmp_path / "cache"))
    source = ["--data", "labelstudio", "--ls-url", label_studio.url, "--ls-project", str(project_id)]

    def held_out(weights: Path, name: str) -> dict:
        report = tmp_path / f"{name}.json"
        assert main(["eval", "--checkpoint", str(weights), *source, "--prompts", "box", "-o", str(report)]) == 0
        return json.loads(report.read_text())

    before = held_out(checkpoint, "before")
    assert before["images"] == SCENES // 5 and before["masks"] >= SCENES // 5
    argv = ["train", *source, "--variant", "litesam_tiny", "--init-checkpoint", str(checkpoint)]
    argv += ["--max-steps", str(STEPS), "--batch-size", str(BATCH), "--lr", LR, "--workers", "0"]
    assert main([*argv, "-o", str(tmp_path / "run")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == STEPS and np.isfinite(summary["losses"]["loss"])
    start, tuned = build_model(checkpoint=checkpoint), build_model(checkpoint=tmp_path / "run" / "last.pt")
    changed = [
        name
        for name, value in tuned.state_dict().items()
        if value.is_floating_point() and not torch.equal(value, start.state_dict()[name])
    ]
    assert any(n.startswith("mask_decoder.") for n in changed) and any(n.startswith("image_encoder.") for n in changed)
    after = held_out(tmp_path / "run" / "last.pt", "after")
    assert (after["images"], after["masks"]) == (before["images"], before["masks"])
    assert 0.0 < after["box"]["miou"] <= 1.0
    assert label_studio.pat not in capsys.readouterr().err  # the key is never printed


@pytest.mark.e2e
def test_calibrate_on_the_project_writes_filters_measured_on_its_annotations(label_studio, project, tmp_path,
                                                                             monkeypatch, capsys):
    # ``litesam calibrate --data labelstudio``: the project's brush and polygon masks are the instances, its
    # rectangles box-only areas that are ignored (a mask on one is neither right nor wrong); by default on the
    # train tasks only.
    project_id, expected = project
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.pat)
    monkeypatch.setenv("LITESAM_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "calibrated.pt"
    argv = ["calibrate", "--checkpoint", str(DEMO_CHECKPOINT), "--data", "labelstudio", "--ls-url", label_studio.url,
            "--ls-project", str(project_id), "--min-precision", "0.5", "-o", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    train_tasks = [task for task in expected if task % 5]  # the default split: never eval's held-out tasks
    assert report["calibration"]["scenes"] >= len(train_tasks) and report["calibration"]["scenes"] < SCENES
    assert report["calibration"]["truth"] == f"annotations of labelstudio (project {project_id}, train tasks)"
    assert report["calibration"]["recall"] > 0 and any(row["ignored"] > 0 for row in report["table"])
    assert build_model(checkpoint=out).segevery_filters == report["chosen"]
    assert label_studio.pat not in captured.out + captured.err  # the key is never printed
