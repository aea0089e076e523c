"""End to end: rectangles (and keypoints) → masks for whole projects (``mode: boxes`` / ``points``,
backend.jobs.prompted) by real worker processes against a real Label Studio 1.23.2 and a real Redis, with the
tiny RANDOM-weight checkpoint.

Random weights: the masks are meaningless; what is checked is the plumbing: one prediction per task with one
mask per rectangle, each labelled as its rectangle, at the image's natural size; re-runs add nothing; a killed
worker loses and duplicates nothing; a bad rectangle fails only itself, a label the brush tag lacks fails its
task (named) with nothing written.
"""

from __future__ import annotations

import os
import signal

import pytest

from backend.jobs.board import JobBoard
from backend.jobs.options import JobOptions
from tests.backend_support import decode_brush, keypoint, png_bytes, rectangle
from tests.e2e.test_preannotate_e2e import ours, predictions_by_task, run_preannotate, wait_job, workers  # noqa: F401
from tests.jobs_support import wait_for

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image">
    <Label value="Object"/><Label value="Person"/><Label value="Vehicle"/>
  </BrushLabels>
  <RectangleLabels name="box" toName="image">
    <Label value="Object"/><Label value="Person"/><Label value="Vehicle"/><Label value="Cat"/>
  </RectangleLabels>
</View>"""
LABELS = ("Object", "Person", "Vehicle")


def box(i: int, k: int, width: int, height: int, label: str, changes: dict | None = None) -> dict:
    """Rectangle ``k`` of task ``i`` (the third one rotated), with ``changes`` to its value."""
    region = rectangle(10 + 25 * k, 15, 20, 30 + 10 * k, width, height, label=label, rotation=15 * (k == 2))
    region["id"] = f"t{i}r{k}"
    region["value"].update(changes or {})
    return region


def boxed_project(label_studio, count: int) -> tuple[int, dict[int, list[dict]], dict[int, tuple[int, int]]]:
    """A project of ``count`` tasks, each annotated with 1–3 rectangles (one rotated), plus one task without
    annotations; returns (project, task → rectangles, task → natural (height, width))."""
    project = label_studio.create_project(CONFIG, title="litesam boxes e2e")
    sizes = [(60 + 7 * i, 80 + 9 * i) for i in range(count + 1)]
    files = [(f"b{i:02d}.png", png_bytes(w, h, seed=i)) for i, (h, w) in enumerate(sizes)]
    task_ids = label_studio.upload_images(project, files)
    ls = label_studio.client()
    rectangles = {}
    for i, task in enumerate(task_ids[:count]):
        height, width = sizes[i]
        regions = [box(i, k, width, height, LABELS[(i + k) % 3]) for k in range(1 + i % 3)]
        ls.annotations.create(id=task, result=regions)
        rectangles[task] = regions
    return project, rectangles, dict(zip(task_ids, sizes, strict=True))


def check_masks(prediction: dict, regions: list[dict], size: tuple[int, int]) -> None:
    assert len(prediction["result"]) == len(regions)
    for mask_region, rect in zip(prediction["result"], regions, strict=True):
        assert mask_region["type"] == "brushlabels" and mask_region["from_name"] == "mask"
        assert mask_region["value"]["brushlabels"] == rect["value"]["rectanglelabels"]
        assert decode_brush(mask_region).shape == size


@pytest.mark.e2e
def test_every_rectangle_of_a_project_becomes_one_mask_and_a_rerun_adds_nothing(
    label_studio, workers, redis_db  # noqa: F811
):
    project, rectangles, sizes = boxed_project(label_studio, 10)
    workers.start("boxer")
    done = run_preannotate(["--project", str(project), "--mode", "boxes", "--wait"], workers.env)
    board = JobBoard(redis_db)
    status = board.status(done.stdout.strip())
    assert done.returncode == 0, (done.stderr, status, workers.logs())
    assert (status["mode"], status["total"], status["done"], status["failed"]) == ("boxes", 11, 10, 0)
    assert (status["skipped"], status["no_prompts"]) == (1, 1)
    version = status["model_version"]
    assert version.endswith("-boxes") and status["output"] == "brush"
    assert status["regions"] == sum(len(r) for r in rectangles.values())
    assert "each labelled as its rectangle" in done.stderr
    by_task = predictions_by_task(label_studio, sizes)
    for task, predictions in by_task.items():
        if task not in rectangles:
            assert predictions == []
            continue
        (mine,) = ours(predictions, version)
        check_masks(mine, rectangles[task], sizes[task])
    first = {task: [p["id"] for p in predictions] for task, predictions in by_task.items()}

    again, created = board.start(project, mode="boxes")
    assert created
    again = wait_job(board, again["id"], workers)
    assert (again["state"], again["done"], again["skipped"], again["no_prompts"]) == ("finished", 0, 11, 1)
    assert {t: [p["id"] for p in ps] for t, ps in predictions_by_task(label_studio, sizes).items()} == first


@pytest.mark.e2e
def test_a_worker_killed_mid_chunk_loses_and_duplicates_no_mask(label_studio, workers, redis_db):  # noqa: F811
    project, rectangles, sizes = boxed_project(label_studio, 12)
    board = JobBoard(redis_db)
    options = JobOptions(chunk_size=6, write_batch=1)
    planner = workers.start("planner", "--max-jobs", "1")
    status, _ = board.start(project, options=options, mode="boxes")
    job_id = status["id"]
    wait_for(lambda: board.status(job_id)["state"] == "running", 60, "the plan", explain=workers.logs)
    planner.popen.wait(timeout=30)
    victim = workers.start("victim", "--without-scheduler")
    wait_for(lambda: board.status(job_id)["done"] >= 2, 60, "the first writes", interval=0.02, explain=workers.logs)
    os.killpg(victim.popen.pid, signal.SIGKILL)
    victim.popen.wait(timeout=10)
    assert board.status(job_id)["done"] < 12, "the victim finished everything before it was killed"
    workers.start("rescuer")
    status = wait_job(board, job_id, workers)
    assert (status["state"], status["done"], status["failed"], status["no_prompts"]) == ("finished", 12, 0, 1)
    for task, predictions in predictions_by_task(label_studio, rectangles).items():
        (mine,) = ours(predictions, status["model_version"])
        check_masks(mine, rectangles[task], sizes[task])


@pytest.mark.e2e
def test_bad_rectangles_fail_alone_and_an_unknown_label_fails_its_task(label_studio, workers, redis_db):  # noqa: F811
    project = label_studio.create_project(CONFIG, title="litesam bad boxes")
    good, mixed, empty, cat = label_studio.upload_images(
        project, [(f"x{i}.png", png_bytes(100, 80, seed=40 + i)) for i in range(4)]
    )
    ls = label_studio.client()
    ok = box(0, 0, 100, 80, "Person")
    outside = box(1, 1, 100, 80, "Object", {"x": 150.0})
    flat = box(2, 0, 100, 80, "Vehicle", {"width": 0.0})
    ls.annotations.create(id=good, result=[ok])
    ls.annotations.create(id=mixed, result=[{**ok, "id": "okay"}, outside, flat])
    ls.annotations.create(id=empty, result=[{**flat, "id": "flat2"}])
    ls.annotations.create(id=cat, result=[{**ok, "id": "fine"}, box(3, 1, 100, 80, "Cat")])
    workers.start("checker")
    board = JobBoard(redis_db)
    status, _ = board.start(project, mode="boxes")
    status = wait_job(board, status["id"], workers)
    assert (status["state"], status["done"], status["failed"]) == ("finished", 2, 2), status
    version = status["model_version"]
    (mixed_prediction,) = ours(label_studio.predictions(task=mixed), version)
    assert [r["value"]["brushlabels"] for r in mixed_prediction["result"]] == [["Person"]]
    rejected = {tuple(r["regions"]): r["reason"] for r in status["rejected"] if r["task"] == mixed}
    assert "region t1r1" in rejected[("t1r1",)] and "outside the image" in rejected[("t1r1",)]
    assert "positive width and height" in rejected[("t2r0",)]
    reasons = {f["task"]: f["reason"] for f in status["failures"]}
    assert "positive width and height" in reasons[empty]
    assert "label 'Cat' is not a label of <BrushLabels name='mask'>" in reasons[cat]
    assert ours(label_studio.predictions(task=cat), version) == []
    assert ours(label_studio.predictions(task=empty), version) == []
    (good_prediction,) = ours(label_studio.predictions(task=good), version)
    assert len(good_prediction["result"]) == 1


POINTS_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="outline" toName="image"><Label value="Person"/><Label value="Vehicle"/></PolygonLabels>
  <KeyPointLabels name="point" toName="image"><Label value="Person"/><Label value="Vehicle"/></KeyPointLabels>
</View>"""


@pytest.mark.e2e
def test_keypoint_groups_become_one_polygon_mask_per_label(label_studio, workers, redis_db):  # noqa: F811
    """``points`` mode with PolygonLabels output: one mask per label group of an annotation's keypoints, as
    polygon regions of that label (640×480 images: random-weight masks there have parts large enough to
    keep, see tests/test_polygons.py)."""
    project = label_studio.create_project(POINTS_CONFIG, title="litesam points e2e")
    tasks = label_studio.upload_images(project, [(f"k{i}.png", png_bytes(640, 480, seed=60 + i)) for i in range(2)])
    ls = label_studio.client()
    for task in tasks:
        points = [
            keypoint(20, 30, 640, 480, label="Person", from_name="point", positive=None),
            keypoint(25, 35, 640, 480, label="Person", from_name="point", positive=None),
            keypoint(70, 60, 640, 480, label="Vehicle", from_name="point", positive=None),
        ]
        for k, point in enumerate(points):
            point["id"] = f"p{task}-{k}"
            del point["value"]["labels"]
        ls.annotations.create(id=task, result=points)
    workers.start("pointer")
    board = JobBoard(redis_db)
    status, _ = board.start(project, mode="points", options=JobOptions(max_masks=10))
    status = wait_job(board, status["id"], workers)
    assert (status["state"], status["done"], status["failed"], status["output"]) == ("finished", 2, 0, "polygon")
    assert status["model_version"].endswith("-points")
    for task in tasks:
        (mine,) = ours(label_studio.predictions(task=task), status["model_version"])
        labels = [r["value"]["polygonlabels"][0] for r in mine["result"]]
        assert set(labels) == {"Person", "Vehicle"}
        assert labels == sorted(labels, key=["Person", "Vehicle"].index)  # the Person group's parts first
        assert all(r["type"] == "polygonlabels" and r["value"]["closed"] for r in mine["result"])
        assert len({r["score"] for r in mine["result"]}) == 2  # one score per mask, shared by its parts
