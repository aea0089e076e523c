"""The job's prediction writer against a Label Studio that refuses large bodies (HTTP 413, as nginx in front
of it does above its client_max_body_size): batches are written in halves until they fit, each task once,
later batches stay small, and a prediction too large on its own fails its task with a reason that says what
to change (backend.jobs.writer)."""

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
        options = JobOptions(write_batch=8)
        status, _ = board.start(PROJECT, options=options)
        tasks = [{"id": t, "image": f"/data/upload/{PROJECT}/{t}.png"} for t in range(1, 9)]
        plan = {"project": PROJECT, "total": 8, "skipped": 0, "model_version": VERSION, "from_name": "mask",
                "to_name": "image", "image_key": "image", "label": "Object"}
        assert board.commit_plan(status["id"], plan, [tasks], {}, options)
        ls = LabelStudioClient(settings_for(checkpoint, label_studio_url=server.url))
        writer = PredictionWriter(board, ls, status["id"], PROJECT, VERSION, batch=8, worker="w1")

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
            assert board.outcome(status["id"], task)["status"] == "done", task
        failed = board.outcome(status["id"], 8)
        assert failed["status"] == "failed"
        assert "HTTP 413" in failed["reason"] and "client_max_body_size" in failed["reason"]
        assert "<html>" not in failed["reason"]
        assert sorted(t for batch in accepted for t in batch) == list(range(1, 8))  # each task written once
    finally:
        server.close()
