"""``GET /metrics`` of a real ``litesam-backend serve`` with two gunicorn workers (multiprocess mode): after
clicks and a job, every scrape — whichever worker answers it — counts all workers' requests, cache hits and
misses, encoder and decoder runs and stored embedding bytes, and the job metrics read from Redis."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from backend.jobs.board import JobBoard
from backend.jobs.options import QUEUE_NAME
from tests.backend_support import FakeLabelStudio, backend_env, keypoint, png_bytes, serve_backend
from tests.test_backend_gunicorn import CONFIG

AUTH = ("scraper", "metrics-pass-1234")


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of one ``/metrics`` answer: (name, sorted label items) → value."""
    answer = requests.get(f"{url}/metrics", auth=AUTH, timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (n, items), value in samples.items() if n == name and wanted <= set(items))


@pytest.mark.slow
def test_metrics_count_every_worker_and_read_jobs_from_redis(tmp_path, redis_db):
    ls = FakeLabelStudio()
    ls.add("/data/upload/1/a.png", png_bytes(96, 64, seed=1))
    ls.add("/data/upload/1/b.png", png_bytes(80, 72, seed=2))
    env = backend_env(
        tmp_path,
        ls.url,
        BASIC_AUTH_USER=AUTH[0],
        BASIC_AUTH_PASS=AUTH[1],
    )
    try:
        with serve_backend(tmp_path, env, workers=2, threads=2, ready_status=401) as (url, _):
            assert requests.get(f"{url}/metrics", timeout=10).status_code == 401  # behind basic auth
            for name, size in (("a", (96, 64)), ("a", (96, 64)), ("b", (80, 72))):
                body = {
                    "tasks": [{"id": 1, "data": {"image": f"/data/upload/1/{name}.png"}}],
                    "label_config": CONFIG,
                    "params": {"context": {"result": [keypoint(50, 50, *size)]}},
                }
                assert requests.post(f"{url}/predict", json=body, auth=AUTH, timeout=60).status_code == 200
            job = requests.post(f"{url}/jobs", json={"project": 7, "tasks": [1, 2]}, auth=AUTH, timeout=10)
            assert job.status_code == 202
            job_id = job.json()["job"]["id"]

            for _ in range(6):  # several scrapes: the kernel hands them to either worker
                samples = scrape(url)
                assert total(samples, "litesam_http_requests_total", route="/predict", status="200") == 3
                assert total(samples, "litesam_http_request_duration_seconds_count", route="/predict") == 3
                assert total(samples, "litesam_embedding_cache_misses_total") == 2
                assert total(samples, "litesam_embedding_cache_hits_total") == 1
                assert total(samples, "litesam_encoder_seconds_count") == 2
                assert total(samples, "litesam_decoder_seconds_count") == 3
                assert total(samples, "litesam_decoder_seconds_sum") > 0
                assert total(samples, "litesam_embedding_stored_bytes_total") > 2 * 256  # two embeddings
                assert total(samples, "litesam_embedding_memory_bytes") > 0
                assert total(samples, "litesam_job_queue_depth", queue=QUEUE_NAME) == 1  # the job's parent
                assert total(samples, "litesam_jobs_redis_up") == 1
            unmatched = total(scrape(url), "litesam_http_requests_total", route="unmatched")
            requests.get(f"{url}/no-such-route", auth=AUTH, timeout=10)
            assert total(scrape(url), "litesam_http_requests_total", route="unmatched") == unmatched + 1

            board = JobBoard(redis_db)  # the outcomes a worker records, counted from Redis at the next scrape
            assert board.record_outcome(job_id, 7, 1, "done", regions=2)
            assert board.record_outcome(job_id, 7, 2, "failed", reason="the image is corrupt")
            samples = scrape(url)
            assert total(samples, "litesam_job_tasks_total", outcome="done") == 1
            assert total(samples, "litesam_job_tasks_total", outcome="failed") == 1
    finally:
        ls.close()
