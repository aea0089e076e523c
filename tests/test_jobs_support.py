"""Helpers shared by the pre-annotation job tests: Redis on its own database, worker processes, waiting.

This module holds no tests. Workers are real processes (``litesam-backend worker``, run as
``python -m backend.cli worker``) with a tiny random-weight checkpoint; their environment is built from scratch.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.backend_support import flushed_redis_at, serve_backend as serve
from tests.e2e.processes import ManagedProcess, base_env

REPO = Path(__file__).resolve().parents[1]
#: Job tests use their own Redis database (the backend tests use 11, its benchmark 12, the generic fixture 15).
#: Two test runs on one Redis at once would share it (and flush each other's jobs): give one of them another
#: database with LITESAM_TEST_JOBS_REDIS_URL.
REDIS_URL = os.environ.get("LITESAM_TEST_JOBS_REDIS_URL", "redis://127.0.0.1:6379/13")
#: SegEvery filters opened for random weights: with SAM's default thresholds (predicted IoU ≥ 0.88,
#: stability ≥ 0.95) an untrained model keeps no mask at all. Every mask in these tests comes from RANDOM
#: weights; the tests check plumbing (counts, sizes, idempotency), never mask quality.
OPEN_FILTERS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "proposal_score_thresh": 0.0}
#: Short backoff so retry tests take seconds.
FAST_RETRY = {"retries": 2, "retry_intervals": [1, 2]}


def flushed_redis() -> Iterator[redis.Redis]:
    """Yields ``redis.Redis`` on :data:`REDIS_URL`, flushed before and after; test modules wrap it in a
    ``jobs_redis`` fixture (``yield from flushed_redis()``)."""
    yield from flushed_redis_at(REDIS_URL, socket_timeout=10)


def worker_env(home: Path, *, checkpoint: str, label_studio_url: str, api_key: str, **extra: str) -> dict:
    """The environment of a backend process for these tests (one torch thread: the CI machine has 2 cores)."""
    return base_env(
        home,
        LABEL_STUDIO_URL=label_studio_url,
        LABEL_STUDIO_API_KEY=api_key,
        REDIS_URL=REDIS_URL,
        LITESAM_CHECKPOINT=checkpoint,
        LITESAM_VARIANT="litesam_tiny",
        LITESAM_TORCH_THREADS="1",
        OMP_NUM_THREADS="1",
        LOG_LEVEL="INFO",
        **extra,
    )


def start_worker(tmp_path: Path, env: dict, name: str, *args: str) -> ManagedProcess:
    """Start ``litesam-backend worker --name NAME ARGS`` and wait until its model is loaded."""
    argv = [
        sys.executable,
        "-m",
        "backend.cli",
        "worker",
        "--name",
        name,
        "--maintenance-interval",
        "2",
        *args,
    ]
    process = ManagedProcess(f"worker {name}", argv, env=env, cwd=REPO, log_path=tmp_path / f"{name}.log")
    process.start()
    process.wait_log(r"model \S+ loaded", timeout=90)
    return process


@contextlib.contextmanager
def serve_backend(tmp_path: Path, env: dict, basic_auth: bool = True) -> Iterator[str]:
    """Run ``litesam-backend serve`` (gunicorn, 1 worker × 4 threads) and yield its URL; no traceback allowed."""
    with serve(tmp_path, env, threads=4, ready_status=401 if basic_auth else 200) as served:
        yield served.url
        assert "Traceback" not in served.process.log_text(), served.process.log_tail()


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    interval: float = 0.1,
    explain: Callable[[], str] = lambda: "",
) -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{explain()}")
        time.sleep(interval)
