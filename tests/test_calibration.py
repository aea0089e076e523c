"""Calibrated SegEvery filters (litesam.eval.calibration, ``litesam calibrate``) and how a checkpoint carries
them (litesam.build.write_calibrated_filters): the rule, its agreement with SegEvery and the recall metric, the
refusals, and the resolution order explicit > checkpoint's > SAM's.

The demo checkpoint (litesam_tiny trained on synthetic shapes) is the model that segments; the calibration
scenes are synthetic scenes of seed 2 (its filters were calibrated on 60 of them).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from litesam.build import (
    FILTERS_KEY,
    build_model,
    checkpoint_variant,
    save_checkpoint,
    write_calibrated_filters,
)
from litesam.cli import DEMO_CHECKPOINT, main
from litesam.errors import CheckpointError, LiteSamError
from litesam.eval.calibration import (
    PRED_IOU_GRID,
    PROPOSAL_SCORE_GRID,
    STABILITY_GRID,
    annotated_scenes,
    Candidates,
    calibrate,
    teacher_scenes,
)
from litesam.eval.recall import segevery_recall
from litesam.everything import SegEvery, SegEveryConfig
from litesam.train.synthetic import render_scene, synthetic_records
from tests.engine_support import save_official, tiny_vit_sam


@pytest.fixture(scope="module")
def demo():
    return build_model(checkpoint=DEMO_CHECKPOINT)


def _thresholds(row) -> tuple:
    return row.pred_iou_thresh, row.stability_score_thresh, row.proposal_score_thresh


def test_the_chosen_setting_has_the_highest_recall_among_those_precise_enough(demo):
    records = synthetic_records(8, seed=2)
    result = calibrate(demo, annotated_scenes(records), min_precision=0.95)
    assert [_thresholds(r) for r in result.table] == [
        (p, s, q) for p in PRED_IOU_GRID for s in STABILITY_GRID for q in PROPOSAL_SCORE_GRID
    ]
    eligible = [r for r in result.table if r.precision >= 0.95]
    best = max(r.recall for r in eligible)
    assert result.chosen.recall == best > 0 and result.chosen.precision >= 0.95
    ties = [r for r in eligible if r.recall == best]
    order = lambda r: (r.precision, r.proposal_score_thresh, r.pred_iou_thresh, r.stability_score_thresh)  # noqa: E731
    assert all(order(result.chosen) >= order(r) for r in ties)  # the more precise, then the higher thresholds
    # The open filters keep more masks than SAM's and never recover fewer instances; a higher proposal
    # threshold keeps a subset, so never more masks.
    by_setting = {_thresholds(r): r for r in result.table}
    assert by_setting[(0.5, 0.7, 0.3)].masks >= by_setting[(0.88, 0.95, 0.3)].masks
    assert by_setting[(0.5, 0.7, 0.3)].recall >= by_setting[(0.88, 0.95, 0.3)].recall
    assert by_setting[(0.5, 0.7, 0.3)].masks > by_setting[(0.5, 0.7, 0.8)].masks
    assert "proposal_score_thresh" in result.chosen.filters
    # The chosen row is what SegEvery with those filters scores (litesam.eval.recall, its own pass).
    config = SegEveryConfig.for_model(demo, **result.chosen.filters)
    measured = segevery_recall(demo, records, config=config)
    assert measured["recall"] == pytest.approx(result.chosen.recall)
    assert measured["precision"] == pytest.approx(result.chosen.precision)
    assert measured["masks"] == result.chosen.masks
    record = result.record("annotations of synthetic (seed 2)")
    assert record["scenes"] == 8 and record["recall"] == round(result.chosen.recall, 4)
    assert record["prompts"] == "AutoPPN"


def test_filters_applied_afterwards_keep_what_segevery_keeps(demo):
    opened = SegEveryConfig.for_model(demo, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                      proposal_score_thresh=0.3, box_nms_thresh=1.0)
    compared = {0.3: 0, 0.6: 0}
    for index in range(3):
        image = render_scene(2, index)[0]
        batches = list(SegEvery(demo, opened).candidates(image))
        records = [record for batch in batches for record in batch]
        candidates = Candidates.of(batches, [], [])
        for pred_iou, stability, proposal in [(0.8, 0.85, 0.3), (0.88, 0.95, 0.3), (0.5, 0.7, 0.3), (0.5, 0.7, 0.6)]:
            kept = [records[i] for i in candidates.kept(pred_iou, stability, 0.7, proposal)]
            direct = SegEvery(demo, SegEveryConfig.for_model(
                demo, pred_iou_thresh=pred_iou, stability_score_thresh=stability, proposal_score_thresh=proposal
            )).generate(image)
            assert sorted(r["bbox"] for r in kept) == sorted(r["bbox"] for r in direct)
            assert all(r["proposal_score"] >= proposal for r in kept)
            compared[proposal] += len(direct)
    assert compared[0.3] > compared[0.6] > 0  # the proposal filter left some masks out, not all


def test_candidates_come_in_prompt_batches_and_are_what_segevery_finds_with_open_filters(demo):
    # Calibration matches one prompt batch of masks at a time: the batches together are SegEvery's records
    # with the filters open and NMS off, none left out, none twice.
    opened = SegEveryConfig.for_model(
        demo, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0, points_per_batch=2
    )
    image = render_scene(2, 1)[0]
    batches = list(SegEvery(demo, opened).candidates(image))
    assert len(batches) > 1 and all(len(batch) <= 2 for batch in batches)
    streamed = sorted((r["bbox"], r["predicted_iou"], r["stability_score"]) for batch in batches for r in batch)
    whole = SegEvery(demo, opened).generate(image)
    assert streamed == sorted((r["bbox"], r["predicted_iou"], r["stability_score"]) for r in whole)


#: Peak-memory probe of calibration's candidates for an engine at SAM's 32×32 grid, in a fresh process: one
#: 640×480 image, 3 masks a point (3,072 candidates; all of them at once were ~2.7 GB more, measured).
GRID_MEMORY_PROBE = """
import json, resource, sys
import numpy as np, torch
from litesam.build import build_model
from litesam.eval.calibration import Candidates
from litesam.everything import SegEvery, SegEveryConfig
torch.set_num_threads(1)
model = build_model("sam_vit_tiny", checkpoint=sys.argv[1])
image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
truth = np.zeros((480, 640), dtype=bool)
truth[100:200, 100:300] = True
opened = SegEveryConfig.for_model(model, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
candidates = Candidates.of(SegEvery(model, opened).candidates(image), [truth.reshape(-1)], [])
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"candidates": len(candidates.predicted_iou), "grown_mib": grown / 1024}))
"""


def test_an_engine_grid_is_calibrated_one_prompt_batch_of_masks_at_a_time(tmp_path):
    checkpoint = save_official(tiny_vit_sam(), tmp_path / "sam_vit_tiny.pth")
    run = subprocess.run([sys.executable, "-c", GRID_MEMORY_PROBE, str(checkpoint)], capture_output=True, text=True,
                         timeout=300, check=True)
    probe = json.loads(run.stdout.strip().splitlines()[-1])
    # ≥ 2,500 full-size masks (≥ 0.77 GB as bool arrays) were matched; memory grew by a few batches' worth.
    assert probe["candidates"] >= 2500
    assert probe["grown_mib"] < 500, probe


def test_calibration_refuses_scenes_without_instances_and_weights_that_segment_nothing(demo):
    image = render_scene(2, 0)[0]
    with pytest.raises(LiteSamError, match="no instance"):
        calibrate(demo, [(image, [], [])])
    with pytest.raises(ValueError, match="min_precision"):
        calibrate(demo, [(image, [], [])], min_precision=1.5)
    torch.manual_seed(0)
    untrained = build_model("litesam_tiny")
    with pytest.raises(LiteSamError, match="recovers any instance"):  # its few masks keep nothing right
        calibrate(untrained, annotated_scenes(synthetic_records(3, seed=2)))
    scenes = []
    for index in range(3):
        scene = render_scene(2, index)[0]
        wrong = np.zeros(scene.shape[0] * scene.shape[1], dtype=bool)
        wrong[0] = True  # an instance no mask matches: every pair's kept masks are all wrong
        scenes.append((scene, [wrong], []))
    with pytest.raises(LiteSamError, match="no filter setting keeps ≥ 0.95"):
        calibrate(demo, scenes)


def test_a_teacher_calibrates_itself_to_full_recall(demo):
    # Label-free: the teacher's own SegEvery masks are the instances. The teacher as its own student keeps
    # exactly them with the filters that made them (the checkpoint's), so that setting scores 1 / 1.
    images = [render_scene(2, index)[0] for index in range(4)]
    result = calibrate(demo, teacher_scenes(demo, images))
    config = SegEveryConfig.for_model(demo)
    own = next(r for r in result.table if _thresholds(r) == (
        config.pred_iou_thresh, config.stability_score_thresh, config.proposals.score_threshold))
    assert own.instances > 0 and (own.recall, own.precision, own.masks) == (1.0, 1.0, own.instances)
    assert (result.chosen.recall, result.chosen.precision) == (1.0, 1.0)


def test_our_checkpoint_keeps_its_contents_and_gains_filters(tmp_path):
    record = {"rule": "test", "scenes": 1}
    out = write_calibrated_filters(DEMO_CHECKPOINT, tmp_path / "c.pt", {"pred_iou_thresh": 0.7,
                                   "stability_score_thresh": 0.75}, record)
    source = torch.load(DEMO_CHECKPOINT, weights_only=False)
    written = torch.load(out, weights_only=False)
    assert {k: v for k, v in written.items() if k not in ("state_dict", FILTERS_KEY)} == {
        k: v for k, v in source.items() if k not in ("state_dict", FILTERS_KEY)
    }
    assert all(torch.equal(written["state_dict"][k], v) for k, v in source["state_dict"].items())
    assert written[FILTERS_KEY] == {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.75, "calibration": record}
    model = build_model(checkpoint=out)
    assert model.segevery_filters == {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.75}
    # In place (output = input) replaces the filters; nothing is left beside the file.
    write_calibrated_filters(out, out, {"pred_iou_thresh": 0.6, "stability_score_thresh": 0.9}, record)
    assert build_model(checkpoint=out).segevery_filters == {"pred_iou_thresh": 0.6, "stability_score_thresh": 0.9}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    # Weights saved after training are new weights: no filters travel with them.
    save_checkpoint(model, tmp_path / "trained.pt", "litesam_tiny")
    assert build_model(checkpoint=tmp_path / "trained.pt").segevery_filters is None


def test_a_calibrated_proposal_threshold_is_used_and_does_not_narrow_a_later_calibration(demo, tmp_path):
    filters = {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.75, "proposal_score_thresh": 0.8}
    out = write_calibrated_filters(DEMO_CHECKPOINT, tmp_path / "c.pt", filters, {"rule": "test"})
    model = build_model(checkpoint=out)
    assert model.segevery_filters == filters
    assert SegEvery(model).config.proposals.score_threshold == 0.8
    assert SegEvery(model, proposal_score_thresh=0.4).config.proposals.score_threshold == 0.4  # explicit wins
    # Calibration scores the grid from the variant's 0.3 up, whatever the checkpoint carries.
    scenes = list(annotated_scenes(synthetic_records(3, seed=2)))
    narrowed, plain = calibrate(model, scenes, min_precision=0.5), calibrate(demo, scenes, min_precision=0.5)
    assert [(_thresholds(r), r.masks, r.recall) for r in narrowed.table] == [
        (_thresholds(r), r.masks, r.recall) for r in plain.table
    ]


def test_grid_prompts_have_no_proposal_filter():
    from litesam.eval.calibration import FilterScore

    grid = FilterScore(0.8, 0.9, None, 0.5, 1.0, 3, 6, 0)
    assert grid.filters == {"pred_iou_thresh": 0.8, "stability_score_thresh": 0.9}
    assert grid.describe() == "predicted IoU ≥ 0.8, stability ≥ 0.9"


def test_an_official_file_becomes_ours_with_its_filters(tmp_path):
    official = save_official(tiny_vit_sam(seed=3), tmp_path / "sam_vit_tiny.pth")
    assert build_model(checkpoint=official).segevery_filters is None
    out = write_calibrated_filters(official, tmp_path / "calibrated.pt",
                                   {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.8}, {"rule": "test"})
    assert checkpoint_variant(out) == "sam_vit_tiny"
    before, after = build_model(checkpoint=official), build_model(checkpoint=out)
    assert after.segevery_filters == {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.8}
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
    config = SegEvery(after).config
    assert (config.prompt_mode, config.pred_iou_thresh, config.stability_score_thresh) == ("grid", 0.5, 0.8)  # no AutoPPN head: the grid


def test_a_failed_write_is_a_clear_error_and_leaves_the_old_file(tmp_path):
    target = tmp_path / "c.pt"
    write_calibrated_filters(DEMO_CHECKPOINT, target, {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.8}, {})
    before = target.read_bytes()
    (tmp_path / "c.pt.partial").mkdir()  # the temporary file cannot be written
    with pytest.raises(CheckpointError, match="cannot write"):
        write_calibrated_filters(DEMO_CHECKPOINT, target, {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.5}, {})
    assert target.read_bytes() == before
    with pytest.raises(CheckpointError, match="cannot write"):  # the output is a folder
        write_calibrated_filters(DEMO_CHECKPOINT, tmp_path, {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.5}, {})


@pytest.mark.parametrize("bad", [{"pred_iou_thresh": 1.5, "stability_score_thresh": 0.9},
                                 {"pred_iou_thresh": 0.8},
                                 {"pred_iou_thresh": True, "stability_score_thresh": 0.9},
                                 {"pred_iou_thresh": float("nan"), "stability_score_thresh": 0.9},
                                 {"pred_iou_thresh": 0.8, "stability_score_thresh": 0.9, "proposal_score_thresh": 1.2},
                                 {"pred_iou_thresh": 0.8, "stability_score_thresh": 0.9, "proposal_score_thresh": None}])
def test_filters_out_of_range_are_refused_on_write_and_on_load(tmp_path, bad):
    with pytest.raises(CheckpointError, match="must be a number in"):
        write_calibrated_filters(DEMO_CHECKPOINT, tmp_path / "c.pt", bad, {})
    assert not any(tmp_path.iterdir())
    contents = torch.load(DEMO_CHECKPOINT, weights_only=False)
    torch.save({**contents, FILTERS_KEY: bad}, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match=FILTERS_KEY):
        build_model(checkpoint=tmp_path / "tampered.pt")


def test_calibrate_command_writes_filters_that_everything_then_uses(tmp_path, capsys):
    out = tmp_path / "calibrated.pt"
    args = ["calibrate", "--checkpoint", str(DEMO_CHECKPOINT), "--synthetic-images", "6", "--min-precision", "0.9"]
    assert main(args) == 0  # without -o nothing is written
    report = json.loads(capsys.readouterr().out)
    assert "written" not in report and not out.exists()
    assert main([*args, "-o", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    chosen = report["chosen"]
    assert report["written"] == str(out)
    assert len(report["table"]) == len(PRED_IOU_GRID) * len(STABILITY_GRID) * len(PROPOSAL_SCORE_GRID)
    assert report["calibration"]["truth"] == "annotations of synthetic (seed 2)" and report["calibration"]["scenes"] == 6
    assert build_model(checkpoint=out).segevery_filters == chosen
    image = tmp_path / "scene.png"
    Image.fromarray(render_scene(2, 0)[0]).save(image)
    assert main(["everything", str(image), "--checkpoint", str(out), "-o", str(tmp_path / "ev"), "--no-overlay"]) == 0
    used = json.loads((tmp_path / "ev" / "scene.json").read_text())["segevery"]
    assert used["pred_iou_thresh"] == chosen["pred_iou_thresh"]
    assert used["stability_score_thresh"] == chosen["stability_score_thresh"]
    assert used["proposals"]["score_threshold"] == chosen["proposal_score_thresh"]


def test_calibrate_command_with_a_teacher_needs_no_labels(tmp_path, capsys):
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(render_scene(2, index)[0]).save(folder / f"{index}.png")
    assert main(["calibrate", "--checkpoint", str(DEMO_CHECKPOINT), "--teacher", str(DEMO_CHECKPOINT),
                 "--data", str(folder)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["calibration"]["truth"].startswith("SegEvery masks of teacher litesam_tiny_synthetic.pt")
    assert report["calibration"]["scenes"] == 3 and report["calibration"]["recall"] == 1.0


def test_calibrate_command_refuses_bad_arguments_with_a_clear_message(tmp_path, capsys):
    demo = str(DEMO_CHECKPOINT)
    assert main(["calibrate", "--checkpoint", demo, "--teacher", demo, "--data", "labelstudio"]) != 0
    err = capsys.readouterr().err
    assert "against its annotations" in err and "Traceback" not in err
    for flag in ("--min-precision", "--box-nms-thresh"):
        with pytest.raises(SystemExit):  # argparse: usage and the reason, exit status 2
            main(["calibrate", "--checkpoint", demo, flag, "2"])
        assert "expected a number from 0 to 1, got 2.0" in capsys.readouterr().err
    assert main(["calibrate", "--checkpoint", demo, "-o", str(tmp_path)]) != 0  # a folder, refused at once
    assert "is a folder" in capsys.readouterr().err


def test_masks_inside_ignored_areas_are_neither_right_nor_wrong():
    from litesam.eval.recall import match_counts, match_matrices

    def square(y, x, side=20):
        mask = np.zeros((64, 64), dtype=bool)
        mask[y : y + side, x : x + side] = True
        return mask.reshape(-1)

    instance, boxed = square(2, 2), square(40, 40)
    predicted = [square(3, 3), square(41, 41), square(2, 40)]  # matches the instance, the box, nothing
    assert match_counts(*match_matrices(predicted, [instance], [boxed])) == (1, 1, 1)
    assert match_counts(*match_matrices(predicted, [instance], [])) == (1, 1, 0)  # without the box: wrong
    assert match_counts(*match_matrices(predicted, [], [boxed])) == (0, 0, 1)
    assert match_counts(*match_matrices([], [instance], [boxed])) == (0, 0, 0)
    # COCO's crowd rule: a part inside the area (IoU with it 0.16) and a mask half inside are ignored, a mask
    # mostly outside (400 of its 900 px inside) is wrong
    part, half_in, spilling = square(44, 44, side=8), square(40, 30), square(30, 30, side=30)
    assert match_counts(*match_matrices([part, half_in, spilling], [instance], [boxed])) == (0, 0, 2)
    assert match_counts(*match_matrices([spilling], [], [boxed])) == (0, 0, 0)


def test_coco_crowd_regions_are_ignored_areas(tmp_path):
    from litesam.eval.recall import instances_and_ignored, match_counts, match_matrices
    from litesam.eval.segany import load_eval_records
    from tests.coco_support import write_synthetic_coco

    annotation_file, image_dir, _ = write_synthetic_coco(tmp_path)
    records = load_eval_records(annotation_file, image_dir)
    truths, areas = instances_and_ignored(records[0])
    assert len(truths) == 3 and len(areas) == 1 and areas[0].sum() == 400  # the 20×20 crowd region
    on_crowd = areas[0].copy()
    assert match_counts(*match_matrices([on_crowd], truths, areas)) == (0, 0, 1)
    assert all(not instances_and_ignored(r)[1] for r in records[1:])


class _OneInstanceAsABox:
    """A synthetic record whose first instance is known only as its filled box (as a Label Studio rectangle)."""

    def __init__(self, record):
        self.record = record
        self.masks = [m for m in record.instance_masks() if m.any()]

    def image(self):
        return self.record.image()

    def instance_masks(self):
        return iter(self.masks[1:])

    def box_masks(self):
        ys, xs = np.nonzero(self.masks[0])
        area = np.zeros_like(self.masks[0])
        area[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
        yield area


def test_recall_and_calibration_leave_box_only_instances_out_alike(demo):
    records = synthetic_records(6, seed=2)
    boxed = [_OneInstanceAsABox(r) for r in records]
    full, partial = segevery_recall(demo, records), segevery_recall(demo, boxed)
    assert partial["instances"] == full["instances"] - len(records) and partial["masks"] == full["masks"]
    assert partial["ignored"] > 0 and partial["correct"] + partial["ignored"] <= full["correct"]
    chosen = calibrate(demo, annotated_scenes(boxed), min_precision=0.9).chosen
    measured = segevery_recall(demo, boxed, config=SegEveryConfig.for_model(demo, **chosen.filters))
    assert (chosen.ignored, chosen.masks) == (measured["ignored"], measured["masks"])
    assert measured["precision"] == pytest.approx(chosen.precision)



def test_an_engine_runs_on_the_grid_it_is_given(tmp_path, capsys):
    # An official file (random weights: no mask is right) on a 2×2 grid, three small scenes: the grid path
    # runs and ends in the clear refusal, not a traceback.
    official = save_official(tiny_vit_sam(seed=3), tmp_path / "sam_vit_tiny.pth")
    code = main(["calibrate", "--checkpoint", str(official), "--points-per-side", "2", "--synthetic-images", "3"])
    err = capsys.readouterr().err
    assert code != 0 and "no filter setting" in err and "Traceback" not in err


def test_the_command_default_seed_is_the_calibration_seed():
    from litesam.eval.calibrate_cli import _CALIBRATION_SEED
    from litesam.train.synthetic import CALIBRATION_SEED, HELD_OUT_SEED, TRAIN_SEED

    assert _CALIBRATION_SEED == CALIBRATION_SEED and CALIBRATION_SEED not in (TRAIN_SEED, HELD_OUT_SEED)
