"""Where pre-annotation jobs live in Redis: the key layout, the Lua scripts that change a record atomically,
the connection and the RQ queue.

Keys (all under :data:`KEY_PREFIX`): ``job:<id>`` is a hash with the request, the plan and the counters
``total``/``skipped``/``done``/``failed``/``regions``; ``job:<id>:tasks`` holds each finished task's outcome
(JSON: ``done`` with its region count, or ``failed`` with the reason); ``job:<id>:attempts`` counts how often
each task was computed; ``jobs`` orders the ids by creation time; ``project:<n>:active`` is the project's
running job; ``task:<model version>:<task id>`` is a task's write lock (:mod:`backend.jobs.locks`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import redis
from rq import Queue
from rq.job import Callback
from rq.serializers import JSONSerializer

from ..settings import Settings
from .options import QUEUE_NAME, JobOptions

#: Prefix of every Redis key of pre-annotation jobs; bump the version when the record layout changes.
KEY_PREFIX = "litesam:jobs:v1:"
#: Seconds a job record stays in Redis after it was created (it is also what ``GET /jobs`` can list).
RECORD_TTL_S = 30 * 24 * 3600
JOBS_KEY = f"{KEY_PREFIX}jobs"


def redis_connection(settings: Settings) -> redis.Redis:
    """A Redis client for the job queue and records (binary replies, as RQ needs)."""
    return redis.Redis.from_url(settings.redis_url.reveal(), socket_connect_timeout=2.0, socket_timeout=30.0)


def queue(connection: redis.Redis, name: str = QUEUE_NAME) -> Queue:
    """The RQ queue ``name`` with the JSON serializer every pre-annotation job uses."""
    return Queue(name, connection=connection, serializer=JSONSerializer)


#: The RQ failure callback of each job function (:mod:`backend.jobs.failures`).
_FAILURE_CALLBACKS = {"plan_project": "on_plan_failure", "run_chunk": "on_chunk_failure"}


def enqueue(
    connection: redis.Redis,
    pipe: redis.client.Pipeline,
    options: JobOptions,
    function: str,
    args: tuple,
    **job: Any,
) -> None:
    """Queue the job function ``function`` of :mod:`backend.jobs.tasks` on ``options.queue`` inside the
    transaction ``pipe``, with the options' timeout, TTLs and retries and its failure callback. Functions are
    named by their dotted paths, so this module imports neither the job functions nor the failure handling."""
    queue(connection, options.queue).enqueue_call(
        f"backend.jobs.tasks.{function}",
        args=args,
        timeout=options.job_timeout,
        result_ttl=options.result_ttl,
        failure_ttl=options.failure_ttl,
        retry=options.retry(),
        on_failure=Callback(f"backend.jobs.failures.{_FAILURE_CALLBACKS[function]}"),
        pipeline=pipe,
        **job,
    )


def now() -> str:
    """The current UTC time as the records store it (ISO 8601, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record_key(job_id: str) -> str:
    return f"{KEY_PREFIX}job:{job_id}"


def tasks_key(job_id: str) -> str:
    return f"{KEY_PREFIX}job:{job_id}:tasks"


def attempts_key(job_id: str) -> str:
    return f"{KEY_PREFIX}job:{job_id}:attempts"


def active_key(project: int) -> str:
    return f"{KEY_PREFIX}project:{project}:active"


def task_lock_key(model_version: str, task_id: int) -> str:
    return f"{KEY_PREFIX}task:{model_version}:{task_id}"


def chunk_job_id(job_id: str, index: int) -> str:
    """The RQ job id of chunk ``index`` (the parent's RQ id is the job id itself)."""
    return f"{job_id}.{index}"


# Ends the job when every task has an outcome. KEYS: record, active; ARGV: job id, now.
FINISH_IF_COMPLETE_LUA = """
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
FINISH_LUA = FINISH_IF_COMPLETE_LUA + "return finish_if_complete(KEYS[1], KEYS[2], ARGV[1], ARGV[2])"

# Records one task's outcome. KEYS: record, tasks, active; ARGV: task id, status, outcome JSON, regions, job id,
# now. A task's first outcome counts; a later 'done' may replace a 'failed', nothing replaces a 'done'. Once
# the job is cancelled only a 'done' counts (that prediction was written); other tasks get no outcome.
RECORD_OUTCOME_LUA = (
    FINISH_IF_COMPLETE_LUA
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
FAIL_JOB_LUA = (
    FINISH_IF_COMPLETE_LUA
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
CANCEL_JOB_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state == 'finished' or state == 'failed' or state == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[2], 'cancel_reason', ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""

# The parent starts listing, unless the job was cancelled (or has ended) meanwhile. KEYS: record; ARGV: now.
BEGIN_LISTING_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'listing' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'listing')
if not redis.call('HGET', KEYS[1], 'started_at') then redis.call('HSET', KEYS[1], 'started_at', ARGV[1]) end
return 1
"""

# Releases or renews a lock only while it still holds our token. KEYS: lock; ARGV: token, ttl ms (renew only).
RELEASE_LOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
RENEW_LOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
