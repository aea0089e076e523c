"""Pre-annotate whole projects: SegEvery on RQ workers, written back to Label Studio as predictions.

A *pre-annotation job* is one RQ parent job and its chunk jobs, all on the queue :data:`QUEUE_NAME`::

    start_job(project)  ─▶ plan_project(job_id)            parent, any worker
                             lists the tasks (label-studio-sdk, resolve_uri=False), skips tasks holding a
                             prediction of our model version (with ``overwrite``: deletes only ours first),
                             enqueues the chunks in the same Redis transaction that records the plan
                        ─▶ run_chunk(job_id, index, tasks)   any worker, in parallel
                             image → embedding (get or compute, stored in Redis for later clicks) → SegEvery →
                             one brushlabels region per mask → projects.import_predictions in batches

Job functions take JSON arguments only (ids and task URIs; the queue uses RQ's JSON serializer) and find the
process's model, embedding store and image fetcher through :func:`use_services` (set once by the worker).

**Records** (Redis, prefix :data:`KEY_PREFIX`): ``job:<id>`` is a hash with the request, the plan and the
counters ``total``/``skipped``/``done``/``failed``; ``job:<id>:tasks`` holds each finished task's outcome
(``done`` with its region count, or ``failed`` with the reason); ``jobs`` orders the ids by creation;
``project:<n>:active`` is the project's running job (one at a time: a second request gets that job). The
counters change only inside Lua scripts together with the outcome they count, so progress is exact however
often a chunk is retried. :func:`job_status` is the one view of a job: ``GET /jobs/<id>``, the jobs page and
``litesam-backend preannotate --wait`` all show it; a copy of the progress is also kept in the parent RQ
job's ``meta`` (and each chunk's own progress in its ``meta``).

**No duplicates.** A task's prediction is written at most once per model version: right before writing, the
writer holds a per-task lock ``task:<model version>:<task id>`` (SET NX with a timeout, renewed before every
Label Studio call) and asks Label Studio whether the task already holds a prediction of our version — so a
chunk re-run after its worker was killed between the write and the bookkeeping finds its own earlier write
and does not repeat it. Chunks partition the tasks, and a chunk runs on one worker at a time.

**Failures.** Bad input of one task (unreadable or too large image, refused URL, missing image field) fails
only that task, with the reason recorded. Anything else fails the chunk (or the parent): Label Studio
unreachable or answering 5xx, a timeout, a lost worker. RQ retries it with backoff (``Retry``); when the
retries are spent, the chunk's unfinished tasks are failed with the reason and the job ends ``failed``.

**Cancelling** (:meth:`JobBoard.cancel`: ``DELETE /jobs/<id>``, ``preannotate --cancel``) ends a job that has
not ended: its record turns ``cancelled`` with the reason and the project's active key is released in one Lua
script (a new job for the project can start at once), then its parent and chunk RQ jobs that wait (queued,
scheduled for a retry, deferred) are cancelled in RQ. A chunk already running checks the record's state before
each task and before each Label Studio write (the parent before each deletion of ``overwrite``), and stops
there: nothing is written after the cancellation (except a write already under way), and the tasks it did not
do stay without an outcome, counted neither done nor failed. A ``done`` that lands after the cancellation is
still counted (the prediction is in Label Studio); a ``failed`` is not.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any

import httpx
import redis
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.types import PredictionRequest
from rq import Queue, Retry, get_current_job
from rq.exceptions import AbandonedJobError, NoSuchJobError
from rq.job import Callback, Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException

from litesam.build import get_variant
from litesam.errors import LiteSamError
from litesam.everything import SegEvery, SegEveryConfig
from litesam.predictor import ImageEmbedding

from .errors import (
    BackendError,
    BadRequestError,
    ConfigurationError,
    ForbiddenURLError,
    PayloadTooLargeError,
    UpstreamError,
)
from .images import decode_image
from .label_config import parse_label_config
from .results import brush_region, prediction
from .services import Services, build_services
from .settings import Settings

logger = logging.getLogger(__name__)

#: The RQ queue of parent and chunk jobs (workers listen on it; ``JobOptions.queue`` can name another).
QUEUE_NAME = "litesam-preannotate"
#: Prefix of every Redis key of this module; bump the version when the record layout changes.
KEY_PREFIX = "litesam:jobs:v1:"
#: Job states. ``queued`` → ``listing`` (parent running) → ``running`` (chunks) → ``finished`` | ``failed``;
#: any state before the end → ``cancelled`` (:meth:`JobBoard.cancel`).
STATES = ("queued", "listing", "running", "finished", "failed", "cancelled")
TERMINAL_STATES = ("finished", "failed", "cancelled")
#: RQ states of a job that has not started yet: these are cancelled in RQ when the pre-annotation job is.
_WAITING_RQ_STATES = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED)
#: Seconds a job record stays in Redis after it was created (it is also what ``GET /jobs`` can list).
RECORD_TTL_S = 30 * 24 * 3600
#: Lifetime of a per-task write lock; renewed before every Label Studio call, so only a dead holder's expires.
TASK_LOCK_TTL_S = 60.0
#: Timeout of one Label Studio API call made by a job.
LABEL_STUDIO_TIMEOUT_S = 30.0
#: Per-task failure reasons listed by :func:`job_status` (the counters always count all of them).
FAILURES_SHOWN = 200


class JobNotFoundError(BackendError):
    """No pre-annotation job with this id (never created, or its record expired)."""

    status = 404


class QueueUnavailableError(BackendError):
    """Redis (the job queue) does not answer: jobs can be neither queued nor read."""

    status = 503


class JobBusyError(BackendError):
    """The project's running job does not cover the tasks asked for; they can be queued once it ends."""

    status = 409


class LabelStudioUnavailable(UpstreamError):
    """Label Studio could not be reached or answered with a server error: the chunk is retried later."""


class _TaskFailure(Exception):
    """One task cannot be pre-annotated (its own input is bad); the reason is recorded for that task only."""


# ---------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class JobOptions:
    """Per-job settings, JSON in and out (``POST /jobs {"options": {...}}``, ``preannotate`` flags).

    Attributes:
        label: the BrushLabels label of every region; default the first label of the first ``<BrushLabels>``.
        chunk_size: tasks per chunk job (the unit of parallelism and of retries).
        write_batch: predictions per ``import_predictions`` call (a batch is also cut at ~16 MB of RLE).
        max_masks: most regions written per image (SegEvery ranks them best first).
        pred_iou_thresh, stability_score_thresh, box_nms_thresh, points_per_batch: SegEvery's filters and
            batch size (defaults: SegEvery's own, i.e. SAM's automatic-mask-generator values).
        proposal_score_thresh: AutoPPN's minimum proposal confidence; None = the variant's default.
        job_timeout: seconds a chunk job may run (the parent gets the same) before RQ stops it.
        result_ttl, failure_ttl: seconds RQ keeps finished / failed job data.
        retries: how often a failed chunk or parent is retried.
        retry_intervals: backoff in seconds before each retry (the last value repeats).
        queue: the RQ queue the jobs go to.
    """

    label: str | None = None
    chunk_size: int = 8
    write_batch: int = 8
    max_masks: int = 100
    pred_iou_thresh: float = SegEveryConfig.pred_iou_thresh
    stability_score_thresh: float = SegEveryConfig.stability_score_thresh
    box_nms_thresh: float = SegEveryConfig.box_nms_thresh
    points_per_batch: int = SegEveryConfig.points_per_batch
    proposal_score_thresh: float | None = None
    job_timeout: int = 1800
    result_ttl: int = 7 * 24 * 3600
    failure_ttl: int = 7 * 24 * 3600
    retries: int = 3
    retry_intervals: tuple[int, ...] = (10, 60, 300)
    queue: str = QUEUE_NAME

    @classmethod
    def from_json(cls, raw: object, defaults: str = "{}") -> JobOptions:
        """Options from a JSON object on top of ``defaults`` (a JSON object's text, e.g.
        ``Settings.job_defaults``); unknown keys and bad values raise :class:`BadRequestError`."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise BadRequestError(f"'options' must be a JSON object, got {type(raw).__name__}")
        raw = {**json.loads(defaults), **raw}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise BadRequestError(
                f"unknown job option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values = {}
        for name, value in raw.items():
            values[name] = _option_value(name, value)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["retry_intervals"] = list(self.retry_intervals)
        return data

    def retry(self) -> Retry:
        return Retry(max=self.retries, interval=list(self.retry_intervals))

    def segevery_config(self, variant: str) -> SegEveryConfig:
        """SegEvery settings: our filters on top of the variant's AutoPPN proposal defaults."""
        proposals = get_variant(variant).proposals
        if self.proposal_score_thresh is not None:
            proposals = type(proposals)(
                **{**asdict(proposals), "score_threshold": self.proposal_score_thresh}
            )
        return SegEveryConfig(
            points_per_batch=self.points_per_batch,
            pred_iou_thresh=self.pred_iou_thresh,
            stability_score_thresh=self.stability_score_thresh,
            box_nms_thresh=self.box_nms_thresh,
            proposals=proposals,
            max_masks=self.max_masks,
        )


_UNIT_FLOATS = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "proposal_score_thresh")
_POSITIVE_INTS = (
    "chunk_size",
    "write_batch",
    "max_masks",
    "points_per_batch",
    "job_timeout",
    "result_ttl",
    "failure_ttl",
    "retries",
)


def _option_value(name: str, value: object) -> object:
    if name == "label":
        if value is not None and (not isinstance(value, str) or not value):
            raise BadRequestError("option 'label' must be a non-empty string (a BrushLabels label) or null")
        return value
    if name == "queue":
        if not isinstance(value, str) or not value or len(value) > 100:
            raise BadRequestError("option 'queue' must be a queue name (1 to 100 characters)")
        return value
    if name == "retry_intervals":
        if not isinstance(value, list) or not value or not all(_is_int(v) and v >= 0 for v in value):
            raise BadRequestError(
                "option 'retry_intervals' must be a non-empty list of seconds (integers ≥ 0)"
            )
        return tuple(value)
    if name in _UNIT_FLOATS:
        if value is None and name == "proposal_score_thresh":
            return None
        if not _is_number(value) or not 0.0 <= value <= 1.0:
            raise BadRequestError(f"option {name!r} must be a number from 0 to 1, got {value!r}")
        return float(value)
    if name in _POSITIVE_INTS:
        if not _is_int(value) or value < 1:
            raise BadRequestError(f"option {name!r} must be a positive integer, got {value!r}")
        return value
    raise BadRequestError(f"unknown job option {name!r}")  # from_json checked the names already


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


# --------------------------------------------------------------------------------------------- services
_services: Services | None = None


def use_services(services: Services) -> None:
    """Give job functions this process's model, store and fetcher (the worker calls it once at start)."""
    global _services
    _services = services


def _current_services() -> Services:
    """The services set by :func:`use_services`, else built once from the environment (a plain ``rq worker``)."""
    global _services
    if _services is None:
        logger.info("job functions build their services from the environment (no worker preloaded them)")
        _services = build_services(Settings.from_env())
    return _services


def redis_connection(settings: Settings) -> redis.Redis:
    """A Redis client for the job queue and records (binary replies, as RQ needs)."""
    return redis.Redis.from_url(settings.redis_url.reveal(), socket_connect_timeout=2.0, socket_timeout=30.0)


def queue(connection: redis.Redis, name: str = QUEUE_NAME) -> Queue:
    """The RQ queue ``name`` with the JSON serializer every job of this module uses."""
    return Queue(name, connection=connection, serializer=JSONSerializer)


# ---------------------------------------------------------------------------------------------- records
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _record_key(job_id: str) -> str:
    return f"{KEY_PREFIX}job:{job_id}"


def _tasks_key(job_id: str) -> str:
    return f"{KEY_PREFIX}job:{job_id}:tasks"


def _attempts_key(job_id: str) -> str:
    return f"{KEY_PREFIX}job:{job_id}:attempts"


def _active_key(project: int) -> str:
    return f"{KEY_PREFIX}project:{project}:active"


_JOBS_KEY = f"{KEY_PREFIX}jobs"

# Ends the job when every task has an outcome. KEYS: record, active; ARGV: job id, now.
_FINISH_IF_COMPLETE = """
local function finish_if_complete(record, active, job_id, now)
  if redis.call('HGET', record, 'state') ~= 'running' then return 0 end
  local total = tonumber(redis.call('HGET', record, 'total') or '-1')
  local n = 0
  for _, name in ipairs({'done', 'failed', 'skipped'}) do
    n = n + tonumber(redis.call('HGET', record, name) or '0')
  end
  if total < 0 or n < total then return 0 end
  local err = redis.call('HGET', record, 'error')
  local final = 'finished'
  if err and err ~= '' then final = 'failed' end
  redis.call('HSET', record, 'state', final, 'finished_at', now)
  if redis.call('GET', active) == job_id then redis.call('DEL', active) end
  return 1
end
"""

# Ends the job if every task is settled. KEYS: record, active; ARGV: job id, now.
_FINISH = _FINISH_IF_COMPLETE + "return finish_if_complete(KEYS[1], KEYS[2], ARGV[1], ARGV[2])"

# Records one task's outcome. KEYS: record, tasks, active; ARGV: task id, status, outcome JSON, regions, job id,
# now. A task's first outcome counts; a later 'done' may replace a 'failed', nothing replaces a 'done'. Once
# the job is cancelled only a 'done' counts (that prediction was written); other tasks get no outcome.
_RECORD_OUTCOME = (
    _FINISH_IF_COMPLETE
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state == 'cancelled' and ARGV[2] ~= 'done' then return 0 end
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then
  local old_status = cjson.decode(old)['status']
  if old_status == 'done' or old_status == ARGV[2] then return 0 end
  redis.call('HINCRBY', KEYS[1], old_status, -1)
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
if ARGV[2] == 'done' then redis.call('HINCRBY', KEYS[1], 'regions', tonumber(ARGV[4])) end
redis.call('EXPIRE', KEYS[2], redis.call('TTL', KEYS[1]))
finish_if_complete(KEYS[1], KEYS[3], ARGV[5], ARGV[6])
return 1
"""
)

# Marks the job failed with a reason (first reason wins) and ends it if nothing is pending. KEYS: record,
# active; ARGV: reason, job id, now, end_now ('1': end even with tasks pending, e.g. the parent failed).
_FAIL_JOB = (
    _FINISH_IF_COMPLETE
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state == 'finished' or state == 'failed' or state == 'cancelled' then return 0 end
local err = redis.call('HGET', KEYS[1], 'error')
if not err or err == '' then redis.call('HSET', KEYS[1], 'error', ARGV[1]) end
if ARGV[4] == '1' or state ~= 'running' then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'finished_at', ARGV[3])
  if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
  return 1
end
finish_if_complete(KEYS[1], KEYS[2], ARGV[2], ARGV[3])
return 1
"""
)

# Cancels a job that has not ended. KEYS: record, active; ARGV: job id, now, reason. Returns -1: no such job,
# 0: it had already ended (nothing changes), 1: cancelled now.
_CANCEL_JOB = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state == 'finished' or state == 'failed' or state == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[2], 'cancel_reason', ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""

# The parent starts listing, unless the job was cancelled (or has ended) meanwhile. KEYS: record; ARGV: now.
_BEGIN_LISTING = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'listing' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'listing')
if not redis.call('HGET', KEYS[1], 'started_at') then redis.call('HSET', KEYS[1], 'started_at', ARGV[1]) end
return 1
"""

# Releases or renews a lock only while it still holds our token. KEYS: lock; ARGV: token, ttl ms (renew only).
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class JobBoard:
    """The records of pre-annotation jobs in Redis: create, read, and the atomic progress updates."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self._record_outcome = connection.register_script(_RECORD_OUTCOME)
        self._fail_job = connection.register_script(_FAIL_JOB)
        self._release = connection.register_script(_RELEASE_LOCK)
        self._renew = connection.register_script(_RENEW_LOCK)
        self._finish = connection.register_script(_FINISH)
        self._cancel = connection.register_script(_CANCEL_JOB)
        self._begin_listing = connection.register_script(_BEGIN_LISTING)

    # -- starting ----------------------------------------------------------------------------------------
    def start(
        self,
        project: int,
        *,
        overwrite: bool = False,
        task_ids: Sequence[int] | None = None,
        options: JobOptions | None = None,
        source: str = "api",
    ) -> tuple[dict, bool]:
        """Start pre-annotating ``project`` (all tasks, or ``task_ids``), unless a job for it is running.

        Returns:
            (status of the job, created): the new job, or the project's running job with ``created`` False.
        Raises:
            BadRequestError: a malformed project id or task id list.
        """
        if not _is_int(project) or project < 1:
            raise BadRequestError(f"'project' must be a positive integer project id, got {project!r}")
        if task_ids is not None:
            if (
                not isinstance(task_ids, (list, tuple))
                or not task_ids
                or not all(_is_int(t) and t > 0 for t in task_ids)
            ):
                raise BadRequestError("'tasks' must be a non-empty list of positive integer task ids")
            task_ids = sorted(set(task_ids))
        options = options or JobOptions()
        job_id = uuid.uuid4().hex
        active_key = _active_key(project)
        jobs_queue = queue(self.connection, options.queue)
        while True:
            with self.connection.pipeline() as pipe:
                try:
                    pipe.watch(active_key)
                    current = pipe.get(active_key)
                    if current is not None:
                        running = self._status_or_none(current.decode())
                        if running is not None and running["state"] not in TERMINAL_STATES:
                            return running, False
                    pipe.multi()
                    pipe.set(active_key, job_id)
                    pipe.hset(
                        _record_key(job_id),
                        mapping={
                            "id": job_id,
                            "project": project,
                            "overwrite": int(bool(overwrite)),
                            "task_ids": json.dumps(task_ids) if task_ids is not None else "",
                            "options": json.dumps(options.to_json()),
                            "source": source,
                            "state": "queued",
                            "created_at": _now(),
                            "error": "",
                        },
                    )
                    pipe.expire(_record_key(job_id), RECORD_TTL_S)
                    pipe.zadd(_JOBS_KEY, {job_id: time.time()})
                    jobs_queue.enqueue_call(
                        plan_project,
                        args=(job_id,),
                        job_id=job_id,
                        timeout=options.job_timeout,
                        result_ttl=options.result_ttl,
                        failure_ttl=options.failure_ttl,
                        retry=options.retry(),
                        on_failure=Callback(on_plan_failure),
                        description=f"pre-annotate project {project} (plan)",
                        meta={"litesam_job": job_id, "project": project},
                        pipeline=pipe,
                    )
                    pipe.execute()
                except redis.WatchError:
                    continue
            logger.info(
                "job %s: pre-annotate project %d (%s, overwrite=%s, tasks=%s)",
                job_id,
                project,
                source,
                bool(overwrite),
                "all" if task_ids is None else len(task_ids),
            )
            return self.status(job_id), True

    # -- cancelling --------------------------------------------------------------------------------------
    def cancel(self, job_id: str, reason: str = "cancelled by request") -> tuple[dict, bool]:
        """Cancel the job unless it has ended (see the module docstring); safe to repeat.

        The record turns ``cancelled`` and the project's active key is released atomically; then the parent
        and chunk RQ jobs still waiting are cancelled in RQ. That second step runs again for a job that is
        already ``cancelled``, so a cancellation cut short (Redis lost in between) is completed by a repeat.

        Returns:
            (status of the job, cancelled now): ``False`` when it had already ended (finished, failed or
            cancelled before); its status is then unchanged.
        Raises:
            JobNotFoundError: no such job.
        """
        record = self.record_fields(job_id) if isinstance(job_id, str) and 0 < len(job_id) <= 64 else None
        if record is None:
            raise JobNotFoundError(f"no pre-annotation job {job_id!r} (unknown, or its record expired)")
        changed = self._cancel(
            keys=[_record_key(job_id), _active_key(int(record["project"]))], args=[job_id, _now(), reason]
        )
        if changed == -1:  # expired in between
            raise JobNotFoundError(f"no pre-annotation job {job_id!r} (unknown, or its record expired)")
        record = self.record_fields(job_id)  # its chunks: no plan is committed after the cancellation
        if record["state"] == "cancelled":
            self._cancel_rq_jobs(job_id, record)
        if changed == 1:
            logger.info("job %s: cancelled (%s)", job_id, reason)
            self._mirror_progress(job_id)
        return self.status(job_id), changed == 1

    def _cancel_rq_jobs(self, job_id: str, record: dict) -> None:
        """Cancel the parent and chunk RQ jobs that have not started (running ones stop by themselves)."""
        chunks = len(json.loads(record.get("chunks") or "[]"))
        for rq_id in [job_id] + [_chunk_job_id(job_id, i) for i in range(chunks)]:
            try:
                rq_job = Job.fetch(rq_id, connection=self.connection, serializer=JSONSerializer)
            except NoSuchJobError:
                continue
            if rq_job.get_status(refresh=False) in _WAITING_RQ_STATES:
                rq_job.cancel()

    def is_cancelled(self, job_id: str) -> bool:
        """Whether the job was cancelled (job functions ask before each task and each write)."""
        return self.connection.hget(_record_key(job_id), "state") == b"cancelled"

    # -- reading -----------------------------------------------------------------------------------------
    def status(self, job_id: str, failures_shown: int = FAILURES_SHOWN) -> dict:
        """The job as ``GET /jobs/<id>`` shows it (see :func:`job_status`).

        Raises:
            JobNotFoundError: no such job.
        """
        found = self._status_or_none(job_id, failures_shown)
        if found is None:
            raise JobNotFoundError(f"no pre-annotation job {job_id!r} (unknown, or its record expired)")
        return found

    def recent(self, limit: int = 50) -> list[dict]:
        """The newest jobs first, without their per-task failures."""
        statuses = []
        for raw in self.connection.zrevrange(_JOBS_KEY, 0, limit - 1):
            found = self._status_or_none(raw.decode(), failures_shown=0)
            if found is None:
                self.connection.zrem(_JOBS_KEY, raw)  # the record expired
            else:
                statuses.append(found)
        return statuses

    def _status_or_none(self, job_id: str, failures_shown: int = FAILURES_SHOWN) -> dict | None:
        if not isinstance(job_id, str) or not job_id or len(job_id) > 64:
            return None
        record = self._record(job_id)
        if record is None:
            return None
        if record["state"] not in TERMINAL_STATES:
            self._reconcile(record)
            record = self._record(job_id) or record
        return _status_view(record, self._failures(job_id, failures_shown) if failures_shown else [])

    def _record(self, job_id: str) -> dict | None:
        raw = self.connection.hgetall(_record_key(job_id))
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    def _failures(self, job_id: str, limit: int) -> list[dict]:
        failures = []
        for task, raw in self.connection.hscan_iter(_tasks_key(job_id), count=500):
            outcome = json.loads(raw)
            if outcome.get("status") == "failed":
                failures.append({"task": int(task), "reason": outcome.get("reason", "")})
        failures.sort(key=lambda f: f["task"])
        return failures[:limit]

    def record_fields(self, job_id: str) -> dict:
        """The raw record hash (strings); raises :class:`JobNotFoundError`."""
        record = self._record(job_id)
        if record is None:
            raise JobNotFoundError(f"no pre-annotation job {job_id!r} (unknown, or its record expired)")
        return record

    def outcome(self, job_id: str, task_id: int) -> dict | None:
        raw = self.connection.hget(_tasks_key(job_id), str(task_id))
        return json.loads(raw) if raw is not None else None

    def attempts(self, job_id: str) -> dict[int, int]:
        """How often each task was computed (SegEvery run) for this job; tests assert no task ran twice."""
        raw = self.connection.hgetall(_attempts_key(job_id))
        return {int(k): int(v) for k, v in raw.items()}

    # -- progress (called by job functions) --------------------------------------------------------------
    def set_fields(self, job_id: str, **values: object) -> None:
        self.connection.hset(_record_key(job_id), mapping={k: _field(v) for k, v in values.items()})

    def begin_listing(self, job_id: str) -> bool:
        """Move the job to ``listing`` (the parent runs); False if it was cancelled or ended meanwhile."""
        return self._begin_listing(keys=[_record_key(job_id)], args=[_now()]) == 1

    def count_attempt(self, job_id: str, task_id: int) -> None:
        with self.connection.pipeline() as pipe:
            pipe.hincrby(_attempts_key(job_id), str(task_id), 1)
            pipe.expire(_attempts_key(job_id), RECORD_TTL_S)
            pipe.execute()

    def record_outcome(
        self,
        job_id: str,
        project: int,
        task_id: int,
        status: str,
        *,
        regions: int = 0,
        reason: str = "",
        note: str = "",
        worker: str = "",
    ) -> bool:
        """Record a task's outcome (``done`` or ``failed``) and count it, atomically; True if it counted."""
        outcome: dict[str, Any] = {"status": status, "at": _now()}
        if worker:
            outcome["worker"] = worker
        if status == "done":
            outcome["regions"] = regions
        if reason:
            outcome["reason"] = reason
        if note:
            outcome["note"] = note
        changed = self._record_outcome(
            keys=[_record_key(job_id), _tasks_key(job_id), _active_key(project)],
            args=[str(task_id), status, json.dumps(outcome), regions, job_id, _now()],
        )
        self._mirror_progress(job_id)
        return changed == 1

    def fail_job(self, job_id: str, project: int, reason: str, *, end_now: bool) -> None:
        """Mark the job failed with ``reason``; with ``end_now`` at once, else when its last task is settled."""
        self._fail_job(
            keys=[_record_key(job_id), _active_key(project)],
            args=[reason, job_id, _now(), "1" if end_now else "0"],
        )
        self._mirror_progress(job_id)

    def fail_tasks(self, job_id: str, project: int, task_ids: Sequence[int], reason: str) -> None:
        """A chunk gave up: its tasks without an outcome fail with ``reason``, and so does the job."""
        self._fail_job(keys=[_record_key(job_id), _active_key(project)], args=[reason, job_id, _now(), "0"])
        for task_id in task_ids:
            if self.outcome(job_id, task_id) is None:
                self.record_outcome(job_id, project, task_id, "failed", reason=reason)

    def note_retry(self, job_id: str, reason: str) -> None:
        """Show why a part of the job is being retried (cleared from view once the job ends)."""
        with self.connection.pipeline() as pipe:
            pipe.hset(_record_key(job_id), mapping={"last_error": reason, "last_error_at": _now()})
            pipe.hincrby(_record_key(job_id), "retries", 1)
            pipe.execute()

    def commit_plan(
        self, job_id: str, plan: dict, chunks: list[list[dict]], missing: dict[int, str], options: JobOptions
    ) -> bool:
        """Record the plan and enqueue its chunk jobs in one transaction; False if it was committed before.

        ``plan`` holds the record fields (total, skipped, model_version, tags …); ``missing`` maps requested
        task ids that are not in the project to their failure reason. With nothing to do the job ends here.
        """
        record_key = _record_key(job_id)
        chunk_queue = queue(self.connection, options.queue)
        project = int(plan["project"])
        with self.connection.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(record_key)
                    if pipe.hget(record_key, "state") not in (b"queued", b"listing"):
                        return False
                    pipe.multi()
                    fields_ = {k: _field(v) for k, v in plan.items()}
                    fields_["state"] = "running"
                    fields_["chunks"] = json.dumps([[t["id"] for t in chunk] for chunk in chunks])
                    fields_["failed"] = len(missing)
                    pipe.hset(record_key, mapping=fields_)
                    for task_id, reason in missing.items():
                        outcome = {"status": "failed", "reason": reason, "at": _now()}
                        pipe.hset(_tasks_key(job_id), str(task_id), json.dumps(outcome))
                    pipe.expire(_tasks_key(job_id), RECORD_TTL_S)
                    for index, tasks in enumerate(chunks):
                        chunk_queue.enqueue_call(
                            run_chunk,
                            args=(job_id, index, tasks),
                            job_id=_chunk_job_id(job_id, index),
                            timeout=options.job_timeout,
                            result_ttl=options.result_ttl,
                            failure_ttl=options.failure_ttl,
                            retry=options.retry(),
                            on_failure=Callback(on_chunk_failure),
                            description=f"pre-annotate project {project} (chunk {index + 1}/{len(chunks)})",
                            meta={
                                "litesam_job": job_id,
                                "chunk": index,
                                "tasks": len(tasks),
                                "done": 0,
                                "failed": 0,
                            },
                            pipeline=pipe,
                        )
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self._finish(keys=[record_key, _active_key(project)], args=[job_id, _now()])  # e.g. all skipped
        self._mirror_progress(job_id)
        return True

    # -- per-task write locks ----------------------------------------------------------------------------
    @contextmanager
    def task_locks(
        self, model_version: str, task_ids: Sequence[int], wait_s: float = TASK_LOCK_TTL_S + 15
    ) -> Iterator[_HeldLocks]:
        """Hold the write locks of ``task_ids`` (waiting for other holders up to ``wait_s`` seconds).

        Locks are taken in task id order (two writers never wait for each other in a cycle). They are released
        when the block ends normally; when it raises — say a write to Label Studio timed out, which Label Studio
        may still carry out — they are left to expire (:data:`TASK_LOCK_TTL_S`), so that nobody checks those
        tasks for an existing prediction before such a late write has landed.

        Raises:
            UpstreamError: another process kept a lock longer than ``wait_s`` (the chunk is retried later).
        """
        token = uuid.uuid4().hex
        keys = [f"{KEY_PREFIX}task:{model_version}:{t}" for t in sorted(set(task_ids))]
        held: list[str] = []
        deadline = time.monotonic() + wait_s
        for key in keys:
            while not self.connection.set(key, token, nx=True, px=int(TASK_LOCK_TTL_S * 1000)):
                if time.monotonic() > deadline:
                    self._release_all(held, token)
                    raise UpstreamError(
                        f"another worker has been writing task {key.rsplit(':', 1)[-1]} for over "
                        f"{wait_s:.0f} s; the chunk will be retried"
                    )
                time.sleep(0.2)
            held.append(key)
        yield _HeldLocks(self, held, token)
        self._release_all(held, token)

    def _release_all(self, keys: list[str], token: str) -> None:
        for key in keys:
            self._release(keys=[key], args=[token])

    # -- reconciliation ----------------------------------------------------------------------------------
    def _reconcile(self, record: dict) -> None:
        """Settle parts of a job that RQ failed without calling our failure callback (e.g. a work horse
        killed while its worker lived on): a failed parent fails the job, a failed chunk its tasks."""
        job_id = record["id"]
        project = int(record["project"])
        options = JobOptions.from_json(json.loads(record["options"]))
        if record["state"] in ("queued", "listing"):
            try:
                parent = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
            except NoSuchJobError:
                self.fail_job(
                    job_id,
                    project,
                    "the job's planning step is gone from the queue (expired or deleted)",
                    end_now=True,
                )
                return
            if parent.get_status(refresh=False) in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
                self.fail_job(job_id, project, _reason_from_rq(parent), end_now=True)
            return
        chunk_ids = {
            _chunk_job_id(job_id, i): i for i in range(len(json.loads(record.get("chunks") or "[]")))
        }
        registry = FailedJobRegistry(options.queue, connection=self.connection, serializer=JSONSerializer)
        for failed_id in registry.get_job_ids():
            if failed_id in chunk_ids:
                try:
                    chunk = Job.fetch(failed_id, connection=self.connection, serializer=JSONSerializer)
                except NoSuchJobError:
                    continue
                tasks = [t["id"] for t in chunk.args[2]]
                self.fail_tasks(job_id, project, tasks, _reason_from_rq(chunk))

    def _mirror_progress(self, job_id: str) -> None:
        """Copy the counters into the parent RQ job's ``meta['progress']`` (never an older copy over a newer)."""
        record_key = _record_key(job_id)
        parent = Job(job_id, connection=self.connection, serializer=JSONSerializer)
        with self.connection.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(record_key, parent.key)
                    raw_meta = pipe.hget(parent.key, "meta")
                    record = pipe.hgetall(record_key)
                    if raw_meta is None or not record:
                        return
                    meta = JSONSerializer.loads(raw_meta)
                    meta["progress"] = _progress({k.decode(): v.decode() for k, v in record.items()})
                    pipe.multi()
                    pipe.hset(parent.key, "meta", JSONSerializer.dumps(meta))
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue


class _HeldLocks:
    """Per-task locks held by :meth:`JobBoard.task_locks`; ``renew()`` before each slow call."""

    def __init__(self, board: JobBoard, keys: list[str], token: str) -> None:
        self._board = board
        self._keys = keys
        self._token = token

    def renew(self) -> None:
        for key in self._keys:
            if not self._board._renew(keys=[key], args=[self._token, int(TASK_LOCK_TTL_S * 1000)]):
                raise UpstreamError(
                    "a task write lock expired while held (this worker stalled); the chunk will be retried"
                )


def _field(value: object) -> str | int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    if value is None:
        return ""
    return json.dumps(value)


def _chunk_job_id(job_id: str, index: int) -> str:
    return f"{job_id}.{index}"


def _progress(record: dict) -> dict:
    total = int(record["total"]) if record.get("total") not in (None, "") else None
    done, failed, skipped = (int(record.get(k) or 0) for k in ("done", "failed", "skipped"))
    settled = done + failed + skipped
    return {
        "total": total,
        "done": done,
        "failed": failed,
        "skipped": skipped,
        "pending": None if total is None else max(total - settled, 0),
        "percent": (100.0 if total == 0 else round(100.0 * settled / total, 1)) if total is not None else 0.0,
        "regions": int(record.get("regions") or 0),
    }


def _status_view(record: dict, failures: list[dict]) -> dict:
    task_ids = json.loads(record["task_ids"]) if record.get("task_ids") else None
    view = {
        "id": record["id"],
        "project": int(record["project"]),
        "state": record["state"],
        "overwrite": record.get("overwrite") == "1",
        "source": record.get("source", ""),
        "tasks": task_ids,
        **_progress(record),
        "model_version": record.get("model_version") or None,
        "label": record.get("label") or None,
        "created_at": record.get("created_at") or None,
        "started_at": record.get("started_at") or None,
        "finished_at": record.get("finished_at") or None,
        "error": record.get("error") or None,
        "cancel_reason": record.get("cancel_reason") or None,
        "retries": int(record.get("retries") or 0),
        "last_error": None,
        "failures": failures,
    }
    if record["state"] not in TERMINAL_STATES and record.get("last_error"):
        view["last_error"] = record["last_error"]
    return view


def job_status(connection: redis.Redis, job_id: str) -> dict:
    """One job's state and progress: ``id, project, state, overwrite, source, tasks, total, done, failed,
    skipped, pending, percent, regions, model_version, label, created_at, started_at, finished_at, error,
    cancel_reason, retries, last_error, failures`` (``[{"task", "reason"}]``). ``total`` is None until the
    tasks are listed.

    Raises:
        JobNotFoundError: no such job.
    """
    return JobBoard(connection).status(job_id)


def start_job(connection: redis.Redis, project: int, **kwargs: Any) -> tuple[dict, bool]:
    """Shortcut for :meth:`JobBoard.start`."""
    return JobBoard(connection).start(project, **kwargs)


def cancel_job(
    connection: redis.Redis, job_id: str, reason: str = "cancelled by request"
) -> tuple[dict, bool]:
    """Shortcut for :meth:`JobBoard.cancel`."""
    return JobBoard(connection).cancel(job_id, reason)


# ------------------------------------------------------------------------------------------ Label Studio
class LabelStudioClient:
    """The few Label Studio calls a job makes, with errors turned into clear backend errors.

    Connection failures, timeouts and 5xx answers raise :class:`LabelStudioUnavailable` (the job is retried);
    other HTTP errors raise :class:`UpstreamError` with Label Studio's answer.
    """

    def __init__(self, settings: Settings) -> None:
        if settings.label_studio_url is None or settings.label_studio_api_key is None:
            raise ConfigurationError(
                "pre-annotation needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to read "
                "tasks and write predictions"
            )
        self.url = settings.label_studio_url
        self._api_key = settings.label_studio_api_key
        self._client: LabelStudio | None = None

    @property
    def client(self) -> LabelStudio:
        if self._client is None:
            with self.calling("connect"):
                self._client = LabelStudio(
                    base_url=self.url, api_key=self._api_key.reveal(), timeout=LABEL_STUDIO_TIMEOUT_S
                )
        return self._client

    @contextmanager
    def calling(self, what: str) -> Iterator[None]:
        try:
            yield
        except ApiError as exc:
            status = exc.status_code or 0
            body = exc.body if isinstance(exc.body, str) else json.dumps(exc.body)[:300] if exc.body else ""
            message = f"Label Studio answered {status} to {what}: {body[:300]}".rstrip(": ")
            if status >= 500 or status in (0, 429):
                raise LabelStudioUnavailable(message) from None
            raise UpstreamError(message) from None
        except (httpx.TransportError, requests.RequestException) as exc:
            raise LabelStudioUnavailable(
                f"Label Studio at {self.url} could not be reached to {what} ({type(exc).__name__})"
            ) from None

    def reachable(self) -> bool:
        """Whether Label Studio answers ``/health`` now."""
        try:
            return httpx.get(f"{self.url}/health", timeout=5.0, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def label_config(self, project: int) -> str:
        with self.calling(f"read project {project}"):
            return self.client.projects.get(id=project).label_config or ""

    def tasks(self, project: int, task_ids: Sequence[int] | None) -> list[tuple[int, dict, set[str]]]:
        """(id, data, model versions of its predictions) of the project's tasks (only ``task_ids`` if given)."""
        query = None
        if task_ids is not None:
            query = json.dumps({"selectedItems": {"all": False, "included": list(task_ids)}})
        found = []
        with self.calling(f"list the tasks of project {project}"):
            pages = self.client.tasks.list(
                project=project,
                fields="all",
                include="id,data,predictions_model_versions",
                resolve_uri=False,
                page_size=100,
                query=query,
            )
            for task in pages:
                # Label Studio joins the model versions with commas; ours never contain one.
                versions = {
                    v.strip() for v in (task.predictions_model_versions or "").split(",") if v.strip()
                }
                found.append((int(task.id), dict(task.data or {}), versions))
        return found

    def our_predictions(self, task_id: int, model_version: str) -> list[tuple[int, int]]:
        """(prediction id, region count) of the task's predictions of ``model_version``."""
        with self.calling(f"read the predictions of task {task_id}"):
            listed = self.client.predictions.list(task=task_id)
        return [(int(p.id), len(p.result or [])) for p in listed if p.model_version == model_version]

    def delete_prediction(self, prediction_id: int) -> None:
        with self.calling(f"delete prediction {prediction_id}"):
            try:
                self.client.predictions.delete(id=prediction_id)
            except ApiError as exc:
                if exc.status_code != 404:  # 404: already gone (an earlier attempt deleted it)
                    raise

    def import_predictions(self, project: int, predictions: Sequence[tuple[int, dict]]) -> int:
        """Write (task id, prediction dict) pairs in one call; returns how many Label Studio created."""
        request = [
            PredictionRequest(
                task=task_id, result=p["result"], score=p["score"], model_version=p["model_version"]
            )
            for task_id, p in predictions
        ]
        with self.calling(f"import {len(request)} prediction(s) into project {project}"):
            # No retry inside the SDK: it re-sends a POST whose connection broke after sending, which Label
            # Studio may have carried out. A failed write fails the chunk; its retry checks what landed.
            answer = self.client.projects.import_predictions(
                id=project, request=request, request_options={"max_retries": 0}
            )
        return int(answer.created or 0)


# --------------------------------------------------------------------------------------------- the jobs
def plan_project(job_id: str) -> dict:
    """Parent job: list the project's tasks, decide what to do, enqueue the chunks (idempotent on retry)."""
    connection = get_current_job().connection
    board = JobBoard(connection)
    record = board.record_fields(job_id)
    if record["state"] not in ("queued", "listing"):
        return {"job": job_id, "planned": False, "state": record["state"]}
    project = int(record["project"])
    options = JobOptions.from_json(json.loads(record["options"]))
    overwrite = record.get("overwrite") == "1"
    task_ids = json.loads(record["task_ids"]) if record.get("task_ids") else None
    if not board.begin_listing(job_id):  # cancelled since it was read
        return {"job": job_id, "planned": False, "state": board.record_fields(job_id)["state"]}

    services = _current_services()
    version = services.model.model_version
    ls = LabelStudioClient(services.settings)
    try:
        config = parse_label_config(ls.label_config(project))
        brush = config.brush_for(None)
        image_key = config.image(brush.to_name).value_key
        label = options.label or (brush.labels[0] if brush.labels else None)
        if label is None or label not in brush.labels:
            raise BadRequestError(
                f"label {label!r} is not a label of <BrushLabels name={brush.from_name!r}>; "
                f"its labels: {', '.join(brush.labels) or '(none)'}"
            )
    except LabelStudioUnavailable:
        raise  # transient: RQ retries the parent with backoff
    except (BadRequestError, UpstreamError) as exc:  # a missing project or an unusable config: no retry helps
        board.fail_job(job_id, project, f"project {project}: {exc.message}", end_now=True)
        return {"job": job_id, "planned": False, "error": exc.message}

    tasks = ls.tasks(project, task_ids)
    missing = sorted(set(task_ids or ()) - {t[0] for t in tasks})
    ours = [t for t in tasks if version in t[2]]
    if overwrite:
        removed = 0
        for task_id, _, _ in ours:
            if board.is_cancelled(job_id):
                logger.info("job %s: cancelled while removing earlier predictions", job_id)
                return {"job": job_id, "planned": False, "state": "cancelled"}
            for prediction_id, _ in ls.our_predictions(task_id, version):
                ls.delete_prediction(prediction_id)
                removed += 1
        logger.info("job %s: overwrite: removed %d prediction(s) of %s", job_id, removed, version)
        todo, skipped = tasks, 0
    else:
        todo, skipped = [t for t in tasks if version not in t[2]], len(ours)
    payload = [{"id": task_id, "image": data.get(image_key)} for task_id, data, _ in todo]
    chunks = [payload[i : i + options.chunk_size] for i in range(0, len(payload), options.chunk_size)]
    plan = {
        "project": project,
        "total": len(tasks) + len(missing),
        "skipped": skipped,
        "model_version": version,
        "from_name": brush.from_name,
        "to_name": brush.to_name,
        "image_key": image_key,
        "label": label,
    }
    reasons = {task_id: f"task {task_id} is not in project {project}" for task_id in missing}
    if board.commit_plan(job_id, plan, chunks, reasons, options):
        logger.info(
            "job %s: project %d: %d task(s), %d skipped, %d chunk(s) of ≤%d",
            job_id,
            project,
            len(tasks),
            skipped,
            len(chunks),
            options.chunk_size,
        )
    return {"job": job_id, "planned": True, "tasks": len(tasks), "skipped": skipped, "chunks": len(chunks)}


def run_chunk(job_id: str, index: int, tasks: list[dict]) -> dict:
    """Chunk job: pre-annotate ``tasks`` (``[{"id", "image"}]``) and write their predictions."""
    rq_job = get_current_job()
    board = JobBoard(rq_job.connection)
    record = board.record_fields(job_id)
    project = int(record["project"])
    options = JobOptions.from_json(json.loads(record["options"]))
    services = _current_services()
    version = services.model.model_version
    if version != record["model_version"]:
        raise ConfigurationError(
            f"this worker serves model version {version}, but the job was planned for {record['model_version']}; "
            "run every worker with the same LITESAM_VARIANT and checkpoint"
        )
    ls = LabelStudioClient(services.settings)
    segment = SegEvery(services.model.model(), options.segevery_config(services.settings.variant))
    worker = rq_job.worker_name or ""
    writer = _PredictionWriter(board, ls, job_id, project, version, options.write_batch, worker)
    meta = rq_job.meta
    for task in tasks:
        task_id = int(task["id"])
        if board.is_cancelled(job_id):
            logger.info("job %s: cancelled; chunk %d stops before task %d", job_id, index + 1, task_id)
            meta["cancelled"] = True
            break
        if board.outcome(job_id, task_id) is not None:
            continue  # settled by an earlier attempt of this chunk
        meta["current_task"] = task_id
        rq_job.save_meta()
        board.count_attempt(job_id, task_id)
        started = time.perf_counter()
        try:
            regions = _task_regions(services, segment, ls, task, record, options, version)
        except _TaskFailure as exc:
            board.record_outcome(job_id, project, task_id, "failed", reason=str(exc), worker=worker)
            logger.warning("job %s: task %d failed: %s", job_id, task_id, exc)
            meta["failed"] = meta.get("failed", 0) + 1
            continue
        logger.info(
            "job %s: task %d: %d region(s) in %.2f s",
            job_id,
            task_id,
            len(regions),
            time.perf_counter() - started,
        )
        meta["done"] = meta.get("done", 0) + writer.add(task_id, prediction(regions, version))
    meta["done"] = meta.get("done", 0) + writer.flush()
    meta["current_task"] = None
    rq_job.save_meta()
    return {"job": job_id, "chunk": index, "tasks": len(tasks)}


def _task_regions(
    services: Services,
    segment: SegEvery,
    ls: LabelStudioClient | None,
    task: dict,
    record: dict,
    options: JobOptions,
    version: str,
) -> list[dict]:
    """The brushlabels regions of one task (raises :class:`_TaskFailure` for this task's own bad input).

    A multi-image task (``<Image valueList=…>``: a list of URLs) gets the regions of every image, each with
    its ``item_index``; ``max_masks`` applies per image. A failed download counts as the task's own problem
    only while Label Studio answers (``ls``); when it does not, :class:`LabelStudioUnavailable` is raised and
    the whole chunk is retried.
    """
    value = task.get("image")
    multi = isinstance(value, list)
    uris = value if multi else [value]
    if not uris or not all(isinstance(u, str) and u.strip() for u in uris):
        kind = "an empty or malformed list of images" if multi else "missing or not a URL"
        raise _TaskFailure(f"the task's data field {record['image_key']!r} is {kind}")
    model = services.model.model()
    regions = []
    for index, uri in enumerate(uris):
        where = f"image {index + 1} of {len(uris)}: " if multi else ""
        try:
            embedding = _embedding(services, uri, int(task["id"]), version)
        except (BadRequestError, ForbiddenURLError, PayloadTooLargeError) as exc:
            raise _TaskFailure(where + exc.message) from None
        except LiteSamError as exc:
            raise _TaskFailure(where + str(exc)) from None
        except UpstreamError as exc:
            if ls is not None and not ls.reachable():
                raise LabelStudioUnavailable(
                    f"{exc.message} (Label Studio at {ls.url} does not answer)"
                ) from None
            raise _TaskFailure(where + exc.message) from None
        on_device = ImageEmbedding(
            embedding.features.to(model.device), embedding.input_size, embedding.original_size
        )
        records = segment.generate_from_embedding(on_device)[: options.max_masks]
        regions += [
            brush_region(
                r["segmentation"],
                from_name=record["from_name"],
                to_name=record["to_name"],
                label=record["label"],
                score=r["predicted_iou"],
                item_index=index if multi else None,
            )
            for r in records
        ]
    return regions


def _embedding(services: Services, uri: str, task_id: int, version: str) -> ImageEmbedding:
    """The image's embedding, computed only if no process stored it, and left in Redis for later clicks.

    A Label Studio upload never changes behind its URL: its URL → image hash alias is recorded (as the
    interactive path does), so a labeler's first click on it needs no download either, and a re-run (e.g.
    ``overwrite``) skips the download of an image whose embedding is stored.
    """
    store = services.store
    immutable = services.fetcher.immutable_source(uri)
    if immutable is not None:
        sha = store.image_sha256(immutable)
        cached = store.get(version, sha) if sha is not None else None
        if cached is not None:
            return cached
    fetched = services.fetcher.fetch(uri, task_id)
    if immutable is not None:
        store.remember_image(immutable, fetched.sha256)
    embedding, _ = store.get_or_compute(
        version,
        fetched.sha256,
        lambda: services.model.encode(decode_image(fetched.data, services.settings.max_image_pixels)),
    )
    return embedding


class _PredictionWriter:
    """Collects predictions and writes them in batches, each task at most once per model version."""

    #: A batch is also cut when its RLE values pass this count (~4 bytes each in JSON).
    MAX_BATCH_VALUES = 4_000_000

    def __init__(
        self,
        board: JobBoard,
        ls: LabelStudioClient,
        job_id: str,
        project: int,
        version: str,
        batch: int,
        worker: str,
    ) -> None:
        self._board, self._ls, self._worker = board, ls, worker
        self._job_id, self._project, self._version, self._batch = job_id, project, version, batch
        self._pending: list[tuple[int, dict]] = []
        self._values = 0

    def add(self, task_id: int, task_prediction: dict) -> int:
        """Queue one task's prediction; returns the tasks written now (a full batch is flushed)."""
        self._pending.append((task_id, task_prediction))
        self._values += sum(len(r["value"]["rle"]) for r in task_prediction["result"])
        if len(self._pending) >= self._batch or self._values >= self.MAX_BATCH_VALUES:
            return self.flush()
        return 0

    def flush(self) -> int:
        """Write the queued predictions; returns how many tasks ended ``done``."""
        if not self._pending:
            return 0
        pending, self._pending, self._values = self._pending, [], 0
        done = 0
        if self._board.is_cancelled(self._job_id):
            return self._drop(pending)
        with self._board.task_locks(self._version, [t for t, _ in pending]) as locks:
            to_write = []
            for task_id, task_prediction in pending:
                locks.renew()
                existing = self._ls.our_predictions(task_id, self._version)
                if existing:  # written by an earlier attempt that died before its bookkeeping
                    done += self._done(
                        task_id, existing[0][1], note="already held a prediction of this version"
                    )
                else:
                    to_write.append((task_id, task_prediction))
            if to_write and self._board.is_cancelled(self._job_id):
                return done + self._drop(to_write)
            if to_write:
                locks.renew()
                created = self._ls.import_predictions(self._project, to_write)
                if created == len(to_write):
                    for task_id, task_prediction in to_write:
                        done += self._done(task_id, len(task_prediction["result"]))
                else:
                    done += self._settle_partial(to_write, created, locks)
        return done

    def _drop(self, predictions: list[tuple[int, dict]]) -> int:
        """The job was cancelled: these predictions are not written (their tasks stay without an outcome)."""
        logger.info("job %s: cancelled; %d prediction(s) not written", self._job_id, len(predictions))
        return 0

    def _settle_partial(self, written: list[tuple[int, dict]], created: int, locks: _HeldLocks) -> int:
        """Label Studio dropped some predictions (it validates and drops silently): find out which."""
        logger.warning(
            "job %s: Label Studio created %d of %d predictions", self._job_id, created, len(written)
        )
        done = 0
        for task_id, task_prediction in written:
            locks.renew()
            if self._ls.our_predictions(task_id, self._version):
                done += self._done(task_id, len(task_prediction["result"]))
            else:
                self._board.record_outcome(
                    self._job_id,
                    self._project,
                    task_id,
                    "failed",
                    reason="Label Studio did not accept the prediction (it drops predictions that do not fit the "
                    "project's labeling config)",
                    worker=self._worker,
                )
        return done

    def _done(self, task_id: int, regions: int, note: str = "") -> int:
        return int(
            self._board.record_outcome(
                self._job_id, self._project, task_id, "done", regions=regions, note=note, worker=self._worker
            )
        )


# -------------------------------------------------------------------------------------- failure callbacks
def on_plan_failure(job: Job, connection: redis.Redis, exc_type, exc_value, traceback) -> None:
    """RQ failure callback of the parent: note the retry, or fail the job once the retries are spent."""
    job_id = job.args[0]
    spent = _note_retry_or_give_up(job, connection, job_id, exc_value, "listing tasks")
    if spent is None:
        return
    board, project, reason, attempts = spent
    board.fail_job(job_id, project, f"{reason} (gave up after {attempts} attempt(s))", end_now=True)


def on_chunk_failure(job: Job, connection: redis.Redis, exc_type, exc_value, traceback) -> None:
    """RQ failure callback of a chunk: note the retry, or fail its unfinished tasks once retries are spent."""
    job_id, index, tasks = job.args
    spent = _note_retry_or_give_up(job, connection, job_id, exc_value, f"chunk {index + 1}")
    if spent is None:
        return
    board, project, reason, attempts = spent
    board.fail_tasks(
        job_id,
        project,
        [int(t["id"]) for t in tasks],
        f"{reason} (chunk {index + 1} gave up after {attempts} attempt(s))",
    )


def _note_retry_or_give_up(
    job: Job, connection: redis.Redis, job_id: str, exc_value: BaseException | None, step: str
) -> tuple[JobBoard, int, str, int] | None:
    """The common part of the failure callbacks. With retries left: note ``"{step}: {reason}; retrying"`` on
    the job and return None. Once they are spent: return (board, project, reason, attempts made), where the
    attempts are the first run plus every retry."""
    board = JobBoard(connection)
    reason = describe_failure(exc_value)
    if job.retries_left:
        board.note_retry(job_id, f"{step}: {reason}; retrying")
        return None
    record = board.record_fields(job_id)
    attempts = JobOptions.from_json(json.loads(record["options"])).retries + 1
    return board, int(record["project"]), reason, attempts


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


def _reason_from_rq(job: Job) -> str:
    result = job.latest_result()
    text = (result.exc_string or "") if result is not None else ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "failed"
    for prefix in ("backend.jobs.LabelStudioUnavailable: ", "backend.errors.UpstreamError: "):
        last = last.removeprefix(prefix)
    return last[:400]


# --------------------------------------------------------------------------------- "Retrieve predictions"
def handle_batch_predict(
    services: Services,
    project: object,
    tasks: list,
    label_config: object,
    *,
    sync_limit: int | None = None,
    options: JobOptions | None = None,
) -> list[dict]:
    """Answer a batch ``/predict`` (Label Studio's "Retrieve predictions", no context).

    Up to ``sync_limit`` tasks are pre-annotated here and now: one prediction per task, in order (a task where
    SegEvery keeps no mask gets a prediction without regions: it was looked at). Larger batches become a
    pre-annotation job for exactly those task ids, and the answer is ``[]`` — the app then answers
    ``{"results": []}``, for which Label Studio stores nothing; never one empty prediction per task, which
    would mark the tasks as predicted before they were. A running job of the project is reused (one job per
    project at a time). ``options`` (label, SegEvery filters …) apply to both paths.

    Raises:
        BadRequestError: no usable project id or task ids, or (synchronous path) a task's own bad input.
    """
    task_ids = [t.get("id") for t in tasks if isinstance(t, dict)] if isinstance(tasks, list) else []
    if not task_ids or len(task_ids) != len(tasks) or not all(_is_int(t) for t in task_ids):
        raise BadRequestError("a batch /predict needs task objects with integer ids")
    settings = services.settings
    options = options or JobOptions.from_json(None, settings.job_defaults)
    if sync_limit is None:
        sync_limit = settings.sync_predict_limit
    if len(tasks) > sync_limit:
        project_id = _project_id(project)
        try:
            status, created = start_job(
                redis_connection(services.settings),
                project_id,
                task_ids=task_ids,
                options=options,
                source="predict",
            )
        except redis.RedisError as exc:
            raise QueueUnavailableError(
                f"Redis does not answer ({type(exc).__name__}): the {len(tasks)} tasks cannot be queued for "
                "pre-annotation; check REDIS_URL"
            ) from None
        running_tasks = status["tasks"]
        if not created and running_tasks is not None and not set(task_ids) <= set(running_tasks):
            raise JobBusyError(
                f"pre-annotation job {status['id']} of project {project_id} is running on other tasks "
                f"({status['done']}/{status['total']} done); retrieve predictions again when it has finished"
            )
        logger.info(
            "batch /predict of %d task(s) in project %d → job %s (%s)",
            len(tasks),
            project_id,
            status["id"],
            "new" if created else "already running",
        )
        return []
    config = parse_label_config(label_config)
    brush = config.brush_for(None)
    label = options.label or (brush.labels[0] if brush.labels else None)
    if label is None or label not in brush.labels:
        raise BadRequestError(f"label {label!r} is not a label of <BrushLabels name={brush.from_name!r}>")
    record = {
        "from_name": brush.from_name,
        "to_name": brush.to_name,
        "label": label,
        "image_key": config.image(brush.to_name).value_key,
    }
    version = services.model.model_version
    segment = SegEvery(services.model.model(), options.segevery_config(services.settings.variant))
    settings = services.settings
    ls = LabelStudioClient(settings) if settings.label_studio_url and settings.label_studio_api_key else None
    answers = []
    for task in tasks:
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        try:
            regions = _task_regions(
                services,
                segment,
                ls,
                {"id": task["id"], "image": data.get(record["image_key"])},
                record,
                options,
                version,
            )
        except _TaskFailure as exc:
            raise BadRequestError(f"task {task['id']}: {exc}") from None
        answers.append(prediction(regions, version))
    return answers


def _project_id(project: object) -> int:
    """The project id from ``/predict``'s ``project`` field, ``"<id>.<created timestamp>"``."""
    text = str(project) if project is not None else ""
    head = text.split(".", 1)[0]
    if not head.isdigit() or int(head) < 1:
        raise BadRequestError(f"the request's 'project' ({project!r}) does not start with a project id")
    return int(head)
