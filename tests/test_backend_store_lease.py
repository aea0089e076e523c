"""The embedding lock is a lease, tested with real processes and a real Redis: an owner process killed
(SIGKILL) mid-encode delays the next process by at most about one lease, and a live owner computing for
several leases never causes a second encode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from backend.store import LOCK_LEASE_S, EmbeddingStore, embedding_key
from litesam.predictor import ImageEmbedding
from tests.backend_support import TEST_REDIS_URL

REPO = Path(__file__).resolve().parents[1]
SHA = "cd" * 32
COMPUTES = "test:lease:computes"
COMPUTING = "test:lease:computing"

#: A process that computes SHA's embedding with a compute step that takes ``hold`` seconds (as a slow encoder
#: would); it counts each computation in Redis and says when it started.
OWNER = f"""
import sys, time, redis, torch
from backend.store import EmbeddingStore
from litesam.predictor import ImageEmbedding
url, lease, hold = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
client = redis.Redis.from_url(url)
def compute():
    client.incr("{COMPUTES}")
    client.set("{COMPUTING}", 1)
    time.sleep(hold)
    return ImageEmbedding(torch.ones(1, 8, 4, 4), (64, 64), (64, 64))
EmbeddingStore(url, ttl=100, lru_size=0, lock_lease=lease).get_or_compute("v", "{SHA}", compute)
"""


def start_owner(lease: float, hold: float, redis_db) -> subprocess.Popen:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, TEST_REDIS_URL, str(lease), str(hold)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 60
    while not redis_db.exists(COMPUTING):
        assert owner.poll() is None, "the owner process exited before computing"
        assert time.monotonic() < deadline, "the owner process never started computing"
        time.sleep(0.02)
    return owner


def counting_compute(redis_db, started: list):
    def compute():
        started.append(time.monotonic())
        redis_db.incr(COMPUTES)
        return ImageEmbedding(torch.zeros(1, 8, 4, 4), (64, 64), (64, 64))

    return compute


def test_an_owner_killed_mid_encode_delays_the_next_process_by_at_most_one_lease(redis_db):
    owner = start_owner(LOCK_LEASE_S, hold=600, redis_db=redis_db)
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=10)
    killed = time.monotonic()
    started: list[float] = []
    store = EmbeddingStore(TEST_REDIS_URL, ttl=100, lru_size=0)
    _, source = store.get_or_compute("v", SHA, counting_compute(redis_db, started))
    waited = started[0] - killed
    print(f"waited {waited:.2f} s for a killed owner's lock (lease {LOCK_LEASE_S} s)")
    assert source == "computed" and int(redis_db.get(COMPUTES)) == 2
    assert waited <= LOCK_LEASE_S + 1.0  # the lease ran out; the old 60 s lock would have held it ~60 s


def test_a_live_owner_computing_for_several_leases_is_waited_for_and_never_duplicated(redis_db):
    lease = 0.6
    owner = start_owner(lease, hold=4 * lease, redis_db=redis_db)
    started: list[float] = []
    store = EmbeddingStore(TEST_REDIS_URL, ttl=100, lru_size=0, lock_lease=lease)
    embedding, source = store.get_or_compute("v", SHA, counting_compute(redis_db, started))
    assert owner.wait(timeout=30) == 0
    assert source == "redis" and started == []  # the owner's embedding, never computed twice
    assert int(redis_db.get(COMPUTES)) == 1
    assert torch.equal(embedding.features, torch.ones(1, 8, 4, 4))
    assert not redis_db.exists(embedding_key("v", SHA) + ":lock")  # released by its owner
