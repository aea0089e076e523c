"""Tests of the end-to-end harness itself: process management, and a real Label Studio driven through it."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.labelstudio import ADMIN_EMAIL, LabelStudioServer, label_studio_env
from tests.e2e.processes import ManagedProcess, ProcessError, base_env, free_port

BRUSH_CONFIG = """
<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Object" background="#ff0000"/>
  </BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="Object" smart="true" background="#00ff00"/>
  </KeyPointLabels>
</View>
"""


def _png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ process helpers
def _http_server(tmp_path, port: int) -> ManagedProcess:
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    return ManagedProcess("http.server", argv, env=env, cwd=tmp_path, log_path=tmp_path / "http.log")


def test_managed_process_waits_and_stops_the_whole_group(tmp_path):
    port = free_port()
    server = _http_server(tmp_path, port).start()
    try:
        assert server.wait_http(f"http://127.0.0.1:{port}/", timeout=30) < 30
        assert server.is_running()
    finally:
        code = server.stop(timeout=5)
    assert code is not None and not server.is_running()
    assert server.stop() == code  # idempotent


def test_managed_process_reports_early_exit_with_log_tail(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"]
    proc = ManagedProcess(
        "crasher", argv, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, log_path=tmp_path / "c.log"
    )
    proc.start()
    started = time.monotonic()
    with pytest.raises(ProcessError, match="exited with code 3") as info:
        proc.wait_http(f"http://127.0.0.1:{free_port()}/", timeout=30)
    assert time.monotonic() - started < 10
    assert "boom: bad config" in str(info.value)
    proc.stop()


def test_managed_process_kills_a_process_that_ignores_sigterm(tmp_path):
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    proc = ManagedProcess(
        "stubborn", [sys.executable, "-c", script], env={}, cwd=tmp_path, log_path=tmp_path / "s.log"
    )
    proc.start()
    proc.wait_log("ready", timeout=30)
    started = time.monotonic()
    code = proc.stop(timeout=1.0)
    assert code == -9
    assert time.monotonic() - started < 10


def test_wait_log_only_reads_what_this_start_wrote(tmp_path):
    log = tmp_path / "shared.log"
    log.write_text("Starting development server at http://127.0.0.1:1/\n")  # an earlier run's line
    argv = [sys.executable, "-c", "print('Starting development server at http://127.0.0.1:2/')"]
    proc = ManagedProcess("again", argv, env=base_env(tmp_path), cwd=tmp_path, log_path=log).start()
    match = proc.wait_log(r"server at http://127\.0\.0\.1:(\d+)/", timeout=30)
    assert match.group(1) == "2"
    proc.stop()
    assert "127.0.0.1:1/" in proc.log_tail()


def test_label_studio_env_is_hermetic(tmp_path, monkeypatch):
    for name in ("USERNAME", "PASSWORD", "HOST", "PORT", "DJANGO_DB", "DEBUG", "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK",
                 "HEARTEX_USERNAME", "PYTHONPATH", "XDG_DATA_HOME"):  # fmt: skip
        monkeypatch.setenv(name, "leaked")
    env = label_studio_env(
        data_dir=tmp_path / "d", files_root=tmp_path / "f", home=tmp_path / "h", port=1234, secret_key="k" * 64
    )
    assert "leaked" not in env.values()
    assert env["LABEL_STUDIO_HOST"] == "http://127.0.0.1:1234"
    assert env["DJANGO_DB"] == "sqlite" and env["XDG_DATA_HOME"].startswith(str(tmp_path))
    assert env["LABEL_STUDIO_ML_BLOCK_LOCAL_IP"] == env["LABEL_STUDIO_SSRF_PROTECTION_ENABLED"] == "false"


def test_the_harness_key_wins_over_a_dollar_key_that_label_studio_would_redraw(tmp_path):
    # LS 1.23.2 draws SECRET_KEY into <data>/.env; one starting with "$" reads back as a variable reference and
    # is replaced by a new draw at every start, which broke every PAT of a template copy (CI, 2026-12-06).
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / ".env").write_text("SECRET_KEY=$@i%z-wqcj&c4olfr\n")
    probe = textwrap.dedent(
        """
        import sys
        from label_studio.core.utils.secret_key import generate_secret_key_if_missing
        print(generate_secret_key_if_missing(sys.argv[1]))
        """
    )
    key = "0123456789abcdef" * 4

    def ls_key(**extra: str) -> str:
        env = label_studio_env(
            data_dir=data_dir, files_root=tmp_path / "f", home=tmp_path / "h", port=1234, secret_key=key
        )
        env.update(extra)
        done = subprocess.run(
            [sys.executable, "-c", probe, str(data_dir)], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    assert ls_key() == key
    assert ls_key() == key  # and again: nothing was redrawn
    unset = ls_key(SECRET_KEY="")  # what LS does on its own: a fresh draw each time
    assert unset != key and unset != ls_key(SECRET_KEY="")


# ------------------------------------------------------------------------------ real Label Studio
@pytest.mark.e2e
def test_projects_uploads_tokens_and_image_download(label_studio: LabelStudioServer):
    ls = label_studio
    project_id = ls.create_project(BRUSH_CONFIG, title="harness upload")
    files = [("tall.png", _png(333, 517, seed=1)), ("small.png", _png(64, 48, seed=2))]

    task_ids = ls.upload_images(project_id, files)

    assert len(set(task_ids)) == 2
    assert [t["id"] for t in ls.tasks(project_id)] == sorted(task_ids)
    uris = [ls.task(task_id)["data"]["image"] for task_id in task_ids]
    for (name, _), uri in zip(files, uris, strict=True):
        assert uri.startswith(f"/data/upload/{project_id}/") and uri.endswith(f"-{name}"), uri

    # Both token kinds authenticate through the SDK (legacy "Token …", PAT → refresh → "Bearer …").
    assert ls.client().users.whoami().email == ADMIN_EMAIL
    assert ls.client(ls.pat).users.whoami().email == ADMIN_EMAIL
    assert ls.process.env["SECRET_KEY"] == ls.template.secret_key  # the key that signed the PAT

    # The uploaded bytes come back with a Bearer access token from the PAT, and not without credentials.
    with ls.http("bearer") as bearer, ls.http(None) as anonymous:
        for (_, data), uri in zip(files, uris, strict=True):
            response = bearer.get(uri)
            assert response.status_code == 200, response.text[:300]
            assert response.content == data
        assert anonymous.get(uris[0]).status_code == 401
    assert Image.open(io.BytesIO(files[0][1])).size == (333, 517)


@pytest.mark.e2e
def test_local_files_import_is_served(label_studio: LabelStudioServer):
    ls = label_studio
    project_id = ls.create_project(BRUSH_CONFIG, title="harness local files")
    data = _png(40, 30, seed=3)

    (task_id,) = ls.import_local_files(project_id, [("one.png", data)], subdir="harness")

    uri = ls.task(task_id)["data"]["image"]
    assert uri == "/data/local-files/?d=harness/one.png"
    with ls.http("legacy") as client:
        response = client.get(uri)
    assert response.status_code == 200 and response.content == data


# A minimal ML backend speaking LS's protocol (/health, /setup, /predict), served by gunicorn with a pidfile.
_STUB_BACKEND = textwrap.dedent(
    """
    import json

    def app(environ, start_response):
        path = environ["PATH_INFO"].rstrip("/")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length) or b"null")
        if path == "/health":
            out = {"status": "UP", "model_class": "Stub"}
        elif path == "/setup":
            out = {"model_version": "INITIAL"}
        elif path == "/predict":
            context = body["params"]["context"]
            if context == {"fail": True}:
                start_response("500 INTERNAL SERVER ERROR", [("Content-Type", "text/plain")])
                return [b"stub failure"]
            results = []
            for task in body["tasks"]:
                region = {"from_name": "tag", "to_name": "image", "type": "brushlabels",
                          "value": {"format": "rle", "rle": [0, 0], "brushlabels": ["Object"]},
                          "meta": {"interactive": context is not None, "task": task["id"]}}
                results.append({"result": [region], "score": 0.5, "model_version": "INITIAL"})
            out = {"results": results}
        else:
            start_response("404 NOT FOUND", [("Content-Type", "text/plain")])
            return [b"not found"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(out).encode()]
    """
)


@pytest.fixture
def stub_backend(tmp_path):
    (tmp_path / "stub_backend.py").write_text(_STUB_BACKEND)
    port = free_port()
    pidfile = tmp_path / "gunicorn.pid"
    argv = [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4",
        "--pid", pidfile, "--no-control-socket", "stub_backend:app",
    ]  # fmt: skip
    env = base_env(tmp_path / "home")
    proc = ManagedProcess(
        "stub-backend", argv, env=env, cwd=tmp_path, log_path=tmp_path / "stub.log", pidfile=pidfile
    )
    proc.start()
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/health", timeout=30)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.stop()
    assert not proc.is_running()


@pytest.mark.e2e
def test_backend_connect_interactive_and_batch_predictions(label_studio: LabelStudioServer, stub_backend):
    ls = label_studio
    url, proc = stub_backend
    assert int(proc.pidfile.read_text()) == proc.pid
    project_id = ls.create_project(BRUSH_CONFIG, title="harness backend")
    task_ids = ls.upload_images(
        project_id, [("a.png", _png(32, 24, seed=4)), ("b.png", _png(24, 32, seed=5))]
    )

    ml_id = ls.connect_backend(project_id, url)

    context = {
        "result": [{"type": "keypointlabels", "value": {"x": 50.0, "y": 50.0, "keypointlabels": ["Object"]}}]
    }
    body = ls.interactive_annotating(ml_id, task_ids[0], context)
    assert body["data"]["result"][0]["meta"] == {"interactive": True, "task": task_ids[0]}, body
    failed = ls.interactive_annotating(ml_id, task_ids[0], {"fail": True})
    assert "data" not in failed and failed["errors"], failed
    assert ls.predictions(task=task_ids[0]) == []  # interactive answers are not stored

    action = ls.retrieve_predictions(project_id)
    assert action["processed_items"] == 2, action
    stored = ls.predictions(project=project_id)
    assert sorted(p["task"] for p in stored) == sorted(task_ids)
    assert all(p["result"][0]["meta"]["interactive"] is False for p in stored)
    assert len(ls.predictions(task=task_ids[1])) == 1


@pytest.mark.e2e
def test_connect_backend_reports_an_unreachable_backend(label_studio: LabelStudioServer):
    ls = label_studio
    project_id = ls.create_project(BRUSH_CONFIG, title="harness unreachable backend")
    with pytest.raises(AssertionError, match="HTTP 400"):
        ls.connect_backend(project_id, f"http://127.0.0.1:{free_port()}")
    with httpx.Client(timeout=5, trust_env=False) as client:
        assert client.get(f"{ls.url}/health").json() == {"status": "UP"}


@pytest.mark.e2e
def test_start_retries_when_the_chosen_port_is_taken(tmp_path, monkeypatch):
    """LS silently moves to the next port when its port is busy (recipe pitfall 6): the harness notices, retries."""
    import socket

    import tests.e2e.labelstudio as harness

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = iter([taken, free_port()])
        monkeypatch.setattr(harness, "free_port", lambda: next(ports))
        server = LabelStudioServer.start(tmp_path)
        try:
            assert server.port != taken
            assert server.client().users.whoami().email == ADMIN_EMAIL
            assert f"Port {taken} is in use" in server.process.log_text()
        finally:
            server.stop()
