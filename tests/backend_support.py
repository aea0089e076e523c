"""Helpers for the backend tests: test images, a fake Label Studio file server, a tiny checkpoint.

The fake server is a real HTTP server on 127.0.0.1 (a thread) that serves files at Label Studio's paths,
checks the ``Authorization`` header like Label Studio (``Token <legacy>`` or ``Bearer <access>``), exchanges
a personal access token at ``/api/token/refresh/``, and records every request.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from backend.settings import Secret, Settings
from tests.e2e.processes import ManagedProcess, base_env, free_port

REPO = Path(__file__).resolve().parents[1]
LEGACY_TOKEN = "legacy-0123456789abcdef0123456789abcdef"
#: The one Redis database of the tests (flushed by the ``redis_db`` fixture of tests/conftest.py). Two test runs
#: on one Redis at once must each set their own (LITESAM_TEST_REDIS_URL).
TEST_REDIS_URL = os.environ.get("LITESAM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def png_bytes(width: int, height: int, seed: int = 0, mode: str = "RGB") -> bytes:
    """A random-content PNG of width×height pixels."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (height, width, channels) if channels else (height, width)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=None).convert(mode).save(buffer, "PNG")
    return buffer.getvalue()


def exif_rotated_jpeg(stored_width: int, stored_height: int, orientation: int = 6) -> bytes:
    """A JPEG stored as stored_width×stored_height with an EXIF orientation tag (6 = rotate 90° clockwise,
    so its natural size is stored_height×stored_width)."""
    pixels = np.zeros((stored_height, stored_width, 3), dtype=np.uint8)
    pixels[:, : stored_width // 2] = (255, 0, 0)  # left half red in storage → top half red when displayed
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", exif=exif, quality=90)
    return buffer.getvalue()


def fake_jwt(payload: dict) -> str:
    """An unsigned JWT-shaped token with ``payload`` (the backend only reads the payload)."""

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(payload)}.c2lnbmF0dXJl"


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    auth: bool = True
    declare_length: bool = True
    hold: threading.Event | None = None
    #: (status, body) from the request's body, instead of ``status`` and ``body``.
    answer: Callable[[bytes], tuple[int, bytes]] | None = None


class FakeLabelStudio:
    """A threaded HTTP server answering the routes in :attr:`routes` (path with query → Route)."""

    def __init__(self, pat: str | None = None, access_lifetime_s: float = 300.0) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization)
        self.posted: list[tuple[str, bytes]] = []  # (path, body) of every POST
        self.pat = pat
        self.access_lifetime_s = access_lifetime_s
        self.issued_access: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_POST(self) -> None:
                server._handle(self, "POST")

            def do_DELETE(self) -> None:
                server._handle(self, "DELETE")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def add(
        self,
        path: str,
        body: bytes = b"",
        status: int = 200,
        auth: bool = True,
        declare_length: bool = True,
        hold: threading.Event | None = None,
        answer: Callable[[bytes], tuple[int, bytes]] | None = None,
        **headers: str,
    ) -> str:
        """Serve ``body`` at ``path``; with ``hold``, each answer first waits for the event (at most 60 s);
        with ``answer``, the status and body are ``answer(the request's body)``."""
        self.routes[path] = Route(status, body, dict(headers), auth, declare_length, hold, answer)
        return path

    def _authorized(self, header: str | None) -> bool:
        if header == f"Token {LEGACY_TOKEN}":
            return True
        with self._lock:
            return header is not None and header.startswith("Bearer ") and header[7:] in self.issued_access

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        auth = handler.headers.get("Authorization")
        length = int(handler.headers.get("Content-Length", 0)) if method == "POST" else 0
        posted = handler.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append((method, handler.path, auth))
            if method == "POST":
                self.posted.append((handler.path, posted))
        if method == "POST" and handler.path == "/api/token/refresh/":
            body = json.loads(posted or b"{}")
            if self.pat is None or body.get("refresh") != self.pat:
                return self._send(handler, 401, b'{"detail": "Token is invalid"}')
            access = fake_jwt(
                {
                    "token_type": "access",
                    "exp": time.time() + self.access_lifetime_s,
                    "jti": f"{len(self.issued_access)}",
                }
            )
            with self._lock:
                self.issued_access.append(access)
            return self._send(handler, 200, json.dumps({"access": access}).encode())
        route = self.routes.get(handler.path)
        if route is None:
            return self._send(handler, 404, b"not found")
        if route.auth and not self._authorized(auth):
            return self._send(handler, 401, b'{"detail": "Authentication credentials were not provided."}')
        if route.hold is not None:
            route.hold.wait(60)
        status, body = route.answer(posted) if route.answer else (route.status, route.body)
        self._send(handler, status, body, route.headers, route.declare_length)

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        headers: dict | None = None,
        declare_length: bool = True,
    ) -> None:
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        if declare_length:
            handler.send_header("Content-Length", str(len(body)))
        else:
            handler.close_connection = True
        handler.end_headers()
        handler.wfile.write(body)


def keypoint(
    x: float,
    y: float,
    width: int,
    height: int,
    label: str = "Object",
    positive: bool | None = True,
    to_name: str = "image",
    from_name: str = "point",
) -> dict:
    """A smart keypoint region as Label Studio 1.23 sends it (x, y in percent)."""
    region = {
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label], "labels": [label]},
        "id": f"kp{x}{y}",
        "from_name": from_name,
        "to_name": to_name,
        "type": "keypointlabels",
        "origin": "manual",
    }
    if positive is not None:
        region["is_positive"] = positive
    return region


def rectangle(
    x: float,
    y: float,
    w: float,
    h: float,
    width: int,
    height: int,
    label: str = "Object",
    rotation: float = 0,
    to_name: str = "image",
    from_name: str = "box",
) -> dict:
    """A smart rectangle region as Label Studio 1.23 sends it (percent, x/y = top-left corner)."""
    return {
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, "rectanglelabels": [label]},
        "id": f"rect{x}{y}",
        "from_name": from_name,
        "to_name": to_name,
        "type": "rectanglelabels",
        "origin": "manual",
    }


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound and released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServedBackend(NamedTuple):
    """A running ``litesam-backend serve``: its base URL and its process (log, pid)."""

    url: str
    process: ManagedProcess


@contextlib.contextmanager
def serve_backend(
    tmp_path: Path,
    env: dict,
    *,
    workers: int | None = 1,
    threads: int | None = 2,
    ready_status: int = 200,
    name: str = "backend",
    timeout: float = 60,
) -> Iterator[ServedBackend]:
    """Run ``litesam-backend serve`` (``python -m backend.cli serve``, gunicorn) on a free port with exactly
    ``env``, wait until ``GET /health`` answers ``ready_status`` (401 when basic auth is on), yield a
    :class:`ServedBackend`, and stop the process tree afterwards; a block that ends normally fails if the log
    holds a traceback. ``workers``/``threads`` None leave the option out (the settings' default); the log and
    pidfile are ``tmp_path/{name}.log`` and ``.pid``."""
    port = free_port()
    pidfile = Path(tmp_path) / f"{name}.pid"
    argv = [sys.executable, "-m", "backend.cli", "serve", "--bind", f"127.0.0.1:{port}"]
    if workers is not None:
        argv += ["--workers", str(workers)]
    if threads is not None:
        argv += ["--threads", str(threads)]
    argv += ["--pid", str(pidfile)]
    log_path = Path(tmp_path) / f"{name}.log"
    process = ManagedProcess(
        "litesam-backend serve", argv, env=env, cwd=REPO, log_path=log_path, pidfile=pidfile
    )
    process.start()
    try:
        url = f"http://127.0.0.1:{port}"
        process.wait_http(f"{url}/health", timeout=timeout, ready=lambda r: r.status_code == ready_status)
        yield ServedBackend(url, process)
        assert "Traceback" not in process.log_text(), process.log_tail()
    finally:
        process.stop()


def backend_env(
    home: Path, label_studio_url: str = "http://127.0.0.1:9", checkpoint: Path | None = None, **extra: str
) -> dict:
    """The environment of a served test backend (``serve_backend``): the test Redis, a legacy token, one torch
    thread, and ``extra``; the model is ``checkpoint`` alone (its variant found from the file), or by default a
    tiny checkpoint written to ``home/tiny.pt`` with ``LITESAM_VARIANT=litesam_tiny``."""
    if checkpoint is None:
        model = {"LITESAM_CHECKPOINT": make_tiny_checkpoint(Path(home) / "tiny.pt"), "LITESAM_VARIANT": "litesam_tiny"}
    else:
        model = {"LITESAM_CHECKPOINT": str(checkpoint)}
    return base_env(
        home,
        **model,
        REDIS_URL=TEST_REDIS_URL,
        LABEL_STUDIO_URL=label_studio_url,
        LABEL_STUDIO_API_KEY=LEGACY_TOKEN,
        LITESAM_TORCH_THREADS="1",
        **extra,
    )


def settings_for(checkpoint, label_studio_url="http://127.0.0.1:9", **overrides) -> Settings:
    """Settings of an in-process backend for tests: the test Redis, a tiny checkpoint, a legacy token."""
    values = dict(
        label_studio_url=label_studio_url,
        label_studio_api_key=Secret(LEGACY_TOKEN),
        redis_url=Secret(TEST_REDIS_URL),
        checkpoint=checkpoint,
        variant="litesam_tiny",
    )
    values.update(overrides)
    return Settings(**values)


def flushed_redis_at(url: str, socket_timeout: float):
    """Yields a ``redis.Redis`` on ``url``, flushed before and after (the body of the test fixtures that hand
    out a Redis database); fails the test with a clear message when no Redis answers."""
    import pytest
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=socket_timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {url} does not answer ({exc}); start one or run .ci/run", pytrace=False)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def make_tiny_checkpoint(path) -> str:
    """Write a random-weight ``litesam_tiny`` checkpoint to ``path`` (seeded) and return its path."""
    import torch

    from litesam.build import build_model, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(build_model("litesam_tiny"), path, "litesam_tiny")
    return str(path)


def decode_brush(region: dict) -> np.ndarray:
    """A ``brushlabels`` region's mask as original_height×original_width uint8 (alpha channel of the RLE),
    decoded with label-studio-sdk; fails if the RLE does not hold exactly H·W·4 values."""
    from label_studio_sdk.converter.brush import decode_rle

    height, width = region["original_height"], region["original_width"]
    flat = decode_rle(region["value"]["rle"])
    assert flat.size == height * width * 4, f"RLE holds {flat.size} values, expected {height}×{width}×4"
    return flat.reshape(height, width, 4)[:, :, 3]
