"""The job workers' error boundary: what a failure means for the job, by the exception's type.

* A task's own bad input (:func:`classify_task_error`: unreadable or too large image, refused URL, missing
  image field) fails only that task (:class:`~backend.errors.TaskInputError`), with the reason recorded.
* Anything else fails the chunk (or the parent): Label Studio unreachable or answering 5xx
  (:class:`~backend.errors.LabelStudioUnavailable`), a timeout, a lost worker. RQ retries it with backoff;
  RQ's failure callbacks (:func:`on_plan_failure`, :func:`on_chunk_failure`) note each retry and, once the
  retries are spent, fail the chunk's unfinished tasks with the reason and so the job.
* Parts that RQ failed without calling those callbacks (a work horse killed, a parent gone from the queue)
  are settled by :func:`reconcile_jobs`, which every worker runs at its maintenance.

Reasons (:func:`describe_failure`) are short, with no traceback and no secret, fit for the jobs page.
"""

from __future__ import annotations

import logging

import redis
from rq.exceptions import AbandonedJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException

from litesam.errors import LiteSamError

from .. import errors
from ..errors import (
    BackendError,
    BadRequestError,
    ForbiddenURLError,
    LabelStudioUnavailable,
    PayloadTooLargeError,
    TaskInputError,
    UpstreamError,
)
from ..labelstudio.client import LabelStudioClient
from .board import JobBoard
from .layout import KEY_PREFIX, chunk_job_id
from .record import JobRecord

logger = logging.getLogger(__name__)


def classify_task_error(exc: Exception, where: str, ls: LabelStudioClient | None) -> Exception:
    """The exception to raise for an error met while doing one task (``where`` prefixes its message).

    Bad input of the task (:class:`~backend.errors.BadRequestError` and its kin, a
    :class:`~litesam.errors.LiteSamError`) becomes a :class:`TaskInputError`. A failed download counts as the
    task's own problem only while Label Studio answers (``ls``); when it does not, the whole chunk is retried
    (:class:`LabelStudioUnavailable`). Anything else is returned as it is (it fails the chunk).
    """
    if isinstance(exc, UpstreamError):
        if ls is not None and not ls.reachable():
            return LabelStudioUnavailable(f"{exc.message} (Label Studio at {ls.url} does not answer)")
        return TaskInputError(where + exc.message)
    if isinstance(exc, (BadRequestError, ForbiddenURLError, PayloadTooLargeError)):
        return TaskInputError(where + exc.message)
    if isinstance(exc, LiteSamError):
        return TaskInputError(where + str(exc))
    return exc


def describe_failure(exc: BaseException | None) -> str:
    """A short reason for a failed job or chunk, fit for the jobs page (no traceback, no secrets)."""
    if isinstance(exc, BackendError):
        return exc.message
    if isinstance(exc, AbandonedJobError):
        return "the worker running it stopped before finishing (killed or lost)"
    if isinstance(exc, JobTimeoutException):
        return "it ran longer than its job_timeout"
    if exc is None:
        return "failed"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1][:300]}" if text else type(exc).__name__


def on_plan_failure(job: Job, connection: redis.Redis, exc_type, exc_value, traceback) -> None:
    """RQ failure callback of the parent: note the retry, or fail the job once the retries are spent."""
    job_id = job.args[0]
    spent = _note_retry_or_give_up(job, connection, job_id, exc_value, "listing tasks")
    if spent is None:
        return
    board, record, reason, attempts = spent
    board.fail_job(job_id, record.project, f"{reason} (gave up after {attempts} attempt(s))", end_now=True)


def on_chunk_failure(job: Job, connection: redis.Redis, exc_type, exc_value, traceback) -> None:
    """RQ failure callback of a chunk: note the retry, or fail its unfinished tasks once retries are spent."""
    job_id, index, tasks = job.args
    spent = _note_retry_or_give_up(job, connection, job_id, exc_value, f"chunk {index + 1}")
    if spent is None:
        return
    board, record, reason, attempts = spent
    board.fail_tasks(
        job_id,
        record.project,
        [int(t["id"]) for t in tasks],
        f"{reason} (chunk {index + 1} gave up after {attempts} attempt(s))",
    )


def _note_retry_or_give_up(
    job: Job, connection: redis.Redis, job_id: str, exc_value: BaseException | None, step: str
) -> tuple[JobBoard, JobRecord, str, int] | None:
    """The common part of the failure callbacks. With retries left: note ``"{step}: {reason}; retrying"`` on
    the job and return None. Once they are spent: return (board, record, reason, attempts made), where the
    attempts are the first run plus every retry."""
    board = JobBoard(connection)
    reason = describe_failure(exc_value)
    if job.retries_left:
        board.note_retry(job_id, f"{step}: {reason}; retrying")
        return None
    record = board.job_record(job_id)
    return board, record, reason, record.options.retries + 1


def reconcile_jobs(connection: redis.Redis) -> int:
    """Settle the running jobs' parts that RQ failed without calling our failure callback (see
    :func:`reconcile_job`); returns how many running jobs were looked at. Workers call it at maintenance."""
    board = JobBoard(connection)
    looked_at = 0
    for key in connection.scan_iter(match=f"{KEY_PREFIX}project:*:active", count=500):
        job_id = connection.get(key)
        if job_id is None:
            continue
        try:
            record = board.job_record(job_id.decode())
        except errors.JobNotFoundError:
            continue
        if not record.ended:
            reconcile_job(board, record)
            looked_at += 1
    return looked_at


def reconcile_job(board: JobBoard, record: JobRecord) -> None:
    """Settle one job's parts that RQ failed without calling our failure callback (e.g. a work horse killed
    while its worker lived on): a failed or vanished parent fails the job, a failed chunk its tasks."""
    connection = board.connection
    if record.state in ("queued", "listing"):
        try:
            parent = Job.fetch(record.id, connection=connection, serializer=JSONSerializer)
        except NoSuchJobError:
            board.fail_job(
                record.id,
                record.project,
                "the job's planning step is gone from the queue (expired or deleted)",
                end_now=True,
            )
            return
        if parent.get_status(refresh=False) in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            board.fail_job(record.id, record.project, reason_from_rq(parent), end_now=True)
        return
    chunk_ids = {chunk_job_id(record.id, i) for i in range(len(record.chunks))}
    registry = FailedJobRegistry(record.options.queue, connection=connection, serializer=JSONSerializer)
    for failed_id in registry.get_job_ids():
        if failed_id in chunk_ids:
            try:
                chunk = Job.fetch(failed_id, connection=connection, serializer=JSONSerializer)
            except NoSuchJobError:
                continue
            tasks = [t["id"] for t in chunk.args[2]]
            board.fail_tasks(record.id, record.project, tasks, reason_from_rq(chunk))


def reason_from_rq(job: Job) -> str:
    """The reason RQ stored for a failed job: the last line of its exception text, where an error of
    :mod:`backend.errors` (named by its class) gives just its message."""
    result = job.latest_result()
    text = (result.exc_string or "") if result is not None else ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "failed"
    name, separator, message = last.partition(": ")
    error_class = getattr(errors, name.rsplit(".", 1)[-1], None) if separator else None
    if isinstance(error_class, type) and issubclass(error_class, BackendError):
        last = message
    return last[:400]
