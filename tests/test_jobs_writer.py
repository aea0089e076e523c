"""The job's prediction writer (backend.jobs.writer) against a Label Studio played by a real HTTP server:
against one that refuses large bodies (HTTP 413, as nginx in front of it does above its
client_max_body_size), batches are written in halves until they fit, each task once, later batches stay
small, and a prediction too large on its own fails its task with a reason that says what to change; with
``overwrite``, a task's earlier predictions are deleted only once its new one is written."""

from __future__ import annotations

import json

from backend.jobs.board import JobBoard
from backend.jobs.options import JobOptions
from backend.jobs.writer import PredictionWriter
from backend.labelstudio.client import LabelStudioClient
from tests.backend_support import FakeLabelStudio, settings_for

PROJECT = 17
VERSION = "litesam-test"


def prediction(task_id: int, rle_values: int) -> dict:
    region = {
        "id": f"r{task_id}",
        "from_name": "mask",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": 64,
        "original_height": 64,
        "value": {"format": "rle", "rle": [task_id % 256] * rle_values, "brushlabels": ["Object"]},
    }
    return {"result": [region], "score": 0.9, "model_version": VERSION}


def body_size(task_id: int, rle_values: int) -> int:
    return len(json.dumps([{"task": task_id, **prediction(task_id, rle_values)}], separators=(",", ":")))


def started_job(board: JobBoard, tasks: range) -> str:
    options = JobOptions(write_batch=8)
    status, _ = board.start(PROJECT, options=options)
    payload = [{"id": t, "image": f"/data/upload/{PROJECT}/{t}.png"} for t in tasks]
    plan = {"project": PROJECT, "total": len(payload), "skipped": 0, "model_version": VERSION,
            "from_name": "mask", "to_name": "image", "image_key": "image", "label": "Object"}
    assert board.commit_plan(status["id"], plan, [payload], {}, options)
    return status["id"]


def test_refused_batches_are_written_in_halves_and_an_oversized_prediction_fails(checkpoint, redis_db):
    limit = int(2.5 * body_size(1, 1000))  # two 1,000-value predictions fit in one body, three do not
    accepted: list[list[int]] = []

    def import_predictions(body: bytes) -> tuple[int, bytes]:
        if len(body) > limit:
            return 413, b"<html><center><h1>413 Request Entity Too Large</h1></center></html>"
        written = json.loads(body)
        accepted.append([p["task"] for p in written])
        return 201, json.dumps({"created": len(written)}).encode()

    server = FakeLabelStudio()
    try:
        for task in range(1, 9):
            server.add(f"/api/predictions/?task={task}", b"[]")
        route = server.add(f"/api/projects/{PROJECT}/import/predictions", answer=import_predictions)
        board = JobBoard(redis_db)
        job_id = started_job(board, range(1, 9))
        ls = LabelStudioClient(settings_for(checkpoint, label_studio_url=server.url))
        writer = PredictionWriter(board, ls, job_id, PROJECT, VERSION, batch=8, worker="w1")

        for task in range(1, 6):
            writer.add(task, prediction(task, 1000))
        writer.flush()  # 5 refused → 2 written, 3 refused → 1 and 2 written
        assert accepted == [[1, 2], [3], [4, 5]]
        posts = [path for path, _ in server.posted if path == route]
        assert len(posts) == 5

        writer.add(6, prediction(6, 1000))
        writer.add(7, prediction(7, 1000))  # batches are now at most 2 (half of the 3 refused, rounded up)
        assert accepted[-1] == [6, 7] and len([p for p, _ in server.posted if p == route]) == 6
        writer.add(8, prediction(8, 5000))  # larger than the limit on its own
        writer.flush()

        for task in range(1, 8):
            assert board.outcome(job_id, task)["status"] == "done", task
        failed = board.outcome(job_id, 8)
        assert failed["status"] == "failed"
        assert "HTTP 413" in failed["reason"] and "client_max_body_size" in failed["reason"]
        assert "<html>" not in failed["reason"]
        assert sorted(t for batch in accepted for t in batch) == list(range(1, 8))  # each task written once
    finally:
        server.close()


def test_earlier_predictions_are_deleted_only_once_the_new_one_is_written(checkpoint, redis_db):
    """Task 1: written, then its earlier prediction deleted. Task 2: an attempt that died after writing left
    the new one (id 72) beside the earlier (52): nothing is written, the earlier is deleted. Task 3: its new
    prediction is refused (too large), so its earlier one stays."""
    def import_predictions(body: bytes) -> tuple[int, bytes]:
        written = json.loads(body)
        if any(p["task"] == 3 for p in written):
            return 413, b"too large"
        return 201, json.dumps({"created": len(written)}).encode()

    def ours(*ids: int) -> bytes:
        return json.dumps([{"id": i, "model_version": VERSION, "result": [{}]} for i in ids]).encode()

    server = FakeLabelStudio()
    try:
        server.add("/api/predictions/?task=1", ours(51))  # the earlier one only: not written yet
        server.add("/api/predictions/?task=2", ours(52, 72))
        server.add("/api/predictions/?task=3", ours(53))
        route = server.add(f"/api/projects/{PROJECT}/import/predictions", answer=import_predictions)
        for old in (51, 52, 53):
            server.add(f"/api/predictions/{old}/", status=204)
        board = JobBoard(redis_db)
        job_id = started_job(board, range(1, 4))
        ls = LabelStudioClient(settings_for(checkpoint, label_studio_url=server.url))
        writer = PredictionWriter(board, ls, job_id, PROJECT, VERSION, batch=1, worker="w1")
        for task in (1, 2, 3):
            writer.add(task, prediction(task, 100), replaces=[50 + task])

        calls = [(method, path) for method, path, _ in server.requests]
        writes = [i for i, call in enumerate(calls) if call == ("POST", route)]
        deletes = {path: i for i, (method, path) in enumerate(calls) if method == "DELETE"}
        assert sorted(deletes) == ["/api/predictions/51/", "/api/predictions/52/"]
        assert writes[0] < deletes["/api/predictions/51/"] < writes[1]  # task 1: written, then deleted
        assert [json.loads(body)[0]["task"] for path, body in server.posted if path == route] == [1, 3]
        assert board.outcome(job_id, 1)["status"] == "done"
        assert board.outcome(job_id, 2)["note"] == "already held a prediction of this version"
        assert board.outcome(job_id, 3)["status"] == "failed"  # and prediction 53 was not deleted
    finally:
        server.close()
