"""Backend settings: one immutable object, built once at start-up from environment variables.

This is the only module that reads the environment. Everything else receives a :class:`Settings`.

=============================  ===========================  ==========================================
environment variable           default                      meaning
=============================  ===========================  ==========================================
LABEL_STUDIO_URL               (none)                       Label Studio base URL as the backend reaches it,
                                                            e.g. ``http://label-studio:8080``; needed for
                                                            ``/data/upload/…``, local files and cloud URIs
LABEL_STUDIO_API_KEY           (none)                       personal access token (a JWT refresh token,
                                                            exchanged for short-lived access tokens) or a
                                                            legacy token (sent as ``Token <key>``)
REDIS_URL                      redis://127.0.0.1:6379/0     job queue, job records (and the embedding cache
                                                            unless LITESAM_CACHE_REDIS_URL is set)
LITESAM_CACHE_REDIS_URL        REDIS_URL                    embedding cache; give it its own Redis with
                                                            ``maxmemory-policy allkeys-lru`` so evicting
                                                            embeddings never touches the job queue
LITESAM_CHECKPOINT             (none)                       checkpoint path, or http(s) URL downloaded once
                                                            into LITESAM_CACHE_DIR
LITESAM_CHECKPOINT_SHA256      (none)                       expected sha256 of the checkpoint file (checked)
LITESAM_CACHE_DIR              ~/.cache/litesam             where downloaded checkpoints (and OpenVINO's
                                                            converted encoder) are kept
LITESAM_VARIANT                (from the checkpoint)        model variant (litesam_r640, sam_vit_b, mobile_sam, …);
                                                            when set, the checkpoint must hold it
LITESAM_DEVICE                 cpu                          torch device (cpu, cuda, cuda:1, …)
LITESAM_TORCH_THREADS          1                            intra-op threads of one inference, set at model load
                                                            (README "Thread policy": more than one collapses
                                                            as soon as another process keeps a core busy)
LITESAM_INFERENCE_SLOTS        cores ÷ (workers × torch     inferences one process runs at once; more wait
                               threads), at least 1         (so threads never oversubscribe the cores)
LITESAM_PRECISION              fp32                         fp32, bf16 or auto (litesam.inference: bf16 where
                                                            the CPU has native bf16 and measures it faster)
LITESAM_ENCODER_RUNTIME        auto                         torch, openvino or auto (litesam.inference:
                                                            OpenVINO on the bf16 path where installed;
                                                            its converted encoder is kept in
                                                            LITESAM_CACHE_DIR/openvino)
LITESAM_FP32_KERNEL            auto                         mkl, onednn or auto: the float32 kernel of inference
                                                            (litesam.kernels reads it; auto: oneDNN where a
                                                            start-up probe measures it ≥ 1.2× MKL)
BASIC_AUTH_USER                (none)                       basic auth required on every route when both
BASIC_AUTH_PASS                (none)                       user and password are set
LITESAM_EMBEDDING_TTL          604800 (7 days)              seconds an image embedding stays in Redis
LITESAM_EMBEDDING_LRU          16                           embeddings kept in each process's memory
LITESAM_MAX_IMAGE_BYTES        52428800 (50 MiB)            larger downloads are refused (413)
LITESAM_MAX_IMAGE_PIXELS       50000000                     larger images are refused before decoding (413)
LITESAM_ALLOWED_HOSTS          (none)                       comma-separated extra image hosts (``cdn.example.org``,
                                                            ``*.example.org``; ``*`` = any public host)
LITESAM_FETCH_TIMEOUT          30                           seconds to connect to / read from an image host
LITESAM_BIND                   0.0.0.0:9090                 gunicorn bind address (``litesam-backend serve``)
LITESAM_WORKERS                1                            gunicorn worker processes
LITESAM_THREADS                4                            threads per gunicorn worker
LITESAM_JOB_DEFAULTS           {}                           JSON object of default pre-annotation job options
                                                            (``backend.jobs.options.JobOptions``: label, SegEvery
                                                            filters, chunk size …), for every job and for
                                                            Label Studio's "Retrieve predictions"
LITESAM_SYNC_PREDICT_LIMIT     2                            "Retrieve predictions" on up to this many tasks is
                                                            answered at once; more tasks become a job
LITESAM_OUTPUT                 auto                         masks as ``brush`` or ``polygon`` regions; ``auto``:
                                                            polygons when the image has a <PolygonLabels>
LITESAM_POLYGON_TOLERANCE      1.0                          polygon simplification tolerance in pixels
LOG_LEVEL                      INFO                         DEBUG, INFO, WARNING, ERROR
=============================  ===========================  ==========================================

Secrets (the API key, the basic-auth password, a password inside REDIS_URL) are held in :class:`Secret`
objects whose ``repr``/``str`` never show the value.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigurationError
from .labelstudio.label_config import OUTPUTS

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Secret:
    """A secret string that does not show itself in reprs, logs or f-strings; use :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    """All backend settings; see the module docstring for the environment variables and defaults."""

    label_studio_url: str | None = None
    label_studio_api_key: Secret | None = None
    redis_url: Secret = field(default_factory=lambda: Secret("redis://127.0.0.1:6379/0"))
    cache_redis_url: Secret | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "litesam")
    variant: str | None = None
    device: str = "cpu"
    torch_threads: int = 1
    inference_slots: int | None = None
    precision: str = "fp32"
    encoder_runtime: str = "auto"
    fp32_kernel: str = "auto"
    basic_auth_user: str | None = None
    basic_auth_pass: Secret | None = None
    embedding_ttl: int = 7 * 24 * 3600
    embedding_lru: int = 16
    max_image_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    allowed_hosts: tuple[str, ...] = ()
    fetch_timeout: float = 30.0
    bind: str = "0.0.0.0:9090"
    workers: int = 1
    threads: int = 4
    job_defaults: str = "{}"
    sync_predict_limit: int = 2
    output: str = "auto"
    polygon_tolerance: float = 1.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``environ`` (default ``os.environ``); empty values count as unset.

        Raises:
            ConfigurationError: a value is malformed; the message names the variable, never a secret value.
        """
        env = _Env(os.environ if environ is None else environ)
        user = env.str("BASIC_AUTH_USER")
        password = env.str("BASIC_AUTH_PASS")
        if (user is None) != (password is None):
            raise ConfigurationError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        api_key = env.str("LABEL_STUDIO_API_KEY")
        redis_url = env.str("REDIS_URL") or cls().redis_url.reveal()
        sha = env.str("LITESAM_CHECKPOINT_SHA256")
        if sha is not None:
            sha = sha.lower()
            if not _SHA256.fullmatch(sha):
                raise ConfigurationError("LITESAM_CHECKPOINT_SHA256 must be 64 hexadecimal digits")
        cache_dir = env.str("LITESAM_CACHE_DIR")
        log_level = (env.str("LOG_LEVEL") or "INFO").upper()
        if log_level not in _LOG_LEVELS:
            raise ConfigurationError(f"LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}, got {log_level!r}")
        hosts = tuple(
            h.strip().lower() for h in (env.str("LITESAM_ALLOWED_HOSTS") or "").split(",") if h.strip()
        )
        defaults = cls()
        return cls(
            label_studio_url=_label_studio_url(env.str("LABEL_STUDIO_URL")),
            label_studio_api_key=Secret(api_key) if api_key else None,
            redis_url=Secret(redis_url),
            cache_redis_url=Secret(cache_url) if (cache_url := env.str("LITESAM_CACHE_REDIS_URL")) else None,
            checkpoint=env.str("LITESAM_CHECKPOINT"),
            checkpoint_sha256=sha,
            cache_dir=Path(cache_dir).expanduser() if cache_dir else defaults.cache_dir,
            variant=env.str("LITESAM_VARIANT") or defaults.variant,
            device=env.str("LITESAM_DEVICE") or defaults.device,
            torch_threads=env.int("LITESAM_TORCH_THREADS", defaults.torch_threads, minimum=1),
            inference_slots=env.int("LITESAM_INFERENCE_SLOTS", None, minimum=1),
            precision=_precision(env.str("LITESAM_PRECISION") or defaults.precision),
            encoder_runtime=_choice(
                env.str("LITESAM_ENCODER_RUNTIME") or defaults.encoder_runtime,
                "LITESAM_ENCODER_RUNTIME",
                _RUNTIMES,
            ),
            fp32_kernel=_choice(
                env.str("LITESAM_FP32_KERNEL") or defaults.fp32_kernel, "LITESAM_FP32_KERNEL", _KERNELS
            ),
            basic_auth_user=user,
            basic_auth_pass=Secret(password) if password is not None else None,
            embedding_ttl=env.int("LITESAM_EMBEDDING_TTL", defaults.embedding_ttl, minimum=1),
            embedding_lru=env.int("LITESAM_EMBEDDING_LRU", defaults.embedding_lru, minimum=0),
            max_image_bytes=env.int("LITESAM_MAX_IMAGE_BYTES", defaults.max_image_bytes, minimum=1),
            max_image_pixels=env.int("LITESAM_MAX_IMAGE_PIXELS", defaults.max_image_pixels, minimum=1),
            allowed_hosts=hosts,
            fetch_timeout=env.float("LITESAM_FETCH_TIMEOUT", defaults.fetch_timeout),
            bind=env.str("LITESAM_BIND") or defaults.bind,
            workers=env.int("LITESAM_WORKERS", defaults.workers, minimum=1),
            threads=env.int("LITESAM_THREADS", defaults.threads, minimum=1),
            job_defaults=_json_object(env.str("LITESAM_JOB_DEFAULTS") or "{}", "LITESAM_JOB_DEFAULTS"),
            sync_predict_limit=env.int("LITESAM_SYNC_PREDICT_LIMIT", defaults.sync_predict_limit, minimum=0),
            output=_choice(env.str("LITESAM_OUTPUT") or defaults.output, "LITESAM_OUTPUT", OUTPUTS),
            polygon_tolerance=env.float("LITESAM_POLYGON_TOLERANCE", defaults.polygon_tolerance),
            log_level=log_level,
        )

    @property
    def embedding_redis_url(self) -> Secret:
        """Where the embedding cache lives: ``cache_redis_url``, else the job Redis."""
        return self.cache_redis_url or self.redis_url

    @property
    def inference_concurrency(self) -> int:
        """Inferences one process runs at once: ``inference_slots``, else cores ÷ (workers × torch threads)."""
        if self.inference_slots is not None:
            return self.inference_slots
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // (self.workers * self.torch_threads))

    @property
    def basic_auth_enabled(self) -> bool:
        return self.basic_auth_user is not None and self.basic_auth_pass is not None

    def secret_values(self) -> list[str]:
        """The secret strings, for log redaction (empty ones left out)."""
        values = [s.reveal() for s in (self.label_studio_api_key, self.basic_auth_pass) if s is not None]
        for url in (self.redis_url, self.embedding_redis_url):
            values.append(urllib.parse.urlsplit(url.reveal()).password)
        return sorted({v for v in values if v})


#: ``litesam.inference.PRECISIONS`` and ``RUNTIMES`` and ``litesam.kernels.KERNELS``, spelled out so that
#: reading settings does not import torch.
_PRECISIONS = ("fp32", "bf16", "auto")
_RUNTIMES = ("torch", "openvino", "auto")
_KERNELS = ("mkl", "onednn", "auto")


def _precision(value: str) -> str:
    if value not in _PRECISIONS:
        raise ConfigurationError(f"LITESAM_PRECISION must be one of {', '.join(_PRECISIONS)}, got {value!r}")
    return value


def _choice(value: str, name: str, choices: tuple[str, ...]) -> str:
    if value.lower() not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value.lower()


class _Env:
    """Typed reads of environment variables with messages that name the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def str(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def int(self, name: str, default: int | None, minimum: int) -> int | None:
        raw = self.str(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
        if value < minimum:
            raise ConfigurationError(f"{name} must be at least {minimum}, got {value}")
        return value

    def float(self, name: str, default: float) -> float:
        raw = self.str(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
        if not value > 0 or value == float("inf"):
            raise ConfigurationError(f"{name} must be a positive number of seconds, got {raw!r}")
        return value


def _label_studio_url(raw: str | None) -> str | None:
    if raw is None:
        return None
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"LABEL_STUDIO_URL must be an absolute http(s) URL such as http://label-studio:8080, got {raw!r}"
        )
    return raw.rstrip("/")


def _json_object(text: str, name: str) -> str:
    """``text`` if it is a JSON object; otherwise a :class:`ConfigurationError` naming the variable."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ConfigurationError(f"{name} must be a JSON object: {error}") from None
    if not isinstance(value, dict):
        raise ConfigurationError(f"{name} must be a JSON object, got {type(value).__name__}")
    return text
