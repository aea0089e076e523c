"""``GET /health`` is answered while every request thread of a real ``litesam-backend serve`` is busy
(backend/gunicorn_config.py's health lane): clicks whose image download hangs take both threads, more clicks
and a ``GET /versions`` wait for one, and ``/health`` — on new and kept-alive connections — still answers."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.backend_support import FakeLabelStudio, backend_env, keypoint, png_bytes, serve_backend
from tests.test_backend_gunicorn import CONFIG

THREADS = 2
IMAGE = "/data/upload/1/slow.png"


def downloads(ls: FakeLabelStudio) -> int:
    return sum(1 for method, path, _ in list(ls.requests) if path == IMAGE)


def test_health_answers_while_every_request_thread_is_busy(tmp_path, redis_db):
    release = threading.Event()
    ls = FakeLabelStudio()
    ls.add(IMAGE, png_bytes(64, 48, seed=3), hold=release)
    env = backend_env(tmp_path, ls.url)
    body = {
        "tasks": [{"id": 1, "data": {"image": IMAGE}}],
        "label_config": CONFIG,
        "params": {"context": {"result": [keypoint(50, 50, 64, 48)]}},
    }
    try:
        served = serve_backend(tmp_path, env, workers=1, threads=THREADS)
        with served as (url, _), ThreadPoolExecutor(8) as pool:
            clicks = [pool.submit(requests.post, f"{url}/predict", json=body, timeout=90) for _ in range(5)]
            deadline = time.monotonic() + 30
            while downloads(ls) < THREADS:  # both request threads now wait for the held download
                assert time.monotonic() < deadline, "the clicks never reached the image download"
                time.sleep(0.05)
            versions = pool.submit(requests.get, f"{url}/versions", timeout=90)
            with requests.Session() as session:  # a kept-alive connection is routed per request
                for _ in range(3):
                    health = session.get(f"{url}/health", timeout=10)
                    assert health.status_code == 200 and health.json()["status"] == "UP"
            assert requests.get(f"{url}/", timeout=10).json()["status"] == "UP"  # a new connection
            assert not versions.done() and not any(click.done() for click in clicks)  # the threads were busy
            assert downloads(ls) == THREADS
            release.set()
            assert versions.result().status_code == 200
            assert [click.result().status_code for click in clicks] == [200] * 5
    finally:
        release.set()
        ls.close()
