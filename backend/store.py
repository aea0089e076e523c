"""Image embeddings cached in Redis, shared by every backend process and worker.

Key: ``litesam:emb:v1:<model version>:<sha256 of the image bytes>``. A new model version (other variant or
checkpoint) never reads an old embedding, and the same image is found whatever its URL.

Value (about 0.8 MiB at r640, 2 MiB at r1024): a 4-byte big-endian header length, a small JSON header
``{"format", "shape", "dtype", "input_size", "original_size"}``, then the features as little-endian float16.
Embeddings live ``ttl`` seconds; each read renews the TTL (``GETEX``), so images in use stay cached.

In front of Redis each process keeps a small LRU of recent embeddings, decoded (float32; at most
``lru_size`` × 4 MiB at r1024). Every embedding handed out has been rounded through float16, whether it was
just computed or read back, so every process gives the same mask for the same click. Handed-out embeddings
are shared between threads: treat their tensors as read-only.

Immutable image sources (Label Studio uploads) also get an alias, ``litesam:img:v1:<sha256 of the source>`` →
sha256 of the image bytes, with the same TTL: a later click on such an image finds its embedding without
downloading the image again.

Concurrent requests for one new image compute its embedding once: a lock per key inside the process (threads)
and a Redis lock across processes and machines; whoever gets the lock second finds the embedding stored. The
Redis lock is a short lease (:data:`LOCK_LEASE_S`) that a thread of its owner renews every third of it while
the embedding is computed: a live owner keeps it however long the encoder takes, and the lock of an owner that
died (killed mid-encode) runs out within one lease, so the others wait seconds, not minutes. When Redis cannot
be reached, requests still work: embeddings are computed (and kept in the process LRU), a warning is logged
once per outage, Redis is retried after :data:`RETRY_AFTER_S` seconds, and :meth:`EmbeddingStore.ping` reports
it to ``/health``. Any other Redis error (a command refused: out of memory, read-only replica, missing ACL
permission, …) also never fails a request: that command is skipped as if the cache missed, a warning naming
the error type is logged once per type, and Redis stays in use (it answers, so ``/health`` still says ``ok``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import redis
import torch

from litesam.predictor import ImageEmbedding

from . import metrics

logger = logging.getLogger(__name__)

KEY_PREFIX = "litesam:emb:v1:"
ALIAS_PREFIX = "litesam:img:v1:"
#: Image aliases (immutable source → sha256 of its bytes) kept in each process.
ALIAS_LRU_SIZE = 4096
FORMAT = "litesam-embedding/1"
#: Seconds Redis is left alone after a failure before the next attempt.
RETRY_AFTER_S = 5.0
#: Seconds the Redis lock on an embedding being computed lives unless its owner renews it (every third of it).
LOCK_LEASE_S = 5.0
#: Longest a process waits for a live owner computing the same embedding (stuck?) before computing itself.
LOCK_WAIT_S = 120.0
_LOCK_POLL_S = 0.02


def encode_embedding(embedding: ImageEmbedding) -> bytes:
    """Serialize an embedding: header length (4 bytes, big-endian), JSON header, float16 features (LE)."""
    features = (
        embedding.features.detach().to("cpu", torch.float16).contiguous().numpy().astype("<f2", copy=False)
    )
    header = json.dumps(
        {
            "format": FORMAT,
            "shape": list(features.shape),
            "dtype": "float16",
            "input_size": [int(v) for v in embedding.input_size],
            "original_size": [int(v) for v in embedding.original_size],
        },
        separators=(",", ":"),
    ).encode()
    return struct.pack(">I", len(header)) + header + features.tobytes()


def decode_embedding(blob: bytes) -> ImageEmbedding:
    """Inverse of :func:`encode_embedding`; features come back as a float32 tensor.

    Raises:
        ValueError: the blob is not a stored embedding of this format.
    """
    if len(blob) < 4:
        raise ValueError("embedding blob is too short")
    (size,) = struct.unpack(">I", blob[:4])
    header = json.loads(blob[4 : 4 + size])
    if header.get("format") != FORMAT or header.get("dtype") != "float16":
        raise ValueError(f"unknown embedding format {header.get('format')!r}")
    shape = tuple(int(v) for v in header["shape"])
    values = np.frombuffer(blob, dtype="<f2", offset=4 + size)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"embedding blob holds {values.size} values, its header says {shape}")
    features = torch.from_numpy(values.reshape(shape).astype(np.float32))
    return ImageEmbedding(features, tuple(header["input_size"]), tuple(header["original_size"]))


def _nbytes(embedding: ImageEmbedding) -> int:
    """Bytes of an embedding's feature tensor."""
    return embedding.features.element_size() * embedding.features.nelement()


def embedding_key(model_version: str, image_sha256: str) -> str:
    """The Redis key of an image's embedding for one model version."""
    return f"{KEY_PREFIX}{model_version}:{image_sha256}"


class EmbeddingStore:
    """Get, put, and get-or-compute image embeddings (thread-safe; one per process).

    Args:
        redis_url: where Redis is (``redis://host:port/db``).
        ttl: seconds an embedding stays in Redis after its last use.
        lru_size: embeddings kept in this process (0 = none).
        lock_lease, lock_wait: see :data:`LOCK_LEASE_S` and :data:`LOCK_WAIT_S` (seconds).
    """

    def __init__(
        self,
        redis_url: str,
        ttl: int,
        lru_size: int,
        lock_lease: float = LOCK_LEASE_S,
        lock_wait: float = LOCK_WAIT_S,
    ) -> None:
        self._redis = redis.Redis.from_url(redis_url, socket_connect_timeout=0.5, socket_timeout=5.0)
        self._probe = redis.Redis.from_url(redis_url, socket_connect_timeout=0.3, socket_timeout=0.3)
        self._ttl = ttl
        self._lru_size = lru_size
        self._lock_lease = lock_lease
        self._lock_wait = lock_wait
        self._lru: OrderedDict[str, ImageEmbedding] = OrderedDict()
        self._aliases: OrderedDict[str, str] = OrderedDict()
        self._lru_lock = threading.Lock()
        self._key_locks: dict[str, list] = {}
        self._key_locks_guard = threading.Lock()
        self._down_until = 0.0
        self._state_lock = threading.Lock()
        self._warned_errors: set[str] = set()

    # -- public API --------------------------------------------------------------------------------------

    def get(self, model_version: str, image_sha256: str) -> ImageEmbedding | None:
        """The stored embedding, from this process's LRU or Redis; None when neither has it."""
        found = self._lookup(embedding_key(model_version, image_sha256))
        return found[0] if found else None

    def put(self, model_version: str, image_sha256: str, embedding: ImageEmbedding) -> ImageEmbedding:
        """Store an embedding (LRU and Redis); returns it as every reader will see it (float16-rounded)."""
        key = embedding_key(model_version, image_sha256)
        blob = encode_embedding(embedding)
        stored = decode_embedding(blob)
        self._remember(key, stored)
        if self._redis_call(lambda r: r.set(key, blob, ex=self._ttl)):
            metrics.EMBEDDING_STORED_BYTES.inc(len(blob))
        return stored

    def get_or_compute(
        self, model_version: str, image_sha256: str, compute: Callable[[], ImageEmbedding]
    ) -> tuple[ImageEmbedding, str]:
        """The embedding of an image, computed by ``compute()`` only if no process has stored it.

        Returns:
            (embedding, source) with source ``"memory"``, ``"redis"`` or ``"computed"``.
        """
        key = embedding_key(model_version, image_sha256)
        found = self._lookup(key)
        if found:
            return found
        with self._thread_lock(key), self._process_lock(key):
            found = self._lookup(key)
            if found:
                return found
            started = time.perf_counter()
            embedding = self.put(model_version, image_sha256, compute())
            logger.debug("computed embedding %s in %.0f ms", key, (time.perf_counter() - started) * 1000)
            return embedding, "computed"

    def image_sha256(self, source: str) -> str | None:
        """The sha256 of the image bytes behind an immutable ``source`` (see :meth:`remember_image`), if known."""
        key = ALIAS_PREFIX + hashlib.sha256(source.encode()).hexdigest()
        with self._lru_lock:
            sha = self._aliases.get(key)
            if sha is not None:
                self._aliases.move_to_end(key)
                return sha
        value = self._redis_call(lambda r: r.getex(key, ex=self._ttl))
        if value is None:
            return None
        sha = value.decode()
        self._remember_alias(key, sha)
        return sha

    def remember_image(self, source: str, image_sha256: str) -> None:
        """Record that the immutable ``source`` (e.g. a Label Studio upload URL) holds the image ``image_sha256``."""
        key = ALIAS_PREFIX + hashlib.sha256(source.encode()).hexdigest()
        self._remember_alias(key, image_sha256)
        self._redis_call(lambda r: r.set(key, image_sha256, ex=self._ttl))

    def ping(self) -> bool:
        """Whether Redis answers now (short timeout, for ``/health``)."""
        try:
            return bool(self._probe.ping())
        except redis.RedisError:
            return False

    @property
    def redis_available(self) -> bool:
        """False while the store is skipping Redis after a failure."""
        return time.monotonic() >= self._down_until

    # -- internals ---------------------------------------------------------------------------------------

    def _lookup(self, key: str) -> tuple[ImageEmbedding, str] | None:
        with self._lru_lock:
            embedding = self._lru.get(key)
            if embedding is not None:
                self._lru.move_to_end(key)
                return embedding, "memory"
        blob = self._redis_call(lambda r: r.getex(key, ex=self._ttl))
        if blob is None:
            return None
        try:
            embedding = decode_embedding(blob)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable embedding at %s: %s", key, exc)
            return None
        self._remember(key, embedding)
        return embedding, "redis"

    def _remember(self, key: str, embedding: ImageEmbedding) -> None:
        if self._lru_size <= 0:
            return
        with self._lru_lock:
            old = self._lru.pop(key, None)
            self._lru[key] = embedding
            change = _nbytes(embedding) - (_nbytes(old) if old is not None else 0)
            while len(self._lru) > self._lru_size:
                change -= _nbytes(self._lru.popitem(last=False)[1])
        metrics.EMBEDDING_MEMORY_BYTES.inc(change)

    def _remember_alias(self, key: str, image_sha256: str) -> None:
        with self._lru_lock:
            self._aliases[key] = image_sha256
            self._aliases.move_to_end(key)
            while len(self._aliases) > ALIAS_LRU_SIZE:
                self._aliases.popitem(last=False)

    def _redis_call(self, call: Callable[[redis.Redis], object]) -> object:
        """Run one Redis command; None when it fails (a connection problem also marks Redis down)."""
        if not self.redis_available:
            return None
        try:
            result = call(self._redis)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._mark_down(exc)
            return None
        except redis.RedisError as exc:
            self._command_failed(exc)
            return None
        self._mark_up()
        return result

    def _command_failed(self, exc: redis.RedisError) -> None:
        """A Redis that answers refused a command (e.g. OutOfMemoryError): warn once per error type."""
        name = type(exc).__name__
        with self._state_lock:
            first = name not in self._warned_errors
            self._warned_errors.add(name)
        log = logger.warning if first else logger.debug
        log("Redis refused a command (%s: %s); going on without the shared cache for it", name, exc)

    def _mark_down(self, exc: Exception) -> None:
        with self._state_lock:
            was_up = self._down_until == 0.0
            self._down_until = time.monotonic() + RETRY_AFTER_S
        if was_up:
            logger.warning(
                "Redis is unreachable (%s); embeddings are computed without the shared cache until it is back",
                type(exc).__name__,
            )

    def _mark_up(self) -> None:
        if self._down_until == 0.0:
            return
        with self._state_lock:
            self._down_until = 0.0
        logger.info("Redis is reachable again; the shared embedding cache is back in use")

    @contextmanager
    def _thread_lock(self, key: str) -> Iterator[None]:
        with self._key_locks_guard:
            entry = self._key_locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._key_locks_guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._key_locks[key]

    @contextmanager
    def _process_lock(self, key: str) -> Iterator[None]:
        """Hold the Redis lease on ``key``, renewed while the block runs; without Redis (or after waiting
        :data:`LOCK_WAIT_S` for a live owner) go on without it."""
        lock = None
        if self.redis_available:
            candidate = self._redis.lock(
                f"{key}:lock",
                timeout=self._lock_lease,
                sleep=_LOCK_POLL_S,
                blocking_timeout=self._lock_wait,
                thread_local=False,
            )
            try:
                if candidate.acquire():
                    lock = candidate
                else:
                    logger.warning(
                        "waited %.0f s for another process to compute %s; computing here",
                        self._lock_wait,
                        key,
                    )
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._mark_down(exc)
            except redis.RedisError as exc:
                self._command_failed(exc)
        if lock is None:
            yield
            return
        done = threading.Event()
        renewer = threading.Thread(
            target=self._renew_lease, args=(lock, key, done), name=f"lease {key[-12:]}", daemon=True
        )
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()
            try:
                lock.release()
            except redis.RedisError:
                pass  # the lease ran out (a renewal failed) or Redis went away: nothing held

    def _renew_lease(self, lock: redis.lock.Lock, key: str, done: threading.Event) -> None:
        """Reset the lease to its full length every third of it until ``done``; stop when it is lost."""
        while not done.wait(self._lock_lease / 3):
            try:
                lock.reacquire()
            except redis.exceptions.LockNotOwnedError:
                logger.warning("the lock on %s ran out while computing it; another may compute it too", key)
                return
            except redis.RedisError:
                return  # Redis went away: the lease runs out by itself
