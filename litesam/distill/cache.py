"""Sharded on-disk caches of the teacher's outputs: computed once, resumable, checksummed.

Layout of one cache (a directory under the cache root, named by its key)::

    <root>/<kind>-<key[:16]>/manifest.json      what the key was made of (teacher sha256, variant, input size,
                                                data identity, settings), the item count and shard size
    <root>/<kind>-<key[:16]>/shard_00000.pt     one shard: a dict of tensors / lists for items [0, shard_size)
    <root>/<kind>-<key[:16]>/shard_00000.json   its seal: sha256 and size of the .pt file, item count

A shard is written to ``.partial`` files and renamed into place, the ``.pt`` first and its seal last, so an
interrupted run leaves either a sealed shard or none: a killed run keeps every finished shard and the next run
computes only the rest. A shard whose seal is missing, unreadable or does not match the file (a truncated or
altered file) is reported by :meth:`ShardedCache.status` and recomputed by the caller. The key is the sha256
of the manifest's key fields, so a changed teacher checkpoint, another variant or input size, other data or
other settings lead to another directory (the old one is left for the user to delete).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

logger = logging.getLogger(__name__)

CACHE_FORMAT = "litesam-distill-cache/1"


def cache_key(fields: dict[str, Any]) -> str:
    """sha256 (hex) of the key fields, as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **fields}, sort_keys=True).encode()).hexdigest()


class ShardedCache:
    """One cache: ``count`` items in shards of ``shard_size``, under a directory named by the key.

    Args:
        root: the cache root.
        kind: what it holds, a name part (``"embeddings"``, ``"masks"``).
        key_fields: JSON-serialisable fields of the key (see the module docstring).
        count: number of items.
        shard_size: items per shard (the last shard may be shorter).
    Raises:
        CheckpointError: the directory exists with a manifest of other key fields (a key-prefix collision or a
            hand-edited manifest).
    """

    def __init__(self, root: str | Path, kind: str, key_fields: dict[str, Any], count: int, shard_size: int) -> None:
        if count < 1 or shard_size < 1:
            raise ValueError(f"a cache needs count ≥ 1 and shard_size ≥ 1, got {count}, {shard_size}")
        self.key = cache_key({**key_fields, "count": count, "shard_size": shard_size})
        self.directory = Path(root) / f"{kind}-{self.key[:16]}"
        self.count = count
        self.shard_size = shard_size
        self.manifest = {"format": CACHE_FORMAT, "kind": kind, "key": self.key, "fields": key_fields,
                         "count": count, "shard_size": shard_size}
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest = self.directory / "manifest.json"
        if manifest.exists():
            try:
                stored = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                stored = None
            if stored is not None and stored.get("key") != self.key:
                raise CheckpointError(f"cache {self.directory} belongs to another key; delete it")
        if not manifest.exists() or stored is None:
            _write_atomic(manifest, json.dumps(self.manifest, indent=2).encode())

    @property
    def num_shards(self) -> int:
        return -(-self.count // self.shard_size)

    def items(self, shard: int) -> range:
        """The item indices of a shard."""
        return range(shard * self.shard_size, min(self.count, (shard + 1) * self.shard_size))

    def shard_path(self, shard: int) -> Path:
        return self.directory / f"shard_{shard:05d}.pt"

    def status(self, shard: int) -> str:
        """``"ok"`` (sealed and matching), ``"missing"`` (never finished) or ``"corrupt"`` (seal or file wrong)."""
        path, seal_path = self.shard_path(shard), self._seal_path(shard)
        if not seal_path.exists():
            return "missing"
        try:
            seal = json.loads(seal_path.read_text(encoding="utf-8"))
            expected = (seal["sha256"], int(seal["bytes"]), int(seal["count"]))
        except (OSError, ValueError, KeyError, TypeError):
            return "corrupt"
        if not path.exists() or path.stat().st_size != expected[1] or expected[2] != len(self.items(shard)):
            return "corrupt"
        return "ok" if _sha256(path) == expected[0] else "corrupt"

    def pending(self, shards: Iterator[int] | None = None) -> list[int]:
        """The shards (of ``shards``, default all) that must be computed: missing or corrupt ones (logged)."""
        todo = []
        for shard in range(self.num_shards) if shards is None else shards:
            state = self.status(shard)
            if state == "corrupt":
                logger.warning("cache shard %s is corrupt (truncated or altered): recomputing it", self.shard_path(shard))
            if state != "ok":
                todo.append(shard)
        return todo

    def write(self, shard: int, payload: dict[str, Any]) -> None:
        """Store a shard's payload (tensors, lists, strings; ``torch.load(weights_only=True)`` must read it)."""
        path = self.shard_path(shard)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        torch.save(payload, partial)
        _fsync(partial)
        partial.replace(path)
        seal = {"sha256": _sha256(path), "bytes": path.stat().st_size, "count": len(self.items(shard))}
        _write_atomic(self._seal_path(shard), json.dumps(seal).encode())

    def read(self, shard: int, mmap: bool = True) -> dict[str, Any]:
        """A sealed shard's payload; tensors memory-mapped by default (pages are read when used).

        Raises:
            CheckpointError: the shard is not sealed or does not match its seal (call :meth:`pending` first).
        """
        state = self.status(shard)
        if state != "ok":
            raise CheckpointError(f"cache shard {self.shard_path(shard)} is {state}")
        try:
            return torch.load(self.shard_path(shard), map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as error:  # torch raises many types for unreadable files
            raise CheckpointError(f"cannot read cache shard {self.shard_path(shard)}: {error}") from error

    def _seal_path(self, shard: int) -> Path:
        return self.directory / f"shard_{shard:05d}.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # processes of one DDP run may race here
    with open(partial, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    partial.replace(path)
