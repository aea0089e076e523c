"""Find the checkpoint file: a local path, or an http(s) URL downloaded once into the cache folder.

A URL is downloaded to ``<cache dir>/checkpoints/<sha256 of the URL>[:16]-<file name>`` through a temporary
file that is renamed into place only after its sha256 matched ``LITESAM_CHECKPOINT_SHA256`` (when given). An
exclusive file lock makes concurrent processes (gunicorn workers, RQ workers) download it once; the others
wait and reuse the file. Nothing is downloaded at import time; ``litesam-backend serve`` resolves the
checkpoint before starting its workers.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import requests

from litesam.build import checkpoint_sha256

from .errors import ConfigurationError

logger = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A local checkpoint file and its sha256 (hex)."""

    path: Path
    sha256: str


def resolve_checkpoint(
    source: str | None, expected_sha256: str | None, cache_dir: Path
) -> ResolvedCheckpoint:
    """The local file for ``source`` (path or URL) and its verified sha256.

    Raises:
        ConfigurationError: no source, a missing file, a failed download, or a sha256 mismatch.
    """
    if source is None:
        raise ConfigurationError(
            "LITESAM_CHECKPOINT is not set: give the path or http(s) URL of a Lite-SAM checkpoint "
            "(written by `litesam train` or litesam.build.save_checkpoint)"
        )
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        return _download(source, expected_sha256, cache_dir)
    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigurationError(f"LITESAM_CHECKPOINT {str(path)!r} is not a file")
    sha = checkpoint_sha256(path)
    if expected_sha256 is not None and sha != expected_sha256:
        raise ConfigurationError(
            f"checkpoint {str(path)!r} has sha256 {sha}, but LITESAM_CHECKPOINT_SHA256 says {expected_sha256}"
        )
    return ResolvedCheckpoint(path, sha)


def _download(url: str, expected_sha256: str | None, cache_dir: Path) -> ResolvedCheckpoint:
    parts = urllib.parse.urlsplit(url)
    shown = urllib.parse.urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))
    name = Path(parts.path).name or "checkpoint.pt"
    folder = cache_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    with open(folder / f"{target.name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if target.is_file():
            sha = checkpoint_sha256(target)
            if expected_sha256 is None or sha == expected_sha256:
                return ResolvedCheckpoint(target, sha)
            logger.warning(
                "cached checkpoint %s does not match LITESAM_CHECKPOINT_SHA256; downloading again", target
            )
        logger.info("downloading checkpoint %s to %s", shown, target)
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".download-")
        try:
            with os.fdopen(fd, "wb") as out, requests.get(url, stream=True, timeout=(10, 60)) as response:
                if response.status_code != 200:
                    raise ConfigurationError(
                        f"downloading the checkpoint {shown} failed: HTTP {response.status_code}"
                    )
                for chunk in response.iter_content(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
            sha = digest.hexdigest()
            if expected_sha256 is not None and sha != expected_sha256:
                raise ConfigurationError(
                    f"the checkpoint downloaded from {shown} has sha256 {sha}, but LITESAM_CHECKPOINT_SHA256 "
                    f"says {expected_sha256}; it was not kept"
                )
            os.replace(tmp_name, target)
        except requests.RequestException as exc:
            raise ConfigurationError(
                f"downloading the checkpoint {shown} failed: {type(exc).__name__}"
            ) from None
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
    return ResolvedCheckpoint(target, sha)
