"""End to end: a pre-annotation job writing through a real nginx with a request-body limit in front of a real
Label Studio 1.23.2 (real worker, real Redis, tiny RANDOM-weight checkpoint, SegEvery filters opened).

A batch of predictions over the limit is answered 413 by nginx; the job writes it in halves until each part
fits, so every task still gets exactly one prediction; a task whose prediction alone is over the limit fails
with a reason that says what to change, keeps the prediction an overwrite would have replaced, and the job
goes on.
"""

from __future__ import annotations

import json

import pytest

from backend.jobs.board import JobBoard
from backend.jobs.options import JobOptions
from tests.e2e.preannotate_support import (
    Workers,
    check_prediction,
    images,
    new_project,
    ours,
    predictions_by_task,
    wait_job,
)
from tests.e2e.proxy import BodyLimitProxy
from tests.jobs_support import OPEN_FILTERS, worker_env

WRITES = "/import/predictions"


def body_bytes(task: int, prediction: dict) -> int:
    """Bytes of a one-task write of ``prediction`` (as stored by Label Studio), compact JSON."""
    fields = {key: prediction[key] for key in ("result", "score", "model_version")}
    return len(json.dumps([{"task": task, **fields}], separators=(",", ":")))


def run_job(board, project, workers, overwrite=False) -> dict:
    options = JobOptions.from_json({**OPEN_FILTERS, "chunk_size": 8})
    status, _ = board.start(project, overwrite=overwrite, options=options)
    return wait_job(board, status["id"], workers)


def workers_via(tmp_path, name, url, label_studio, checkpoint) -> Workers:
    """A pool of workers whose Label Studio is at ``url``."""
    home = tmp_path / name
    return Workers(
        home, worker_env(home, checkpoint=checkpoint, label_studio_url=url, api_key=label_studio.pat)
    )


@pytest.mark.e2e
def test_writes_through_a_proxy_with_a_body_limit(label_studio, tmp_path, checkpoint, redis_db):
    board = JobBoard(redis_db)
    files = images(8, seed=4)
    project, sizes = new_project(label_studio, files)

    # 1. straight to Label Studio: how large each task's write is
    direct = workers_via(tmp_path, "direct", label_studio.url, label_studio, checkpoint)
    try:
        direct.start("direct")
        status = run_job(board, project, direct)
    finally:
        direct.stop()
    assert (status["state"], status["done"], status["failed"]) == ("finished", 8, 0), status
    version = status["model_version"]
    written = {task: ours(p, version)[0] for task, p in predictions_by_task(label_studio, sizes).items()}
    one = {task: body_bytes(task, prediction) for task, prediction in written.items()}
    limit = int(1.5 * max(one.values()))  # any one task fits; the chunk's batch of 8 does not
    assert sum(one.values()) > 2 * limit, f"one task's write dwarfs the others (the test needs alike): {one}"

    # 2. again (overwrite) through nginx with that limit: the batch of 8 is refused and written in parts
    proxy = BodyLimitProxy(tmp_path / "nginx", label_studio.url, limit).start()
    workers = workers_via(tmp_path, "proxied", proxy.url, label_studio, checkpoint)
    try:
        workers.start("proxied")
        options = JobOptions.from_json({**OPEN_FILTERS, "chunk_size": 8, "write_batch": 8})
        status, _ = board.start(project, overwrite=True, options=options)
        status = wait_job(board, status["id"], workers)
        counts = (status["state"], status["done"], status["failed"])
        assert counts == ("finished", 8, 0), (status, workers.logs())
        writes = proxy.statuses(WRITES)
        assert writes[0] == 413 and 413 in writes and writes.count(201) >= 2, writes
        by_task = predictions_by_task(label_studio, sizes)
        for task, predictions in by_task.items():
            (mine,) = ours(predictions, version)  # exactly one, however many parts the writes took
            check_prediction(mine, sizes[task])
            assert mine["id"] != written[task]["id"]
    finally:
        workers.stop()
        proxy.stop()

    # 3. a project pre-annotated straight to Label Studio, then overwritten through nginx with a limit below
    # any one task's write (a region's JSON alone is longer): each task fails, saying what to change, and
    # keeps its earlier prediction (it is deleted only once a new one is written)
    small_project, small_sizes = new_project(label_studio, images(2, seed=5))
    again = workers_via(tmp_path, "direct-again", label_studio.url, label_studio, checkpoint)
    try:
        again.start("direct-again")
        assert run_job(board, small_project, again)["done"] == 2
    finally:
        again.stop()
    earlier = {task: ours(label_studio.predictions(task=task), version) for task in small_sizes}
    tight = BodyLimitProxy(tmp_path / "nginx-tight", label_studio.url, 256).start()
    tight_workers = workers_via(tmp_path, "tight", tight.url, label_studio, checkpoint)
    try:
        tight_workers.start("tight")
        status = run_job(board, small_project, tight_workers, overwrite=True)
    finally:
        tight_workers.stop()
        tight.stop()
    assert (status["state"], status["done"], status["failed"]) == ("finished", 0, 2), status
    for task in small_sizes:
        reason = board.outcome(status["id"], task)["reason"]
        assert "HTTP 413" in reason and "client_max_body_size" in reason, reason
        assert "output=polygon" in reason and "<html>" not in reason, reason
        assert ours(label_studio.predictions(task=task), version) == earlier[task] != []
    assert set(tight.statuses(WRITES)) == {413}
