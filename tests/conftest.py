"""Fixtures shared by all test folders (keep this file small: generic fixtures only)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random-weight ``litesam_tiny`` checkpoint (seeded), written once per test module; returns its path."""
    from tests.backend_support import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "tiny.pt")


@pytest.fixture
def redis_db():
    """A ``redis.Redis`` on the one test database (``tests.backend_support.TEST_REDIS_URL``: set
    LITESAM_TEST_REDIS_URL, default db 15), flushed before and after; every test that uses Redis takes it.

    Fails with a clear message when no Redis answers (``.ci/run`` starts one on 127.0.0.1:6379).
    """
    from tests.backend_support import TEST_REDIS_URL, flushed_redis_at

    yield from flushed_redis_at(TEST_REDIS_URL, socket_timeout=10)
