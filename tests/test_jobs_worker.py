"""Real worker processes (``litesam-backend worker``) on a real Redis, with Label Studio unreachable or
hanging: retries with backoff end in a failed job with a clear reason, and the job of a worker killed with
SIGKILL is re-queued by another worker. Whole projects against a real Label Studio are in ``tests/e2e``.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

from backend.jobs.board import JobBoard
from backend.jobs.options import JobOptions
from tests.backend_support import LEGACY_TOKEN, closed_port
from tests.jobs_support import FAST_RETRY, start_worker, wait_for, worker_env


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (a hung Label Studio)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self._sock.close()
        for conn in self._held:
            conn.close()


def test_label_studio_unreachable_retries_with_backoff_then_fails_with_a_clear_reason(
    tmp_path, checkpoint, redis_db
):
    url = f"http://127.0.0.1:{closed_port()}"
    env = worker_env(tmp_path, checkpoint=checkpoint, label_studio_url=url, api_key=LEGACY_TOKEN)
    worker = start_worker(tmp_path, env, "unreachable")
    try:
        board = JobBoard(redis_db)
        started = time.monotonic()
        status, _ = board.start(3, options=JobOptions.from_json(FAST_RETRY))
        status = wait_for(
            lambda: (s := board.status(status["id"]))["state"] == "failed" and s,
            60,
            "the job to fail",
            explain=worker.log_tail,
        )
        elapsed = time.monotonic() - started
        assert status["error"] == (
            f"Label Studio at {url} could not be reached to read project 3 (ConnectError) "
            "(gave up after 3 attempt(s))"
        )
        assert status["retries"] == 2 and status["total"] is None and status["last_error"] is None
        assert elapsed >= 1 + 2  # the backoff intervals were waited
        assert board.start(3)[1]  # the project is free for a new job
        assert LEGACY_TOKEN not in worker.log_text()
    finally:
        worker.stop()


def test_a_killed_workers_job_is_requeued_by_another_worker(tmp_path, checkpoint, redis_db):
    hung = SilentServer()
    url = f"http://127.0.0.1:{hung.port}"
    env = worker_env(tmp_path, checkpoint=checkpoint, label_studio_url=url, api_key=LEGACY_TOKEN)
    # The first worker runs no RQ scheduler: a dead scheduler's lock blocks backoff retries for ~60 s
    # (RQ's lock timeout); this test is about re-queueing the dead worker's job.
    first = start_worker(tmp_path, env, "first", "--without-scheduler")
    second = None
    try:
        board = JobBoard(redis_db)
        status, _ = board.start(4, options=JobOptions.from_json(FAST_RETRY))
        job_id = status["id"]
        wait_for(
            lambda: board.status(job_id)["state"] == "listing",
            60,
            "the first worker to start the job",
            explain=first.log_tail,
        )
        os.killpg(first.popen.pid, signal.SIGKILL)  # mid-job: it waits on the hung Label Studio
        first.popen.wait(timeout=10)
        hung.close()  # from now on Label Studio refuses connections
        killed_at = time.monotonic()

        second = start_worker(tmp_path, env, "second")
        wait_for(
            lambda: "worker first stopped" in board.record_fields(job_id).get("last_error", ""),
            60,
            "the second worker to re-queue the job",
            explain=second.log_tail,
        )
        requeued_after = time.monotonic() - killed_at
        final = wait_for(
            lambda: (s := board.status(job_id))["state"] == "failed" and s,
            60,
            "the job to end",
            explain=second.log_tail,
        )
        assert "could not be reached to read project 4" in final["error"]
        assert final["retries"] == 2  # the re-queue after the kill used one of the two retries
        assert requeued_after < 40, requeued_after
        assert "re-queued job" in second.log_text()
    finally:
        first.stop()
        if second is not None:
            second.stop()
        hung.close()
