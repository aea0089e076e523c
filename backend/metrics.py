"""The backend's Prometheus metrics, exposed at ``GET /metrics`` (text format, behind the app's basic auth).

=============================================  ============================================================
metric                                         meaning
=============================================  ============================================================
litesam_http_requests_total                    requests answered, by ``route`` (the URL rule, ``unmatched``
                                               for 404s), ``method`` and ``status``
litesam_http_request_duration_seconds          their latency (histogram), by ``route`` and ``method``
litesam_embedding_cache_hits_total             embeddings found, by ``tier``: ``memory`` (this process's
                                               LRU), ``redis``, ``alias`` (an upload found without download)
litesam_embedding_cache_misses_total           embeddings that had to be computed
litesam_encoder_seconds                        image encoder time per computed embedding (histogram)
litesam_decoder_seconds                        mask decoding time of one interactive click: every prompt's
                                               masks at the image's size (histogram)
litesam_embedding_stored_bytes_total           bytes of embeddings written to the Redis cache
litesam_embedding_memory_bytes                 bytes of embeddings held in the processes' LRUs now
litesam_job_tasks_total                        pre-annotation task outcomes of all jobs, by ``outcome``
                                               (``done``, ``failed``; a failed task later done counts in both)
litesam_job_queue_depth                        RQ jobs waiting on each ``queue`` (parents and chunks)
litesam_jobs_redis_up                          1 when the job Redis answered this scrape, else 0
=============================================  ============================================================

Several gunicorn workers: ``litesam-backend serve`` runs them in prometheus-client's multiprocess mode (it
points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory), so every scrape, whichever worker answers it,
sums all workers. The job metrics come from Redis at scrape time (the job records' counters, RQ's queues),
so the job worker processes need no endpoint of their own; their encoder and decoder time is not included.
Without ``PROMETHEUS_MULTIPROC_DIR`` (a single process, e.g. the Flask test client) the metrics are this
process's, plus prometheus-client's process and platform collectors.
"""

from __future__ import annotations

import logging
import os

import redis
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from rq import Queue

from .jobs.layout import STATS_KEY

logger = logging.getLogger(__name__)

#: The Content-Type of :func:`exposition`'s answer.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)

REQUESTS = Counter("litesam_http_requests", "HTTP requests answered", ["route", "method", "status"])
REQUEST_SECONDS = Histogram(
    "litesam_http_request_duration_seconds",
    "HTTP request latency",
    ["route", "method"],
    buckets=_LATENCY_BUCKETS,
)
CACHE_HITS = Counter("litesam_embedding_cache_hits", "image embeddings found in a cache", ["tier"])
CACHE_MISSES = Counter("litesam_embedding_cache_misses", "image embeddings that had to be computed")
ENCODER_SECONDS = Histogram("litesam_encoder_seconds", "image encoder time", buckets=_LATENCY_BUCKETS)
DECODER_SECONDS = Histogram(
    "litesam_decoder_seconds", "mask decoding time of a click", buckets=_LATENCY_BUCKETS
)
EMBEDDING_STORED_BYTES = Counter("litesam_embedding_stored_bytes", "bytes of embeddings written to Redis")
EMBEDDING_MEMORY_BYTES = Gauge(
    "litesam_embedding_memory_bytes", "bytes of embeddings in process LRUs", multiprocess_mode="livesum"
)


class JobsCollector:
    """Job metrics read from the job Redis at each scrape: task outcomes and RQ queue depths."""

    def __init__(self, connection: redis.Redis) -> None:
        self._connection = connection

    def collect(self):
        up = GaugeMetricFamily("litesam_jobs_redis_up", "whether the job Redis answered this scrape")
        try:
            outcomes = self._connection.hgetall(STATS_KEY)
            depths = {queue.name: queue.count for queue in Queue.all(connection=self._connection)}
        except redis.RedisError as exc:
            logger.debug("job metrics skipped: Redis does not answer (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        tasks = CounterMetricFamily("litesam_job_tasks", "pre-annotation task outcomes", labels=["outcome"])
        for outcome in ("done", "failed"):
            tasks.add_metric([outcome], int(outcomes.get(outcome.encode(), 0)))
        yield tasks
        depth = GaugeMetricFamily("litesam_job_queue_depth", "RQ jobs waiting", labels=["queue"])
        for name, count in sorted(depths.items()):
            depth.add_metric([name], count)
        yield depth


def exposition(jobs_connection: redis.Redis) -> bytes:
    """Every metric in Prometheus' text format: all gunicorn workers' (multiprocess mode) or this process's,
    then the job metrics read from ``jobs_connection``."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        processes = CollectorRegistry()
        multiprocess.MultiProcessCollector(processes)
    else:
        processes = REGISTRY
    jobs = CollectorRegistry(auto_describe=False)
    jobs.register(JobsCollector(jobs_connection))
    return generate_latest(processes) + generate_latest(jobs)


def worker_exited(pid: int) -> None:
    """Drop a dead gunicorn worker's live gauges (its counters stay counted); gunicorn's ``child_exit``."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
