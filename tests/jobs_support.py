"""Helpers shared by the pre-annotation job tests: worker processes and their environment, waiting.

This module holds no tests. Workers are real processes (``litesam-backend worker``, run as
``python -m backend.cli worker``) with a tiny random-weight checkpoint; their environment is built from scratch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.backend_support import TEST_REDIS_URL
from tests.e2e.processes import ManagedProcess, base_env

REPO = Path(__file__).resolve().parents[1]
#: SegEvery filters opened for random weights: with SAM's default thresholds (predicted IoU ≥ 0.88,
#: stability ≥ 0.95) an untrained model keeps no mask at all. Every mask in these tests comes from RANDOM
#: weights; the tests check plumbing (counts, sizes, idempotency), never mask quality.
OPEN_FILTERS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "proposal_score_thresh": 0.0}
#: Short backoff so retry tests take seconds.
FAST_RETRY = {"retries": 2, "retry_intervals": [1, 2]}


def worker_env(home: Path, *, checkpoint: str, label_studio_url: str, api_key: str, **extra: str) -> dict:
    """The environment of a backend process for these tests (one torch thread: the CI machine has 2 cores)."""
    return base_env(
        home,
        LABEL_STUDIO_URL=label_studio_url,
        LABEL_STUDIO_API_KEY=api_key,
        REDIS_URL=TEST_REDIS_URL,
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
