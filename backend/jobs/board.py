"""The board of pre-annotation jobs: the state machine of each job's record in Redis.

:meth:`JobBoard.start` creates a record and queues its parent RQ job (one running job per project: a second
request gets that job); job functions move it on (:meth:`~JobBoard.begin_listing`,
:meth:`~JobBoard.commit_plan`, :meth:`~JobBoard.record_outcome`, :meth:`~JobBoard.fail_job`); failure
handling ends it (:mod:`backend.jobs.failures`); :meth:`~JobBoard.cancel` ends it on request. Counters change
only inside Lua scripts (:mod:`backend.jobs.layout`) together with the outcome they count, so progress is
exact however often a chunk is retried. Reading (:meth:`~JobBoard.status`, :meth:`~JobBoard.recent`) never
writes: parts of a job that RQ failed behind our back are settled by the workers' maintenance
(:func:`backend.jobs.failures.reconcile_jobs`), not by whoever looks. A copy of the progress is kept in the
parent RQ job's ``meta['progress']`` for RQ dashboards.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from ..errors import JobNotFoundError
from .layout import (
    BEGIN_LISTING_LUA,
    CANCEL_JOB_LUA,
    FAIL_JOB_LUA,
    FINISH_LUA,
    JOBS_KEY,
    RECORD_OUTCOME_LUA,
    RECORD_TTL_S,
    STATS_KEY,
    active_key,
    attempts_key,
    chunk_job_id,
    enqueue,
    now,
    record_key,
    tasks_key,
)
from .options import JobOptions, checked_target
from .record import TERMINAL_STATES, JobRecord, field_value, progress, status_view

logger = logging.getLogger(__name__)

#: RQ states of a job that has not started yet: these are cancelled in RQ when the pre-annotation job is.
_WAITING_RQ_STATES = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED)
#: Per-task failure reasons listed by :meth:`JobBoard.status` (the counters always count all of them).
FAILURES_SHOWN = 200


class JobBoard:
    """The records of pre-annotation jobs in Redis: create, read, and the atomic progress updates."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self._record_outcome = connection.register_script(RECORD_OUTCOME_LUA)
        self._fail_job = connection.register_script(FAIL_JOB_LUA)
        self._finish = connection.register_script(FINISH_LUA)
        self._cancel = connection.register_script(CANCEL_JOB_LUA)
        self._begin_listing = connection.register_script(BEGIN_LISTING_LUA)

    # -- starting ----------------------------------------------------------------------------------------
    def start(
        self,
        project: int,
        *,
        overwrite: bool = False,
        task_ids: Sequence[int] | None = None,
        options: JobOptions | None = None,
        source: str = "api",
        mode: str = "segevery",
    ) -> tuple[dict, bool]:
        """Start pre-annotating ``project`` (all tasks, or ``task_ids``), unless a job for it is running.

        ``mode`` (:data:`backend.jobs.options.MODES`): "segevery" segments everything, "boxes" / "points" make
        a mask of each rectangle / keypoint group of the tasks' annotations.

        Returns:
            (status of the job, created): the new job, or the project's running job with ``created`` False.
        Raises:
            BadRequestError: a malformed project id or task id list, or an unknown mode.
        """
        task_ids = checked_target(project, task_ids, mode)
        options = options or JobOptions()
        job_id = uuid.uuid4().hex
        active = active_key(project)
        while True:
            with self.connection.pipeline() as pipe:
                try:
                    pipe.watch(active)
                    current = pipe.get(active)
                    if current is not None:
                        running = self._status_or_none(current.decode())
                        if running is not None and running["state"] not in TERMINAL_STATES:
                            return running, False
                    pipe.multi()
                    pipe.set(active, job_id)
                    pipe.hset(
                        record_key(job_id),
                        mapping={
                            "id": job_id,
                            "project": project,
                            "overwrite": int(bool(overwrite)),
                            "task_ids": json.dumps(task_ids) if task_ids is not None else "",
                            "options": json.dumps(options.to_json()),
                            "source": source,
                            "mode": mode,
                            "state": "queued",
                            "created_at": now(),
                            "error": "",
                        },
                    )
                    pipe.expire(record_key(job_id), RECORD_TTL_S)
                    pipe.zadd(JOBS_KEY, {job_id: time.time()})
                    pipe.zremrangebyscore(JOBS_KEY, 0, time.time() - RECORD_TTL_S)  # ids of expired records
                    enqueue(
                        self.connection,
                        pipe,
                        options,
                        "plan_project",
                        (job_id,),
                        job_id=job_id,
                        description=f"pre-annotate project {project} (plan)",
                        meta={"litesam_job": job_id, "project": project},
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
            keys=[record_key(job_id), active_key(int(record["project"]))], args=[job_id, now(), reason]
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
        chunks = len(JobRecord.parse(record).chunks)
        for rq_id in [job_id] + [chunk_job_id(job_id, i) for i in range(chunks)]:
            try:
                rq_job = Job.fetch(rq_id, connection=self.connection, serializer=JSONSerializer)
            except NoSuchJobError:
                continue
            if rq_job.get_status(refresh=False) in _WAITING_RQ_STATES:
                rq_job.cancel()

    def is_cancelled(self, job_id: str) -> bool:
        """Whether the job was cancelled (job functions ask before each task and each write)."""
        return self.connection.hget(record_key(job_id), "state") == b"cancelled"

    # -- reading -----------------------------------------------------------------------------------------
    def status(self, job_id: str, failures_shown: int = FAILURES_SHOWN) -> dict:
        """The job as ``GET /jobs/<id>`` shows it (:func:`backend.jobs.record.status_view`; ``total`` is None
        until the tasks are listed).

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
        for raw in self.connection.zrevrange(JOBS_KEY, 0, limit - 1):
            found = self._status_or_none(raw.decode(), failures_shown=0)
            if found is not None:  # None: the record expired (start() prunes such ids)
                statuses.append(found)
        return statuses

    def _status_or_none(self, job_id: str, failures_shown: int = FAILURES_SHOWN) -> dict | None:
        if not isinstance(job_id, str) or not job_id or len(job_id) > 64:
            return None
        record = self._record(job_id)
        if record is None:
            return None
        failures, rejected = self._failures(job_id, failures_shown) if failures_shown else ([], [])
        return status_view(record, failures, rejected)

    def _record(self, job_id: str) -> dict | None:
        raw = self.connection.hgetall(record_key(job_id))
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    def _failures(self, job_id: str, limit: int) -> tuple[list[dict], list[dict]]:
        """(failed tasks, rejected prompts of done tasks), each sorted by task and cut at ``limit``."""
        failures, rejected = [], []
        for task, raw in self.connection.hscan_iter(tasks_key(job_id), count=500):
            outcome = json.loads(raw)
            if outcome.get("status") == "failed":
                failures.append({"task": int(task), "reason": outcome.get("reason", "")})
            else:
                rejected += [{"task": int(task), **r} for r in outcome.get("rejected", ())]
        failures.sort(key=lambda f: f["task"])
        rejected.sort(key=lambda r: r["task"])
        return failures[:limit], rejected[:limit]

    def record_fields(self, job_id: str) -> dict:
        """The raw record hash (strings); raises :class:`JobNotFoundError`."""
        record = self._record(job_id)
        if record is None:
            raise JobNotFoundError(f"no pre-annotation job {job_id!r} (unknown, or its record expired)")
        return record

    def job_record(self, job_id: str) -> JobRecord:
        """The parsed record; raises :class:`JobNotFoundError`."""
        return JobRecord.parse(self.record_fields(job_id))

    def outcome(self, job_id: str, task_id: int) -> dict | None:
        raw = self.connection.hget(tasks_key(job_id), str(task_id))
        return json.loads(raw) if raw is not None else None

    def attempts(self, job_id: str) -> dict[int, int]:
        """How often each task was computed (SegEvery run) for this job; tests assert no task ran twice."""
        raw = self.connection.hgetall(attempts_key(job_id))
        return {int(k): int(v) for k, v in raw.items()}

    # -- progress (called by job functions) --------------------------------------------------------------
    def begin_listing(self, job_id: str) -> bool:
        """Move the job to ``listing`` (the parent runs); False if it was cancelled or ended meanwhile."""
        return self._begin_listing(keys=[record_key(job_id)], args=[now()]) == 1

    def count_attempt(self, job_id: str, task_id: int) -> None:
        with self.connection.pipeline() as pipe:
            pipe.hincrby(attempts_key(job_id), str(task_id), 1)
            pipe.expire(attempts_key(job_id), RECORD_TTL_S)
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
        rejected: Sequence[dict] = (),
    ) -> bool:
        """Record a task's outcome (``done`` or ``failed``, with the prompts ``rejected`` on the way) and count
        it, atomically; True if it counted."""
        outcome: dict[str, Any] = {"status": status, "at": now()}
        if rejected:
            outcome["rejected"] = list(rejected)
        if worker:
            outcome["worker"] = worker
        if status == "done":
            outcome["regions"] = regions
        if reason:
            outcome["reason"] = reason
        if note:
            outcome["note"] = note
        changed = self._record_outcome(
            keys=[record_key(job_id), tasks_key(job_id), active_key(project), STATS_KEY],
            args=[str(task_id), status, json.dumps(outcome), regions, job_id, now()],
        )
        self._mirror_progress(job_id)
        return changed == 1

    def fail_job(self, job_id: str, project: int, reason: str, *, end_now: bool) -> None:
        """Mark the job failed with ``reason``; with ``end_now`` at once, else when its last task is settled."""
        self._fail_job(
            keys=[record_key(job_id), active_key(project)],
            args=[reason, job_id, now(), "1" if end_now else "0"],
        )
        self._mirror_progress(job_id)

    def fail_tasks(self, job_id: str, project: int, task_ids: Sequence[int], reason: str) -> None:
        """A chunk gave up: its tasks without an outcome fail with ``reason``, and so does the job."""
        self._fail_job(keys=[record_key(job_id), active_key(project)], args=[reason, job_id, now(), "0"])
        for task_id in task_ids:
            if self.outcome(job_id, task_id) is None:
                self.record_outcome(job_id, project, task_id, "failed", reason=reason)

    def note_retry(self, job_id: str, reason: str) -> None:
        """Show why a part of the job is being retried (cleared from view once the job ends)."""
        with self.connection.pipeline() as pipe:
            pipe.hset(record_key(job_id), mapping={"last_error": reason, "last_error_at": now()})
            pipe.hincrby(record_key(job_id), "retries", 1)
            pipe.execute()

    def commit_plan(
        self, job_id: str, plan: dict, chunks: list[list[dict]], missing: dict[int, str], options: JobOptions
    ) -> bool:
        """Record the plan and enqueue its chunk jobs in one transaction; False if it was committed before.

        ``plan`` holds the record fields (total, skipped, model_version, tags …); ``missing`` maps requested
        task ids that are not in the project to their failure reason. With nothing to do the job ends here.
        """
        key = record_key(job_id)
        project = int(plan["project"])
        with self.connection.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if pipe.hget(key, "state") not in (b"queued", b"listing"):
                        return False
                    pipe.multi()
                    fields_ = {k: field_value(v) for k, v in plan.items()}
                    fields_["state"] = "running"
                    fields_["chunks"] = json.dumps([[t["id"] for t in chunk] for chunk in chunks])
                    fields_["failed"] = len(missing)
                    pipe.hset(key, mapping=fields_)
                    for task_id, reason in missing.items():
                        outcome = {"status": "failed", "reason": reason, "at": now()}
                        pipe.hset(tasks_key(job_id), str(task_id), json.dumps(outcome))
                    pipe.expire(tasks_key(job_id), RECORD_TTL_S)
                    for index, tasks in enumerate(chunks):
                        enqueue(
                            self.connection,
                            pipe,
                            options,
                            "run_chunk",
                            (job_id, index, tasks),
                            job_id=chunk_job_id(job_id, index),
                            description=f"pre-annotate project {project} (chunk {index + 1}/{len(chunks)})",
                            meta={"litesam_job": job_id, "chunk": index, "tasks": len(tasks)},
                        )
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self._finish(keys=[key, active_key(project)], args=[job_id, now()])  # e.g. all skipped
        self._mirror_progress(job_id)
        return True

    def _mirror_progress(self, job_id: str) -> None:
        """Copy the counters into the parent RQ job's ``meta['progress']`` (never an older copy over a newer)."""
        key = record_key(job_id)
        parent = Job(job_id, connection=self.connection, serializer=JSONSerializer)
        with self.connection.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key, parent.key)
                    raw_meta = pipe.hget(parent.key, "meta")
                    record = pipe.hgetall(key)
                    if raw_meta is None or not record:
                        return
                    meta = JSONSerializer.loads(raw_meta)
                    meta["progress"] = progress({k.decode(): v.decode() for k, v in record.items()})
                    pipe.multi()
                    pipe.hset(parent.key, "meta", JSONSerializer.dumps(meta))
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue
