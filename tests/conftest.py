"""Fixtures shared by all test folders (keep this file small: generic fixtures only)."""

from __future__ import annotations

import os

import pytest

TEST_REDIS_URL = os.environ.get("LITESAM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random-weight ``litesam_tiny`` checkpoint (seeded), written once per test module; returns its path."""
    from tests.backend_support import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "tiny.pt")


@pytest.fixture
def redis_client():
    """A ``redis.Redis`` on the test database (``LITESAM_TEST_REDIS_URL``, default db 15), flushed before and after.

    Fails with a clear message when no Redis answers (``.ci/run`` starts one on 127.0.0.1:6379).
    """
    from tests.backend_support import flushed_redis_at

    yield from flushed_redis_at(TEST_REDIS_URL, socket_timeout=5)
