"""Hostile request bodies through a real ``litesam-backend serve`` (gunicorn): each is refused with a JSON 400
that says what was wrong, and nothing reaches the log as a traceback (``serve_backend`` fails the test if the
log holds one). Broken chunked bodies are written on raw sockets, as no HTTP client sends them."""

from __future__ import annotations

import json
import socket

import pytest
import requests

from tests.backend_support import backend_env, serve_backend

DEPTH = 100_000


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("refusals")
    env = backend_env(tmp_path)
    with serve_backend(tmp_path, env, workers=1, threads=2) as backend:
        yield backend


def raw_exchange(url: str, request: bytes) -> tuple[int, dict, bytes]:
    """Send ``request`` bytes on a new connection, close our sending side, and read the whole answer:
    (status, headers with lower-case names, body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def chunked_post(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: backend\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode() + body


def assert_json_400(status: int, body: bytes, fragment: str) -> None:
    assert status == 400, body
    assert fragment in json.loads(body)["error"], body


@pytest.mark.parametrize(
    "document",
    ["[" * DEPTH + "]" * DEPTH, '{"a":' * DEPTH + "1" + "}" * DEPTH, '{"tasks": ' + "[" * DEPTH],
    ids=["arrays", "objects", "unclosed"],
)
def test_json_nested_100000_levels_deep_is_400(served, document):
    answer = requests.post(
        f"{served.url}/predict", data=document, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert answer.status_code == 400
    message = answer.json()["error"]
    assert "nested too deeply" in message or "not valid JSON" in message
    assert "Traceback" not in answer.text


@pytest.mark.parametrize(
    "chunks",
    [b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}XX0\r\n\r\n", b"-1\r\n{}\r\n0\r\n\r\n"],
    ids=["not-hex", "missing-terminator", "negative"],
)
def test_a_malformed_chunked_body_is_400_json(served, chunks):
    status, headers, body = raw_exchange(served.url, chunked_post("/predict", chunks))
    assert_json_400(status, body, "could not be read")
    assert headers["content-type"] == "application/json"


def test_a_chunked_body_cut_short_is_400_json(served):
    status, _, body = raw_exchange(served.url, chunked_post("/setup", b'40\r\n{"schema": "<View>'))
    assert_json_400(status, body, "could not be read")


def test_a_body_shorter_than_its_content_length_is_400_json(served):
    request = (
        b"POST /predict HTTP/1.1\r\nHost: backend\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + b'{"tasks": []'
    )
    status, _, body = raw_exchange(served.url, request)
    assert status == 400, body  # the server hands over the bytes it got, or fails the read
    message = json.loads(body)["error"]
    assert "could not be read" in message or "not valid JSON" in message


def test_the_jobs_route_refuses_a_broken_chunked_body_too(served):
    status, _, body = raw_exchange(served.url, chunked_post("/jobs", b"zz\r\n"))
    assert_json_400(status, body, "could not be read")


def test_the_backend_still_answers_after_the_refusals(served):
    assert requests.get(f"{served.url}/health", timeout=10).json()["status"] == "UP"
    assert "Traceback" not in served.process.log_text()
