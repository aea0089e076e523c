"""End to end: whole projects pre-annotated by real worker processes (``litesam-backend worker``) against a
real Label Studio 1.23.2 and a real Redis, with a tiny RANDOM-weight checkpoint.

Random weights: SegEvery's default filters keep no mask of an untrained model, so the jobs here open them
(:data:`tests.jobs_support.OPEN_FILTERS`). The masks are meaningless; what is checked is the plumbing:
one prediction of our model version per task, masks at each image's natural size, no duplicates under
re-runs, overwrite, killed workers and two workers, retries while Label Studio is away, per-task failures.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.types import PredictionRequest

from backend.jobs.board import JobBoard
from backend.jobs.options import JobOptions
from backend.store import ALIAS_PREFIX, embedding_key
from tests.backend_support import decode_brush, exif_rotated_jpeg, png_bytes, serve_backend
from tests.e2e.processes import ManagedProcess
from tests.jobs_support import (
    OPEN_FILTERS,
    start_worker,
    wait_for,
    worker_env,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG = (REPO / "label_config.xml").read_text()
FOREIGN_VERSION = "someone-else-v2"


class Workers:
    """Worker processes started by a test, all stopped at its end."""

    def __init__(self, tmp_path: Path, env: dict) -> None:
        self.tmp_path, self.env = tmp_path, env
        self.started: list[ManagedProcess] = []

    def start(self, name: str, *args: str) -> ManagedProcess:
        process = start_worker(self.tmp_path, self.env, name, *args)
        self.started.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(p.log_tail(40) for p in self.started)

    def stop(self) -> None:
        for process in self.started:
            process.stop()


@pytest.fixture
def workers(label_studio, tmp_path, checkpoint, redis_db):
    env = worker_env(
        tmp_path, checkpoint=checkpoint, label_studio_url=label_studio.url, api_key=label_studio.pat
    )
    pool = Workers(tmp_path, env)
    try:
        yield pool
    finally:
        pool.stop()
    for process in pool.started:
        assert label_studio.pat not in process.log_text()


def images(count: int, seed: int = 0) -> list[tuple[str, bytes, tuple[int, int]]]:
    """(file name, bytes, natural (height, width)) of ``count`` images of different sizes; one EXIF-rotated."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        if i == 3:
            out.append(
                (f"img{i:02d}.jpg", exif_rotated_jpeg(120, 80), (120, 80))
            )  # stored 120×80, shown 80×120
            continue
        width, height = int(rng.integers(40, 160)), int(rng.integers(30, 120))
        out.append((f"img{i:02d}.png", png_bytes(width, height, seed=seed * 100 + i), (height, width)))
    return out


def new_project(label_studio, files) -> tuple[int, dict[int, tuple[int, int]]]:
    project = label_studio.create_project(CONFIG, title="litesam pre-annotation e2e")
    task_ids = label_studio.upload_images(project, [(name, data) for name, data, _ in files])
    return project, {task: size for task, (_, _, size) in zip(task_ids, files, strict=True)}


def wait_job(board: JobBoard, job_id: str, workers: Workers, timeout: float = 120) -> dict:
    return wait_for(
        lambda: (s := board.status(job_id))["state"] in ("finished", "failed") and s,
        timeout,
        f"job {job_id} to end",
        interval=0.25,
        explain=lambda: f"{board.status(job_id)}\n{workers.logs()}",
    )


def predictions_by_task(label_studio, task_ids) -> dict[int, list[dict]]:
    return {task: label_studio.predictions(task=task) for task in task_ids}


def ours(predictions: list[dict], version: str) -> list[dict]:
    return [p for p in predictions if p["model_version"] == version]


def check_prediction(prediction: dict, size: tuple[int, int], label: str = "Object") -> None:
    assert prediction["result"], "random weights with open filters keep at least one mask"
    scores = []
    for region in prediction["result"]:
        assert (
            region["type"] == "brushlabels" and region["from_name"] == "mask" and region["to_name"] == "image"
        )
        assert region["value"]["brushlabels"] == [label]
        mask = decode_brush(region)  # exactly H·W·4 values
        assert mask.shape == size and set(np.unique(mask)) <= {0, 255}
        assert 0.0 <= region["score"] <= 1.0
        scores.append(region["score"])
    assert prediction["score"] == pytest.approx(float(np.mean(scores)))


def foreign_prediction(width: int, height: int) -> list[dict]:
    from label_studio_sdk.converter.brush import mask2rle

    mask = np.zeros((height, width), np.uint8)
    mask[: height // 2] = 255
    return [
        {
            "from_name": "mask",
            "to_name": "image",
            "type": "brushlabels",
            "original_width": width,
            "original_height": height,
            "value": {"format": "rle", "rle": mask2rle(mask), "brushlabels": ["Person"]},
        }
    ]


def run_preannotate(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    """``litesam-backend preannotate …`` as a process (``python -m backend.cli``, the console script's code)."""
    command = [sys.executable, "-m", "backend.cli", "preannotate", *argv]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


OPEN_FLAGS = ["--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--proposal-score-thresh", "0"]


@pytest.mark.e2e
def test_project_preannotated_once_by_two_workers_rerun_adds_nothing_overwrite_replaces_only_ours(
    label_studio, workers, redis_db
):
    files = images(20)
    project, sizes = new_project(label_studio, files)
    ls = label_studio.client()
    foreign_tasks = list(sizes)[:4]
    answer = ls.projects.import_predictions(
        id=project,
        request=[
            PredictionRequest(
                task=t, result=foreign_prediction(sizes[t][1], sizes[t][0]), model_version=FOREIGN_VERSION
            )
            for t in foreign_tasks
        ],
    )
    assert answer.created == 4
    foreign_ids = {t: ours(label_studio.predictions(task=t), FOREIGN_VERSION)[0]["id"] for t in foreign_tasks}
    workers.start("a")
    workers.start("b")
    board = JobBoard(redis_db)

    # 1. the whole project, through the command with --wait (progress bar on stderr)
    done = run_preannotate(
        ["--project", str(project), "--wait", "--chunk-size", "3", *OPEN_FLAGS], workers.env
    )
    err = done.stderr
    job_id = done.stdout.strip()
    status = board.status(job_id)
    assert done.returncode == 0, (err, status, workers.logs())
    assert "pre-annotating" in err and "finished: 20 pre-annotated, 0 skipped, 0 failed of 20 task(s)" in err
    assert (status["state"], status["total"], status["done"], status["skipped"], status["failed"]) == (
        "finished",
        20,
        20,
        0,
        0,
    )
    version = status["model_version"]
    assert version.startswith("litesam_tiny-") and status["label"] == "Object"
    by_task = predictions_by_task(label_studio, sizes)
    for task, predictions in by_task.items():
        (mine,) = ours(predictions, version)
        check_prediction(mine, sizes[task])
    assert status["regions"] == sum(len(ours(p, version)[0]["result"]) for p in by_task.values())
    first_ids = {task: ours(p, version)[0]["id"] for task, p in by_task.items()}

    # two workers split the chunks, and no task was computed twice
    assert board.attempts(job_id) == {task: 1 for task in sizes}
    assert {board.outcome(job_id, task)["worker"] for task in sizes} == {"a", "b"}
    # every image's embedding is in Redis for the labelers' clicks
    assert len(redis_db.keys(embedding_key(version, "*"))) == 20
    assert len(redis_db.keys(ALIAS_PREFIX + "*")) == 20  # upload URL → image hash: clicks skip the download

    # 2. again: everything is skipped, nothing is added
    status, created = board.start(project, options=JobOptions.from_json(OPEN_FILTERS))
    assert created
    status = wait_job(board, status["id"], workers)
    assert (status["state"], status["total"], status["skipped"], status["done"]) == ("finished", 20, 20, 0)
    assert {
        t: [p["id"] for p in ours(ps, version)] for t, ps in predictions_by_task(label_studio, sizes).items()
    } == {t: [i] for t, i in first_ids.items()}

    # 3. overwrite: ours replaced (one per task), the other model's predictions untouched
    status, _ = board.start(
        project, overwrite=True, options=JobOptions.from_json({**OPEN_FILTERS, "chunk_size": 4})
    )
    status = wait_job(board, status["id"], workers)
    assert (status["state"], status["done"], status["skipped"], status["failed"]) == ("finished", 20, 0, 0)
    by_task = predictions_by_task(label_studio, sizes)
    for task, predictions in by_task.items():
        (mine,) = ours(predictions, version)
        assert mine["id"] != first_ids[task]
        check_prediction(mine, sizes[task])
        theirs = ours(predictions, FOREIGN_VERSION)
        assert [p["id"] for p in theirs] == ([foreign_ids[task]] if task in foreign_ids else [])


@pytest.mark.e2e
def test_worker_killed_mid_chunk_job_completes_without_duplicates(label_studio, workers, redis_db):
    files = images(12, seed=1)
    project, sizes = new_project(label_studio, files)
    board = JobBoard(redis_db)
    options = JobOptions.from_json({**OPEN_FILTERS, "chunk_size": 6, "write_batch": 1})

    # plan only (the worker quits after one job), then plant "our" prediction on one task, as if an earlier
    # attempt had written it and died before its bookkeeping: the chunk must find it and not write another
    planner = workers.start("planner", "--max-jobs", "1")
    status, _ = board.start(project, options=options)
    job_id = status["id"]
    wait_for(lambda: board.status(job_id)["state"] == "running", 60, "the plan", explain=workers.logs)
    planner.popen.wait(timeout=30)
    version = board.status(job_id)["model_version"]
    planted_task = list(sizes)[7]
    height, width = sizes[planted_task]
    label_studio.client().projects.import_predictions(
        id=project,
        request=[
            PredictionRequest(
                task=planted_task, result=foreign_prediction(width, height), model_version=version
            )
        ],
    )
    (planted,) = ours(label_studio.predictions(task=planted_task), version)

    victim = workers.start("victim", "--without-scheduler")
    wait_for(
        lambda: 2 <= board.status(job_id)["done"], 60, "the first writes", interval=0.02, explain=workers.logs
    )
    os.killpg(victim.popen.pid, signal.SIGKILL)
    victim.popen.wait(timeout=10)
    at_kill = board.status(job_id)
    assert at_kill["done"] < 12, "the victim finished everything before it was killed"

    workers.start("rescuer")
    status = wait_job(board, job_id, workers)
    assert (status["state"], status["done"], status["failed"], status["skipped"]) == ("finished", 12, 0, 0)
    assert "worker victim stopped" in board.record_fields(job_id)["last_error"]
    for task, predictions in predictions_by_task(label_studio, sizes).items():
        (mine,) = ours(predictions, version)  # exactly one of ours per task
        if task == planted_task:
            assert mine["id"] == planted["id"]
            assert board.outcome(job_id, task)["note"] == "already held a prediction of this version"
        else:
            check_prediction(mine, sizes[task])


class Gate:
    """A TCP forwarder to Label Studio that can be closed (connections refused) and opened again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        thread = threading.Thread(target=self._serve, args=(listener,), daemon=True)
        thread.start()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.mark.e2e
def test_label_studio_away_for_a_while_the_job_retries_with_backoff_and_completes(
    label_studio, tmp_path, checkpoint, redis_db
):
    files = images(4, seed=2)
    project, sizes = new_project(label_studio, files)
    gate = Gate(label_studio.port)  # closed: Label Studio is unreachable through it
    env = worker_env(
        tmp_path,
        checkpoint=checkpoint,
        label_studio_url=f"http://127.0.0.1:{gate.port}",
        api_key=label_studio.pat,
    )
    pool = Workers(tmp_path, env)
    try:
        pool.start("patient")
        board = JobBoard(redis_db)
        options = JobOptions.from_json({**OPEN_FILTERS, "retries": 4, "retry_intervals": [2, 4, 8, 8]})
        status, _ = board.start(project, options=options)
        wait_for(
            lambda: board.status(status["id"])["retries"] >= 1,
            60,
            "a first failed attempt",
            explain=pool.logs,
        )
        retrying = board.status(status["id"])
        assert retrying["state"] in ("queued", "listing") and "could not be reached" in retrying["last_error"]
        gate.open()  # Label Studio is back
        status = wait_job(board, status["id"], pool)
        assert (status["state"], status["done"], status["failed"]) == ("finished", 4, 0), status
        assert status["retries"] >= 1 and status["last_error"] is None
        for task, predictions in predictions_by_task(label_studio, sizes).items():
            (mine,) = ours(predictions, status["model_version"])
            check_prediction(mine, sizes[task])
    finally:
        pool.stop()
        gate.close()


@pytest.mark.e2e
def test_an_unreadable_image_fails_only_its_own_task(label_studio, workers, redis_db):
    good = images(3, seed=3)
    files = [*good, ("broken.png", b"\x89PNG\r\n\x1a\n this is not a PNG at all", None)]
    project = label_studio.create_project(CONFIG, title="litesam unreadable image")
    task_ids = label_studio.upload_images(project, [(name, data) for name, data, _ in files])
    (elsewhere,) = label_studio.import_tasks(project, [{"image": "http://10.1.2.3/private.png"}])
    workers.start("solo")
    board = JobBoard(redis_db)
    status, _ = board.start(project, options=JobOptions.from_json(OPEN_FILTERS))
    status = wait_job(board, status["id"], workers)
    assert (status["state"], status["total"], status["done"], status["failed"]) == ("finished", 5, 3, 2)
    reasons = {f["task"]: f["reason"] for f in status["failures"]}
    assert reasons[task_ids[3]] == "the file is not an image in a format this backend can read"
    assert reasons[elsewhere].startswith("refusing to fetch an image from 10.1.2.3")
    version = status["model_version"]
    for task, (_, _, size) in zip(task_ids, files, strict=True):
        mine = ours(label_studio.predictions(task=task), version)
        if size is None:
            assert mine == []
        else:
            check_prediction(mine[0], size)
    assert ours(label_studio.predictions(task=elsewhere), version) == []


@pytest.mark.e2e
def test_retrieve_predictions_small_batch_answered_now_large_batch_becomes_a_job(
    label_studio, workers, redis_db, tmp_path
):
    """Label Studio's "Retrieve predictions" (one synchronous /predict with every selected task): up to
    LITESAM_SYNC_PREDICT_LIMIT tasks are answered in the call; more become a job for exactly those tasks and
    Label Studio gets no results (so it marks nothing as predicted) until the job writes them. Both paths
    use the job defaults of LITESAM_JOB_DEFAULTS, which open SegEvery's filters for the random weights."""
    limit = 3
    settings_env = {
        "LITESAM_SYNC_PREDICT_LIMIT": str(limit),
        "LITESAM_JOB_DEFAULTS": json.dumps(
            {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "proposal_score_thresh": 0.0}
        ),
    }
    files = images(8, seed=4)
    project, sizes = new_project(label_studio, files)
    tasks = list(sizes)
    basic = ("ls-backend", "retrieve-pass")
    with serve_backend(
        tmp_path,
        {**workers.env, **settings_env, "BASIC_AUTH_USER": basic[0], "BASIC_AUTH_PASS": basic[1]},
        threads=4,
        ready_status=401,
    ) as served:
        url = served.url
        label_studio.connect_backend(project, url, interactive=False, basic_auth=basic)
        board = JobBoard(redis_db)

        small = tasks[:limit]
        label_studio.retrieve_predictions(project, small)
        stored = predictions_by_task(label_studio, small)
        version = stored[small[0]][0]["model_version"]
        assert version.startswith("litesam_tiny-")
        for task, predictions in stored.items():
            (mine,) = ours(predictions, version)
            check_prediction(mine, sizes[task])  # regions: the job defaults opened the filters
        assert board.recent() == []  # no job for a small batch

        large = tasks[limit:]
        started = time.monotonic()
        label_studio.retrieve_predictions(project, large)
        assert time.monotonic() - started < 20  # answered at once, nothing computed in the call
        assert all(p == [] for p in predictions_by_task(label_studio, large).values())  # nothing marked yet
        (job,) = board.recent()
        assert (job["project"], job["tasks"], job["source"]) == (project, sorted(large), "predict")

        workers.start("retriever")
        status = wait_job(board, job["id"], workers)
        assert (status["state"], status["total"], status["done"], status["failed"]) == (
            "finished",
            len(large),
            len(large),
            0,
        )
        for task, predictions in predictions_by_task(label_studio, tasks).items():
            (mine,) = ours(predictions, version)
            check_prediction(mine, sizes[task])
