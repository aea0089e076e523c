"""The pre-annotation worker: an RQ worker that loads the model once, before its loop.

    litesam-backend worker [--queue NAME …] [--burst] [--max-jobs N] [--name NAME]
    rq worker -w backend.worker.PreannotateWorker --maintenance-interval 10 --worker-ttl 30 litesam-preannotate
                                                     (RQ's own CLI works too; it passes RQ's slower defaults)

Settings (Label Studio URL and key, Redis URL, checkpoint, variant, device, threads) come from the
environment like every backend process (:mod:`backend.settings`).

Jobs run inside the worker process, as in RQ's ``SimpleWorker``: RQ's default worker forks a work horse per
job, and a process forked after torch has used its intra-op thread pool (OpenMP) can hang in its first
parallel op; loading the model again in every horse is what the worker exists to avoid. Job timeouts still
apply (SIGALRM in the worker's main thread).

A killed worker (SIGKILL, out of memory, a lost machine) leaves its job in RQ's ``StartedJobRegistry`` until
the job's heartbeat runs out — ``job_timeout + 60`` seconds for an in-process job. To notice sooner, each
worker refreshes a short-lived *alive* key in Redis from a thread (every :data:`ALIVE_REFRESH_S` seconds,
expiring after :data:`ALIVE_TTL_S`). At its maintenance (every ``--maintenance-interval`` seconds, also
while idle) a worker re-queues the started jobs of workers whose alive key is gone, which uses up one of the
job's retries; once none are left, the job is handed to RQ's abandoned-job handling, which fails it (and the
job's failure callback records why). Re-running a chunk is safe: see :mod:`backend.jobs.locks` on duplicates.

Retries with backoff wait in RQ's scheduled-job registry; RQ's scheduler, which one worker at a time runs
(``--without-scheduler`` opts out), moves them back to the queue. If the worker holding the scheduler lock
dies, another one takes the scheduler over when the lock expires (about a minute, RQ's timeout), so backoff
retries can be late by that much; re-queueing a dead worker's job does not need the scheduler.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from collections.abc import Sequence

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import parse_composite_key
from rq.worker import SimpleWorker

from .jobs.board import JobBoard
from .jobs.failures import reconcile_jobs
from .jobs.layout import KEY_PREFIX, queue, redis_connection
from .jobs.options import QUEUE_NAME
from .jobs.tasks import use_services
from .logs import configure_logging
from .services import Services, build_services
from .settings import Settings

logger = logging.getLogger(__name__)

#: Seconds between refreshes of a worker's alive key, and the key's lifetime.
ALIVE_REFRESH_S = 2.0
ALIVE_TTL_S = 10
#: Default seconds between a worker's maintenance runs (RQ's default is 600).
MAINTENANCE_INTERVAL_S = 10
#: Seconds the worker's registration outlives its maintenance interval; RQ waits for jobs for this minus 15 s,
#: so an idle worker comes round to its maintenance at about the interval.
_TTL_MARGIN_S = 20
#: How long "this worker name belongs to a PreannotateWorker" is remembered.
_KNOWN_TTL_S = 30 * 24 * 3600


def _alive_key(name: str) -> str:
    return f"{KEY_PREFIX}worker:{name}:alive"


def _known_key(name: str) -> str:
    return f"{KEY_PREFIX}worker:{name}:known"


class PreannotateWorker(SimpleWorker):
    """An RQ worker for :mod:`backend.jobs.tasks`: JSON serializer, model loaded before the loop, jobs in-process,
    fast re-queueing of jobs whose worker died.

    Args:
        queues: queue names (or ``rq.Queue`` objects); :data:`backend.QUEUE_NAME` is the default queue.
        services: the process's services; built from the environment at :meth:`work` when not given.
        Other keyword arguments go to ``rq.Worker``; ``maintenance_interval`` defaults to
        :data:`MAINTENANCE_INTERVAL_S` and ``worker_ttl`` to that plus 20 s.
    """

    def __init__(self, queues, *args, services: Services | None = None, **kwargs) -> None:
        # every job of backend.jobs is JSON, whatever serializer RQ's CLI passes
        kwargs["serializer"] = JSONSerializer
        kwargs.setdefault("maintenance_interval", MAINTENANCE_INTERVAL_S)
        kwargs.setdefault("worker_ttl", kwargs["maintenance_interval"] + _TTL_MARGIN_S)
        super().__init__(queues, *args, **kwargs)
        self._services = services
        self._alive_stop = threading.Event()
        self._alive_thread: threading.Thread | None = None

    # -- start and stop ----------------------------------------------------------------------------------
    def preload(self) -> Services:
        """Build the services (once) and load the model now, so the first job does not pay for it."""
        if self._services is None:
            self._services = build_services(Settings.from_env())
        model_service = self._services.model
        model_service.model()
        use_services(self._services)
        self.log.info(
            "Worker %s: model %s loaded; listening on %s",
            self.name,
            model_service.model_version,
            ", ".join(self.queue_names()),
        )
        return self._services

    def work(self, *args, **kwargs) -> bool:
        """Load the model, start the alive thread, then run RQ's loop (same arguments as ``rq.Worker.work``)."""
        self.preload()
        self._start_alive_thread()
        try:
            return super().work(*args, **kwargs)
        finally:
            self._stop_alive_thread()

    def _start_alive_thread(self) -> None:
        self.connection.set(_known_key(self.name), os.getpid(), ex=_KNOWN_TTL_S)
        self._mark_alive()
        self._alive_thread = threading.Thread(target=self._alive_loop, name="litesam-alive", daemon=True)
        self._alive_thread.start()

    def _stop_alive_thread(self) -> None:
        self._alive_stop.set()
        if self._alive_thread is not None:
            self._alive_thread.join(timeout=ALIVE_REFRESH_S * 2)
        try:
            self.connection.delete(_alive_key(self.name))
        except redis.RedisError:
            pass  # Redis is gone: the key expires on its own

    def _alive_loop(self) -> None:
        while not self._alive_stop.wait(ALIVE_REFRESH_S):
            try:
                self._mark_alive()
            except redis.RedisError as exc:
                self.log.warning(
                    "Worker %s: could not refresh its alive key: %s", self.name, type(exc).__name__
                )

    def _mark_alive(self) -> None:
        self.connection.set(_alive_key(self.name), f"{socket.gethostname()}:{os.getpid()}", ex=ALIVE_TTL_S)

    # -- maintenance -------------------------------------------------------------------------------------
    def run_maintenance_tasks(self) -> None:
        """RQ's maintenance, preceded by re-queueing the jobs of dead workers and settling the parts of
        running jobs that RQ failed without our failure callback (:func:`backend.jobs.failures.reconcile_jobs`)."""
        try:
            requeue_orphaned_jobs(self.connection, self.queue_names(), own_name=self.name)
            reconcile_jobs(self.connection)
        except redis.RedisError as exc:
            self.log.warning(
                "Worker %s: could not check for orphaned or failed jobs: %s", self.name, type(exc).__name__
            )
        super().run_maintenance_tasks()


def worker_is_dead(connection: redis.Redis, name: str) -> bool:
    """True for a PreannotateWorker whose alive key has expired (a worker of another class is never judged)."""
    return bool(connection.exists(_known_key(name))) and not connection.exists(_alive_key(name))


def requeue_orphaned_jobs(
    connection: redis.Redis, queue_names: Sequence[str], own_name: str = ""
) -> list[str]:
    """Re-queue (or, with no retries left, let RQ fail) started jobs whose worker is dead; returns their ids.

    Several workers may run this at once: the one whose ``ZREM`` takes the registry entry does the work.
    """
    handled = []
    for queue_name in queue_names:
        rq_queue = queue(connection, queue_name)
        registry = StartedJobRegistry(queue=rq_queue)
        for entry in connection.zrange(registry.key, 0, -1):
            job_id, _ = parse_composite_key(entry.decode())
            try:
                job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
            except NoSuchJobError:
                continue
            worker = job.worker_name
            if not worker or worker == own_name or not worker_is_dead(connection, worker):
                continue
            reason = f"worker {worker} stopped (killed or lost) while running it"
            if job.retries_left:
                if connection.zrem(registry.key, entry) != 1:
                    continue  # another worker took it
                job.retries_left -= 1
                rq_queue.enqueue_job(job)
                _note(connection, job, f"{reason}; re-queued")
                logger.warning("re-queued job %s: %s", job_id, reason)
            else:
                # Expire the entry now: RQ's cleanup fails it as abandoned and runs its failure callback.
                connection.zadd(registry.key, {entry: 1}, xx=True)
                registry.cleanup()
                logger.warning("failed job %s: %s, and it has no retries left", job_id, reason)
            handled.append(job_id)
    return handled


def _note(connection: redis.Redis, job: Job, reason: str) -> None:
    litesam_job = (job.meta or {}).get("litesam_job")
    if litesam_job:
        JobBoard(connection).note_retry(litesam_job, reason)


# --------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker's command-line options (shared by ``litesam-backend worker`` and ``python -m``)."""
    parser.add_argument(
        "--queue",
        action="append",
        dest="queues",
        metavar="NAME",
        help=f"queue to work on (repeatable; default {QUEUE_NAME})",
    )
    parser.add_argument("--name", default=None, help="worker name (default: a random id)")
    parser.add_argument("--burst", action="store_true", help="quit when the queues are empty")
    parser.add_argument("--max-jobs", type=int, default=None, help="quit after this many jobs")
    parser.add_argument(
        "--maintenance-interval",
        type=int,
        default=MAINTENANCE_INTERVAL_S,
        help="seconds between checks for jobs of dead workers and other RQ maintenance "
        f"(default {MAINTENANCE_INTERVAL_S})",
    )
    parser.add_argument(
        "--without-scheduler",
        action="store_true",
        help="do not run RQ's scheduler (it moves retries whose backoff has passed back "
        "onto the queue; at least one worker should run it)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run a worker until it is stopped (SIGTERM/SIGINT: finish the current job first); returns the exit code."""
    configure_logging(settings)
    if args.maintenance_interval < 1 or (args.max_jobs is not None and args.max_jobs < 1):
        print(
            "litesam-backend worker: --maintenance-interval and --max-jobs must be at least 1",
            file=sys.stderr,
        )
        return 2
    connection = redis_connection(settings)
    try:
        connection.ping()
    except redis.RedisError as exc:
        print(
            f"litesam-backend worker: Redis does not answer ({type(exc).__name__}); check REDIS_URL",
            file=sys.stderr,
        )
        return 2
    worker = PreannotateWorker(
        [queue(connection, name) for name in (args.queues or [QUEUE_NAME])],
        name=args.name,
        connection=connection,
        services=build_services(settings),
        maintenance_interval=args.maintenance_interval,
    )
    worker.work(
        burst=args.burst,
        max_jobs=args.max_jobs,
        with_scheduler=not args.without_scheduler,
        logging_level=settings.log_level,
    )
    return 0
