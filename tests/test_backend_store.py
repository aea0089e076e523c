"""The Redis embedding store with a real Redis (its own db, flushed): format, TTL, LRU, one computation for
concurrent requests across threads and "processes" (separate store instances), and Redis being down."""

import logging
import threading
import time

import pytest
import redis
import torch

from backend.store import KEY_PREFIX, EmbeddingStore, decode_embedding, embedding_key, encode_embedding
from litesam.predictor import ImageEmbedding
from tests.backend_support import TEST_REDIS_URL, closed_port

SHA = "ab" * 32


def embedding(seed=0, channels=256, side=40):
    g = torch.Generator().manual_seed(seed)
    return ImageEmbedding(torch.randn(1, channels, side, side, generator=g), (480, 640), (768, 1024))


def test_format_is_compact_float16_with_metadata():
    emb = embedding()
    blob = encode_embedding(emb)
    assert len(blob) < 2 * 256 * 40 * 40 + 200
    back = decode_embedding(blob)
    assert back.features.dtype == torch.float32 and back.features.shape == (1, 256, 40, 40)
    assert back.input_size == (480, 640) and back.original_size == (768, 1024)
    torch.testing.assert_close(back.features, emb.features.half().float(), rtol=0, atol=0)
    with pytest.raises(ValueError):
        decode_embedding(b"\x00\x00\x00\x02{}")
    with pytest.raises(ValueError):
        decode_embedding(blob[:-2])


def test_key_has_a_versioned_prefix_the_model_version_and_the_image_hash():
    assert embedding_key("litesam_r640-0123456789ab", SHA) == f"{KEY_PREFIX}litesam_r640-0123456789ab:{SHA}"
    assert KEY_PREFIX.startswith("litesam:emb:v")


def test_put_then_another_process_reads_it_from_redis_with_a_ttl(redis_db):
    writer = EmbeddingStore(TEST_REDIS_URL, ttl=100, lru_size=4)
    stored = writer.put("v1", SHA, embedding())
    key = embedding_key("v1", SHA)
    assert 0 < redis_db.ttl(key) <= 100
    reader = EmbeddingStore(TEST_REDIS_URL, ttl=100, lru_size=4)
    got, source = reader.get_or_compute("v1", SHA, lambda: pytest.fail("must not compute"))
    assert source == "redis"
    torch.testing.assert_close(got.features, stored.features, rtol=0, atol=0)
    assert reader.get_or_compute("v1", SHA, lambda: pytest.fail("must not compute"))[1] == "memory"
    assert reader.get("v2", SHA) is None  # another model version never reads it


def test_reading_renews_the_ttl(redis_db):
    store = EmbeddingStore(TEST_REDIS_URL, ttl=1000, lru_size=0)
    store.put("v", SHA, embedding())
    redis_db.expire(embedding_key("v", SHA), 5)
    assert store.get("v", SHA) is not None
    assert redis_db.ttl(embedding_key("v", SHA)) > 900


def test_computed_and_stored_embeddings_are_identical(redis_db):
    store = EmbeddingStore(TEST_REDIS_URL, ttl=100, lru_size=4)
    computed, source = store.get_or_compute("v", SHA, lambda: embedding(3))
    assert source == "computed"
    from_redis = EmbeddingStore(TEST_REDIS_URL, ttl=100, lru_size=4).get("v", SHA)
    torch.testing.assert_close(computed.features, from_redis.features, rtol=0, atol=0)


def test_lru_keeps_the_most_recent(redis_db):
    store = EmbeddingStore(TEST_REDIS_URL, ttl=100, lru_size=2)
    for i in range(3):
        store.put("v", f"{i:064x}", embedding(i, channels=8, side=4))
    redis_db.flushdb()
    assert store.get("v", f"{0:064x}") is None
    assert store.get("v", f"{1:064x}") is not None and store.get("v", f"{2:064x}") is not None


def test_concurrent_requests_across_threads_and_processes_compute_once(redis_db):
    calls = []
    lock = threading.Lock()

    def compute():
        with lock:
            calls.append(threading.get_ident())
        time.sleep(0.3)
        return embedding(7)

    stores = [EmbeddingStore(TEST_REDIS_URL, ttl=100, lru_size=4) for _ in range(2)]  # two "processes"
    results = []
    barrier = threading.Barrier(8)

    def click(store):
        barrier.wait()
        results.append(store.get_or_compute("v", SHA, compute))

    threads = [threading.Thread(target=click, args=(stores[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1
    assert len(results) == 8
    assert sorted(source for _, source in results).count("computed") == 1
    for emb, _ in results:
        torch.testing.assert_close(emb.features, results[0][0].features, rtol=0, atol=0)
    assert not redis_db.exists(embedding_key("v", SHA) + ":lock")


def test_a_corrupt_value_is_ignored_and_recomputed(redis_db, caplog):
    redis_db.set(embedding_key("v", SHA), b"garbage")
    store = EmbeddingStore(TEST_REDIS_URL, ttl=100, lru_size=4)
    with caplog.at_level(logging.WARNING, logger="backend.store"):
        _, source = store.get_or_compute("v", SHA, lambda: embedding(1, channels=8, side=4))
    assert source == "computed" and "unreadable embedding" in caplog.text


def test_image_aliases_are_shared_through_redis_with_a_ttl(redis_db):
    writer = EmbeddingStore(TEST_REDIS_URL, ttl=100, lru_size=4)
    assert writer.image_sha256("http://ls:8080/data/upload/1/a.png") is None
    writer.remember_image("http://ls:8080/data/upload/1/a.png", SHA)
    assert writer.image_sha256("http://ls:8080/data/upload/1/a.png") == SHA
    reader = EmbeddingStore(TEST_REDIS_URL, ttl=100, lru_size=4)
    assert reader.image_sha256("http://ls:8080/data/upload/1/a.png") == SHA
    (key,) = redis_db.keys("litesam:img:v1:*")
    assert 0 < redis_db.ttl(key) <= 100


def test_redis_down_still_answers_and_warns_once(caplog):
    store = EmbeddingStore(f"redis://127.0.0.1:{closed_port()}/0", ttl=100, lru_size=2)
    calls = []

    def compute():
        calls.append(1)
        return embedding(1, channels=8, side=4)

    with caplog.at_level(logging.WARNING, logger="backend.store"):
        assert store.get_or_compute("v", SHA, compute)[1] == "computed"
        assert store.get_or_compute("v", SHA, compute)[1] == "memory"
        assert store.get_or_compute("v", "cd" * 32, compute)[1] == "computed"
    assert len(calls) == 2
    warnings = [rec for rec in caplog.records if "Redis is unreachable" in rec.getMessage()]
    assert len(warnings) == 1
    assert store.ping() is False and store.redis_available is False


def test_redis_coming_back_is_used_again(redis_db, monkeypatch):
    import backend.store as store_module

    monkeypatch.setattr(store_module, "RETRY_AFTER_S", 0.0)
    store = EmbeddingStore(TEST_REDIS_URL, ttl=100, lru_size=0)
    store._mark_down(redis.ConnectionError("test"))
    store.put("v", SHA, embedding(1, channels=8, side=4))
    assert redis_db.exists(embedding_key("v", SHA)) and store.redis_available


class RefusingRedis(redis.Redis):
    """A real Redis client whose chosen commands (all when ``commands`` is None) are refused with ``error``,
    as a Redis out of memory (noeviction), a read-only replica or a user without ACL permission answers."""

    error: redis.RedisError
    commands: set[str] | None = None

    def execute_command(self, *args, **options):
        if self.commands is None or str(args[0]).upper() in self.commands:
            raise self.error
        return super().execute_command(*args, **options)


def refusing_store(error, commands=None, lru_size=2):
    store = EmbeddingStore(TEST_REDIS_URL, ttl=100, lru_size=lru_size)
    store._redis = RefusingRedis.from_url(TEST_REDIS_URL)
    store._redis.error, store._redis.commands = error, commands
    return store


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        redis.exceptions.NoPermissionError("this user has no permissions to run the 'set' command"),
        redis.ResponseError("some other refusal"),
    ],
)
def test_refused_redis_commands_still_give_the_computed_embedding(redis_db, caplog, error):
    store = refusing_store(error)
    calls = []

    def compute():
        calls.append(1)
        return embedding(5, channels=8, side=4)

    with caplog.at_level(logging.DEBUG, logger="backend.store"):
        got, source = store.get_or_compute("v", SHA, compute)
        store.get_or_compute("v", "cd" * 32, compute)
        store.remember_image("http://ls:8080/data/upload/1/a.png", SHA)
        assert store.image_sha256("http://ls:8080/data/upload/2/b.png") is None
    assert source == "computed" and len(calls) == 2
    torch.testing.assert_close(got.features, embedding(5, channels=8, side=4).features.half().float())
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and type(error).__name__ in warnings[0].getMessage()
    assert store.redis_available and store.ping()  # Redis answers: not marked down, /health says ok
    assert "Redis is unreachable" not in caplog.text


def test_a_redis_refusing_writes_is_still_read_and_the_lock_is_skipped(redis_db):
    writer = EmbeddingStore(TEST_REDIS_URL, ttl=100, lru_size=0)
    writer.put("v", SHA, embedding(2, channels=8, side=4))
    oom = redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    store = refusing_store(oom, commands={"SET", "EVALSHA", "EVAL"}, lru_size=0)
    assert store.get_or_compute("v", SHA, lambda: pytest.fail("must not compute"))[1] == "redis"
    _, source = store.get_or_compute("v", "cd" * 32, lambda: embedding(3, channels=8, side=4))
    assert source == "computed" and not redis_db.exists(embedding_key("v", "cd" * 32))
    assert not redis_db.keys("*:lock")
