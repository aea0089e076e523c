"""A real ``litesam-backend serve`` (gunicorn, 2 workers × 2 threads) answering concurrent first clicks.

No ``/setup`` is sent: every worker must predict from its first request. All workers must give the same
mask for the same click, the image must be encoded once across processes (Redis lock + cache), and the
embedding must be in Redis afterwards.
"""

import hashlib
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from backend.store import embedding_key
from tests.backend_support import (
    LEGACY_TOKEN,
    FakeLabelStudio,
    backend_env,
    decode_brush,
    keypoint,
    png_bytes,
    serve_backend,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = (REPO / "label_config.xml").read_text()
IMAGE = png_bytes(333, 517, seed=5)
SERVED = re.compile(r"\[(\d+)\] backend\.model: task 1: 1 mask\(s\) for 'Object', embedding from (\w+)")


@pytest.fixture
def fake_ls():
    server = FakeLabelStudio()
    server.add("/data/upload/1/odd.png", IMAGE)
    yield server
    server.close()


@pytest.mark.slow
def test_two_workers_two_threads_answer_concurrent_first_clicks(tmp_path, fake_ls, redis_db):
    env = backend_env(tmp_path, fake_ls.url, LOG_LEVEL="INFO", OMP_NUM_THREADS="1")
    with serve_backend(tmp_path, env, workers=2, threads=2) as (url, backend):
        body = {
            "tasks": [{"id": 1, "data": {"image": "/data/upload/1/odd.png"}}],
            "project": "1.1764000000",
            "label_config": CONFIG,
            "params": {"context": {"result": [keypoint(40, 60, 333, 517)]}},
        }

        def click(_):
            return requests.post(f"{url}/predict", json=body, timeout=60)

        answers = []
        deadline = time.monotonic() + 90
        with ThreadPoolExecutor(8) as pool:
            # Bursts until both workers have answered: the kernel hands connections to whichever worker
            # accepts first, so one worker can take several bursts alone.
            while time.monotonic() < deadline:
                answers += list(pool.map(click, range(8)))
                if len({m.group(1) for m in SERVED.finditer(backend.log_text())}) == 2:
                    break
        log = backend.log_text()
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
        served = SERVED.findall(log)
        assert len({pid for pid, _ in served}) == 2, log
        assert [source for _, source in served].count("computed") == 1, log
        versions = {a.json()["results"][0]["model_version"] for a in answers}
        assert versions == {requests.get(f"{url}/versions", timeout=5).json()["versions"][0]}
        rles = {tuple(a.json()["results"][0]["result"][0]["value"]["rle"]) for a in answers}
        assert len(rles) == 1  # every worker and thread gives the same mask for the same click
        assert decode_brush(answers[0].json()["results"][0]["result"][0]).shape == (517, 333)
        assert redis_db.exists(embedding_key(versions.pop(), hashlib.sha256(IMAGE).hexdigest()))
        assert "Traceback" not in log and LEGACY_TOKEN not in log
