"""Per-task write locks: a task's prediction is written at most once per model version.

Right before writing, the prediction writer holds the lock ``task:<model version>:<task id>`` of each task
(SET NX with a timeout, renewed before every Label Studio call) and asks Label Studio whether the task already
holds a prediction of its version — so a chunk re-run after its worker was killed between the write and the
bookkeeping finds its own earlier write and does not repeat it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis

from ..errors import UpstreamError
from .layout import RELEASE_LOCK_LUA, RENEW_LOCK_LUA, task_lock_key

#: Lifetime of a per-task write lock; renewed before every Label Studio call, so only a dead holder's expires.
TASK_LOCK_TTL_S = 60.0
_POLL_S = 0.2


class TaskLocks:
    """Takes and releases the write locks of tasks in one Redis."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self._release = connection.register_script(RELEASE_LOCK_LUA)
        self._renew = connection.register_script(RENEW_LOCK_LUA)

    @contextmanager
    def hold(
        self, model_version: str, task_ids: Sequence[int], wait_s: float = TASK_LOCK_TTL_S + 15
    ) -> Iterator[HeldLocks]:
        """Hold the write locks of ``task_ids`` (waiting for other holders up to ``wait_s`` seconds).

        Locks are taken in task id order (two writers never wait for each other in a cycle). They are released
        when the block ends normally; when it raises — say a write to Label Studio timed out, which Label Studio
        may still carry out — they are left to expire (:data:`TASK_LOCK_TTL_S`), so that nobody checks those
        tasks for an existing prediction before such a late write has landed.

        Raises:
            UpstreamError: another process kept a lock longer than ``wait_s`` (the chunk is retried later).
        """
        token = uuid.uuid4().hex
        held: list[str] = []
        deadline = time.monotonic() + wait_s
        for task_id in sorted(set(task_ids)):
            key = task_lock_key(model_version, task_id)
            while not self.connection.set(key, token, nx=True, px=int(TASK_LOCK_TTL_S * 1000)):
                if time.monotonic() > deadline:
                    self._release_all(held, token)
                    raise UpstreamError(
                        f"another worker has been writing task {task_id} for over {wait_s:.0f} s; "
                        "the chunk will be retried"
                    )
                _pause(_POLL_S)
            held.append(key)
        yield HeldLocks(self, held, token)
        self._release_all(held, token)

    def _release_all(self, keys: list[str], token: str) -> None:
        for key in keys:
            self._release(keys=[key], args=[token])


def _pause(seconds: float) -> None:
    """Wait between two tries of a lock another writer holds."""
    time.sleep(seconds)


class HeldLocks:
    """Per-task locks held by :meth:`TaskLocks.hold`; ``renew()`` before each slow call."""

    def __init__(self, locks: TaskLocks, keys: list[str], token: str) -> None:
        self._locks = locks
        self._keys = keys
        self._token = token

    def renew(self) -> None:
        """Extend every held lock to :data:`TASK_LOCK_TTL_S` from now.

        Raises:
            UpstreamError: a lock expired while held (this process stalled; another may hold it now).
        """
        for key in self._keys:
            if not self._locks._renew(keys=[key], args=[self._token, int(TASK_LOCK_TTL_S * 1000)]):
                raise UpstreamError(
                    "a task write lock expired while held (this worker stalled); the chunk will be retried"
                )
