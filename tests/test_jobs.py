"""Pre-annotation jobs in-process, on a real Redis (the test database, flushed): the job records and their
atomic counters, one job per project, cancelling, per-task write locks, failure reasons and the
reconciliation of chunks RQ failed (backend.jobs: board, locks, tasks, failures).

Job options are in ``test_job_options.py``; the HTTP routes, the ``preannotate`` command and the batch
``/predict`` in ``test_jobs_routes.py``; workers, Label Studio and whole jobs in ``test_jobs_worker.py`` and
``tests/e2e``.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from backend.errors import (
    BadRequestError,
    JobNotFoundError,
    LabelStudioUnavailable,
    UpstreamError,
)
from backend.jobs import failures
from backend.jobs import locks as locks_module
from backend.jobs import tasks as job_tasks
from backend.jobs.board import JobBoard
from backend.jobs.layout import KEY_PREFIX, active_key, queue
from backend.jobs.locks import TASK_LOCK_TTL_S, TaskLocks
from backend.jobs.options import QUEUE_NAME, JobOptions
from backend.services import build_services
from tests.backend_support import (
    FakeLabelStudio,
    settings_for,
)


def planned_job(board: JobBoard, project: int, task_ids: list[int]) -> str:
    """A job whose plan is committed (chunks queued, nobody working on them): state ``running``."""
    status, created = board.start(project, options=JobOptions(chunk_size=2))
    assert created
    tasks = [{"id": t, "image": f"/data/upload/{project}/{t}.png"} for t in task_ids]
    chunks = [tasks[i : i + 2] for i in range(0, len(tasks), 2)]
    plan = {
        "project": project,
        "total": len(task_ids),
        "skipped": 0,
        "model_version": "litesam_tiny-test",
        "from_name": "mask",
        "to_name": "image",
        "image_key": "image",
        "label": "Object",
    }
    assert board.commit_plan(status["id"], plan, chunks, {}, JobOptions(chunk_size=2))
    return status["id"]


# -- starting jobs -----------------------------------------------------------------------------------------


def test_start_queues_the_parent_job_with_explicit_rq_settings(redis_db):
    board = JobBoard(redis_db)
    options = JobOptions(job_timeout=120, result_ttl=600, failure_ttl=900, retries=2, retry_intervals=(3, 7))
    status, created = board.start(5, overwrite=True, task_ids=[9, 3, 9], options=options, source="cli")
    assert created
    assert status["state"] == "queued" and status["project"] == 5 and status["overwrite"] is True
    assert status["tasks"] == [3, 9] and status["total"] is None and status["percent"] == 0.0
    assert status["source"] == "cli" and status["failures"] == [] and status["error"] is None

    parent = Job.fetch(status["id"], connection=redis_db, serializer=JSONSerializer)
    assert parent.func_name == "backend.jobs.tasks.plan_project" and parent.args == [status["id"]]
    assert parent.origin == QUEUE_NAME and parent.get_status() == JobStatus.QUEUED
    assert (parent.timeout, parent.result_ttl, parent.failure_ttl) == (120, 600, 900)
    assert parent.retries_left == 2 and parent.retry_intervals == [3, 7]
    assert parent.failure_callback is failures.on_plan_failure
    assert queue(redis_db).job_ids == [status["id"]]
    # the job's data is JSON (the queue's serializer), not pickle
    assert json.loads(redis_db.hget(parent.key, "meta")) == {"litesam_job": status["id"], "project": 5}


def test_one_job_per_project_at_a_time(redis_db):
    board = JobBoard(redis_db)
    first, created = board.start(7)
    assert created
    again, created_again = board.start(7, overwrite=True)
    assert not created_again and again["id"] == first["id"]
    other, created_other = board.start(8)
    assert created_other and other["id"] != first["id"]
    assert {j["id"] for j in board.recent()} == {first["id"], other["id"]}

    board.fail_job(first["id"], 7, "stopped by the test", end_now=True)
    assert board.status(first["id"])["state"] == "failed"
    after, created_after = board.start(7)
    assert created_after and after["id"] != first["id"]


def test_start_refuses_bad_project_and_task_ids(redis_db):
    board = JobBoard(redis_db)
    for project in ("3", 0, None, True):
        with pytest.raises(BadRequestError, match="'project' must be a positive integer"):
            board.start(project)
    for tasks in ([], [0], ["1"], "1,2"):
        with pytest.raises(BadRequestError, match="'tasks' must be a non-empty list"):
            board.start(3, task_ids=tasks)
    assert board.recent() == []


# -- progress ----------------------------------------------------------------------------------------------


def test_outcomes_count_once_and_the_last_one_finishes_the_job(redis_db):
    board = JobBoard(redis_db)
    job_id = planned_job(board, 4, [11, 12, 13])
    chunks = [Job.fetch(f"{job_id}.{i}", connection=redis_db, serializer=JSONSerializer) for i in range(2)]
    assert [c.args[2] for c in chunks] == [
        [{"id": 11, "image": "/data/upload/4/11.png"}, {"id": 12, "image": "/data/upload/4/12.png"}],
        [{"id": 13, "image": "/data/upload/4/13.png"}],
    ]
    assert all(c.func_name == "backend.jobs.tasks.run_chunk" and c.retries_left == 3 for c in chunks)
    assert all(
        c.failure_callback is failures.on_chunk_failure and c.timeout == JobOptions().job_timeout for c in chunks
    )
    assert board.status(job_id)["state"] == "running"

    assert board.record_outcome(job_id, 4, 11, "done", regions=5, worker="w1")
    assert not board.record_outcome(
        job_id, 4, 11, "done", regions=5, worker="w2"
    )  # a retry: not counted again
    assert board.record_outcome(job_id, 4, 12, "failed", reason="the image is corrupt")
    assert not board.record_outcome(job_id, 4, 11, "failed", reason="late")  # nothing replaces a done task
    status = board.status(job_id)
    assert (status["done"], status["failed"], status["pending"], status["regions"]) == (1, 1, 1, 5)
    assert status["failures"] == [{"task": 12, "reason": "the image is corrupt"}]
    assert status["percent"] == pytest.approx(66.7)
    assert board.outcome(job_id, 11)["worker"] == "w1"

    assert board.record_outcome(job_id, 4, 12, "done", regions=2)  # a later success replaces the failure
    assert board.record_outcome(job_id, 4, 13, "done", regions=1)
    status = board.status(job_id)
    assert status["state"] == "finished" and status["finished_at"]
    assert (status["done"], status["failed"], status["pending"], status["percent"]) == (3, 0, 0, 100.0)
    assert redis_db.get(active_key(4)) is None  # the project is free again

    meta = json.loads(redis_db.hget(Job(job_id, connection=redis_db).key, "meta"))
    expected = {k: status[k] for k in ("total", "done", "failed", "skipped", "pending", "percent", "regions")}
    assert meta["progress"] == expected  # the parent RQ job's meta mirrors the record


def test_a_chunk_that_gives_up_fails_its_unsettled_tasks_and_the_job(redis_db):
    board = JobBoard(redis_db)
    job_id = planned_job(board, 6, [1, 2, 3])
    board.record_outcome(job_id, 6, 1, "done", regions=1)
    board.fail_tasks(job_id, 6, [1, 2], "Label Studio at http://ls could not be reached (gave up)")
    status = board.status(job_id)
    assert status["state"] == "running" and status["error"].startswith("Label Studio at http://ls")
    assert [f["task"] for f in status["failures"]] == [2]
    board.record_outcome(job_id, 6, 3, "done", regions=1)
    status = board.status(job_id)
    assert status["state"] == "failed" and (status["done"], status["failed"]) == (2, 1)


def test_everything_skipped_finishes_at_once(redis_db):
    board = JobBoard(redis_db)
    status, _ = board.start(9)
    plan = {
        "project": 9,
        "total": 4,
        "skipped": 4,
        "model_version": "v",
        "from_name": "mask",
        "to_name": "image",
        "image_key": "image",
        "label": "Object",
    }
    assert board.commit_plan(status["id"], plan, [], {}, JobOptions())
    assert not board.commit_plan(status["id"], plan, [], {}, JobOptions())  # a retried parent changes nothing
    status = board.status(status["id"])
    assert (status["state"], status["skipped"], status["percent"]) == ("finished", 4, 100.0)


def test_maintenance_settles_a_chunk_that_rq_failed_without_our_callback_and_reading_writes_nothing(redis_db):
    board = JobBoard(redis_db)
    job_id = planned_job(board, 3, [21, 22, 23])
    chunk = Job.fetch(f"{job_id}.0", connection=redis_db, serializer=JSONSerializer)
    with redis_db.pipeline() as pipe:  # as RQ does when a work horse dies and no retry is left
        chunk.set_status(JobStatus.FAILED, pipeline=pipe)
        chunk._handle_failure(
            "Traceback …\nbackend.errors.LabelStudioUnavailable: Label Studio is down", pipe
        )
        pipe.execute()
    assert chunk.id in FailedJobRegistry(QUEUE_NAME, connection=redis_db).get_job_ids()
    before = board.status(job_id)
    assert (before["failures"], before["failed"], before["error"]) == ([], 0, None)  # a read changes nothing
    assert board.status(job_id) == before

    assert failures.reconcile_jobs(redis_db) == 1  # what every worker runs at its maintenance
    status = board.status(job_id)
    assert [f["task"] for f in status["failures"]] == [21, 22]
    assert status["failures"][0]["reason"] == "Label Studio is down"
    assert status["error"] == "Label Studio is down" and status["state"] == "running"  # task 23 is pending
    failures.reconcile_jobs(redis_db)  # again: nothing counts twice
    assert board.status(job_id)["failed"] == 2


def test_unknown_job_is_not_found(redis_db):
    with pytest.raises(JobNotFoundError):
        JobBoard(redis_db).status("0" * 32)
    with pytest.raises(JobNotFoundError):
        JobBoard(redis_db).status("x" * 500)


# -- cancelling --------------------------------------------------------------------------------------------


def rq_status(connection, rq_id: str) -> JobStatus:
    return Job.fetch(rq_id, connection=connection, serializer=JSONSerializer).get_status()


def test_cancel_a_queued_job_cancels_its_rq_job_and_frees_the_project(redis_db):
    board = JobBoard(redis_db)
    status, _ = board.start(14, options=JobOptions(queue="nobody-serves-this"))
    cancelled, now = board.cancel(status["id"], "the queue has no worker")
    assert now and cancelled["state"] == "cancelled"
    assert cancelled["cancel_reason"] == "the queue has no worker"
    assert cancelled["finished_at"] and cancelled["error"] is None and cancelled["failed"] == 0
    assert rq_status(redis_db, status["id"]) == JobStatus.CANCELED
    assert queue(redis_db, "nobody-serves-this").job_ids == []
    assert redis_db.get(active_key(14)) is None
    after, created = board.start(14)
    assert created and after["id"] != status["id"]
    # a parent that a worker takes anyway (e.g. it was already dequeued) plans nothing
    assert not board.begin_listing(status["id"])
    assert not board.commit_plan(status["id"], {"project": 14, "total": 1}, [[{"id": 1}]], {}, JobOptions())


def test_cancel_a_running_job_cancels_its_waiting_chunks_and_only_a_done_counts_after(redis_db):
    board = JobBoard(redis_db)
    job_id = planned_job(board, 15, [1, 2, 3, 4, 5])
    board.record_outcome(job_id, 15, 1, "done", regions=2)
    started = Job.fetch(f"{job_id}.1", connection=redis_db, serializer=JSONSerializer)
    with redis_db.pipeline() as pipe:  # as a worker does when it takes chunk 2
        queue(redis_db).remove(started.id, pipeline=pipe)
        started.set_status(JobStatus.STARTED, pipeline=pipe)
        pipe.execute()
    status, now = board.cancel(job_id)
    counts = (status["state"], status["done"], status["failed"], status["pending"])
    assert now and counts == ("cancelled", 1, 0, 4)
    assert status["cancel_reason"] == "cancelled by request"
    assert rq_status(redis_db, f"{job_id}.0") == JobStatus.CANCELED
    assert rq_status(redis_db, f"{job_id}.2") == JobStatus.CANCELED
    assert rq_status(redis_db, f"{job_id}.1") == JobStatus.STARTED  # stops by itself at its next task
    assert queue(redis_db).job_ids == []
    assert board.is_cancelled(job_id)
    board.record_outcome(job_id, 15, 3, "done", regions=1)  # a write already under way landed
    board.record_outcome(job_id, 15, 4, "failed", reason="late")  # not counted: the task was not done
    board.fail_tasks(job_id, 15, [5], "chunk gave up")
    status = board.status(job_id)
    assert (status["state"], status["done"], status["failed"], status["error"]) == ("cancelled", 2, 0, None)


def test_cancel_twice_and_cancel_an_ended_job_change_nothing(redis_db):
    board = JobBoard(redis_db)
    status, _ = board.start(16)
    first, now = board.cancel(status["id"], "first")
    again, now_again = board.cancel(status["id"], "second")
    assert now and not now_again and again == first and again["cancel_reason"] == "first"
    failed, _ = board.start(16)
    board.fail_job(failed["id"], 16, "broken", end_now=True)
    before = board.status(failed["id"])
    after, now = board.cancel(failed["id"])
    assert not now and after == before and after["state"] == "failed"
    with pytest.raises(JobNotFoundError):
        board.cancel("0" * 32)
    with pytest.raises(JobNotFoundError):
        board.cancel("x" * 500)


def test_a_chunk_running_when_its_job_is_cancelled_writes_nothing_more(checkpoint, redis_db, monkeypatch):
    server = FakeLabelStudio()
    try:
        for task in (1, 2, 3):
            server.add(f"/api/predictions/?task={task}", b"[]")
        server.add("/api/projects/17/import/predictions", b'{"created": 1}')
        services = build_services(settings_for(checkpoint, label_studio_url=server.url))
        monkeypatch.setattr(job_tasks, "_services", services)
        board = JobBoard(redis_db)
        status, _ = board.start(17, options=JobOptions(chunk_size=3, write_batch=1))
        tasks = [{"id": t, "image": f"/data/upload/17/{t}.png"} for t in (1, 2, 3)]
        plan = {
            "project": 17,
            "total": 3,
            "skipped": 0,
            "model_version": services.model.model_version,
            "from_name": "mask",
            "to_name": "image",
            "image_key": "image",
            "label": "Object",
        }
        assert board.commit_plan(status["id"], plan, [tasks], {}, JobOptions(chunk_size=3, write_batch=1))
        computed = []

        def regions(services_, segment, ls, task, planned, options):
            computed.append(task["id"])
            if task["id"] == 2:  # cancelled while task 2 is computed, before its write
                board.cancel(status["id"])
            return []

        monkeypatch.setattr(job_tasks, "task_regions", regions)
        chunk = Job.fetch(f"{status['id']}.0", connection=redis_db, serializer=JSONSerializer)
        monkeypatch.setattr(job_tasks, "get_current_job", lambda: chunk)
        job_tasks.run_chunk(status["id"], 0, tasks)

        assert computed == [1, 2]  # task 3 was not started
        writes = [r for r in server.requests if r[0] == "POST" and "import/predictions" in r[1]]
        assert len(writes) == 1  # task 1's; none after the cancellation
        status = board.status(status["id"])
        counts = (status["state"], status["done"], status["failed"], status["pending"])
        assert counts == ("cancelled", 1, 0, 2)
        assert board.outcome(status["id"], 2) is None and board.outcome(status["id"], 3) is None
        assert chunk.meta["cancelled"] is True
    finally:
        server.close()




# -- per-task write locks ----------------------------------------------------------------------------------


def test_task_locks_are_exclusive_and_a_waiting_writer_gets_them_after_release(redis_db, monkeypatch):
    locks = TaskLocks(redis_db)
    order = []
    second_waits = threading.Event()

    def pause(seconds: float) -> None:  # the second writer found task 2 locked and waits for it
        second_waits.set()
        time.sleep(seconds)

    monkeypatch.setattr(locks_module, "_pause", pause)
    with locks.hold("v1", [1, 2]) as held:

        def second_writer():
            with locks.hold("v1", [2, 3], wait_s=10):
                order.append("second")

        thread = threading.Thread(target=second_writer)
        thread.start()
        assert second_waits.wait(timeout=10)
        held.renew()
        order.append("first")
    thread.join(timeout=10)
    assert order == ["first", "second"]
    assert not redis_db.keys(f"{KEY_PREFIX}task:*")  # all released


def test_task_lock_held_elsewhere_makes_the_chunk_retry_later(redis_db):
    locks = TaskLocks(redis_db)
    redis_db.set(f"{KEY_PREFIX}task:v1:5", "someone-else", px=60_000)
    with pytest.raises(UpstreamError, match="another worker has been writing task 5"):
        with locks.hold("v1", [4, 5], wait_s=0.5):
            pass
    assert redis_db.get(f"{KEY_PREFIX}task:v1:4") is None  # the lock it did take is released
    with pytest.raises(UpstreamError, match="expired while held"):
        with locks.hold("v1", [6]) as held:
            redis_db.delete(f"{KEY_PREFIX}task:v1:6")  # expired while held
            held.renew()


def test_task_locks_left_to_expire_when_the_write_failed(redis_db):
    locks = TaskLocks(redis_db)
    with pytest.raises(RuntimeError):
        with locks.hold("v1", [8, 7]):
            raise RuntimeError("Label Studio timed out during the write")
    for task in (7, 8):  # a late write may still land: nobody may check these tasks before the locks expire
        assert 0 < redis_db.pttl(f"{KEY_PREFIX}task:v1:{task}") <= TASK_LOCK_TTL_S * 1000


def test_describe_failure_is_short_and_clear():
    from rq.exceptions import AbandonedJobError
    from rq.timeouts import JobTimeoutException

    assert (
        failures.describe_failure(LabelStudioUnavailable("Label Studio at X could not be reached"))
        == "Label Studio at X could not be reached"
    )
    assert "killed or lost" in failures.describe_failure(AbandonedJobError())
    assert "job_timeout" in failures.describe_failure(JobTimeoutException("Task exceeded maximum timeout value"))
    assert failures.describe_failure(KeyError("image")) == "KeyError: 'image'"
