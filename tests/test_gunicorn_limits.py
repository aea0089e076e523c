"""Gunicorn's own refusals, which the app never sees, are what the README says: a request line over 4094
bytes is 414, more than 100 header fields or a header line over 8190 bytes is 431, each as gunicorn's small
HTML page; ``GUNICORN_CMD_ARGS`` raises the limits.
"""

from __future__ import annotations

import socket

import pytest

from tests.backend_support import TEST_REDIS_URL, serve_backend
from tests.e2e.processes import base_env


def raw_request(url: str, request: bytes) -> tuple[str, bytes]:
    """Send ``request`` over a fresh connection; returns the status line and the whole answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    return answer.split(b"\r\n", 1)[0].decode(), answer


def get_health(query: bytes = b"", headers: bytes = b"") -> bytes:
    return b"GET /health" + query + b" HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n" + headers + b"\r\n"


LONG_LINE = get_health(query=b"?q=" + b"a" * 5000)
MANY_FIELDS = get_health(headers=b"".join(b"X-Field-%d: 1\r\n" % i for i in range(101)))
LONG_FIELD = get_health(headers=b"X-Long: " + b"a" * 9000 + b"\r\n")


@pytest.mark.slow
def test_gunicorn_refuses_long_request_lines_and_large_headers_itself(tmp_path, checkpoint):
    env = base_env(tmp_path, LITESAM_CHECKPOINT=checkpoint, LITESAM_VARIANT="litesam_tiny",
                   REDIS_URL=TEST_REDIS_URL)
    with serve_backend(tmp_path, env) as (url, _):
        for request, status in ((LONG_LINE, "414 URI Too Long"), (MANY_FIELDS, "431 Request Header Fields Too Large"),
                                (LONG_FIELD, "431 Request Header Fields Too Large")):
            line, answer = raw_request(url, request)
            assert line == f"HTTP/1.1 {status}"
            assert b"Content-Type: text/html" in answer and b"<html>" in answer
        assert raw_request(url, get_health())[0] == "HTTP/1.1 200 OK"


@pytest.mark.slow
def test_gunicorn_cmd_args_raise_the_limits(tmp_path, checkpoint):
    env = base_env(tmp_path, LITESAM_CHECKPOINT=checkpoint, LITESAM_VARIANT="litesam_tiny",
                   REDIS_URL=TEST_REDIS_URL,
                   GUNICORN_CMD_ARGS="--limit-request-line 8190 --limit-request-fields 200 "
                                     "--limit-request-field_size 16380")
    with serve_backend(tmp_path, env) as (url, _):
        for request in (LONG_LINE, MANY_FIELDS, LONG_FIELD):
            assert raw_request(url, request)[0] == "HTTP/1.1 200 OK"
