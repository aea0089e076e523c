"""The Docker image, built and run for real by a private engine (:mod:`tests.docker_engine`).

``docker/Dockerfile`` is built with ``--network=host`` from a base image made here, with torch 2.13.0's CPU
wheel served as a wheelhouse (PyTorch's index is unreachable here; the rest comes from the package index)
and this machine's own CA certificates as ``EXTRA_CA_CERTS``. The image's default command
(``litesam-backend serve``) then runs with a random-weight tiny checkpoint mounted at /data/models, its
HEALTHCHECK must report healthy, a click is answered through its port, and the worker entry point must start
and register with RQ in Redis.

When no engine can start here (not root, no ``dockerd``, no overlay filesystem) the test fails with the
reason: it never skips.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import redis
import requests
from rq import Worker

from tests.backend_support import (
    LEGACY_TOKEN,
    TEST_REDIS_URL,
    FakeLabelStudio,
    decode_brush,
    keypoint,
    make_tiny_checkpoint,
    png_bytes,
)
from tests.docker_engine import (
    BASE_IMAGE,
    CACHE,
    EngineUnavailable,
    ensure_base_image,
    local_ca_certificates,
    running_engine,
    served_wheelhouse,
)
from tests.e2e.processes import free_port

REPO = Path(__file__).resolve().parents[1]
CONFIG = (REPO / "label_config.xml").read_text()
TAG = "litesam-backend:test"
IMAGE = png_bytes(320, 240, seed=3)


@pytest.fixture(scope="module")
def engine():
    try:
        with running_engine() as started:
            yield started
    except EngineUnavailable as exc:
        pytest.fail(f"no Docker engine could start: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def image(engine, tmp_path_factory):
    """The backend image, built from docker/Dockerfile (layers kept by the cached data root are reused)."""
    ensure_base_image(engine, tmp_path_factory.mktemp("base"))
    with served_wheelhouse(CACHE / "wheelhouse") as wheelhouse:
        engine.docker(
            "build", "--network=host", "--file", "docker/Dockerfile", "--tag", TAG,
            "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
            "--build-arg", "TORCH_INDEX_URL=https://pypi.org/simple",
            "--build-arg", f"WHEELHOUSE={wheelhouse}",
            "--build-arg", f"EXTRA_CA_CERTS={local_ca_certificates()}",
            str(REPO), timeout=900,
        )
    yield TAG
    engine.docker("image", "prune", "--force", check=False)  # the layers earlier builds left untagged


@pytest.fixture
def models_dir():
    """A world-readable folder with the tiny checkpoint (the image runs as uid 1000; pytest's tmp_path is 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="litesam-models-"))
    directory.chmod(0o755)
    make_tiny_checkpoint(directory / "tiny.pt")
    (directory / "tiny.pt").chmod(0o644)
    yield directory
    shutil.rmtree(directory)


def run_container(engine, image, name, env, *command, volumes=()):
    """``docker run -d --network=host`` with ``env``; returns the container name."""
    args = ["run", "--detach", "--name", name, "--network=host", "--health-interval=2s"]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    for volume in volumes:
        args += ["--volume", volume]
    engine.docker(*args, image, *command)
    return name


def wait_healthy(engine, name, timeout=180):
    """Poll the container's health until ``healthy``; fails with its logs when it exits or stays unhealthy."""
    deadline = time.monotonic() + timeout
    status = "?"
    while time.monotonic() < deadline:
        state = engine.docker("inspect", "--format", "{{.State.Status}} {{.State.Health.Status}}", name).stdout.split()
        status = " ".join(state)
        if state[0] != "running":
            break
        if state[1] == "healthy":
            return
        time.sleep(1)
    logs = engine.docker("logs", name, check=False)
    raise AssertionError(f"container {name} is {status}:\n{logs.stdout[-3000:]}\n{logs.stderr[-3000:]}")


@pytest.mark.slow
def test_image_serves_a_click_behind_its_healthcheck_and_runs_the_worker(engine, image, models_dir):
    config = engine.docker("image", "inspect", "--format", "{{json .Config.Cmd}} {{.Config.User}}", image).stdout
    assert config.split() == ['["litesam-backend","serve"]', "litesam"]
    fake_ls = FakeLabelStudio()
    fake_ls.add("/data/upload/1/cat.png", IMAGE)
    queue = redis.Redis.from_url(TEST_REDIS_URL)
    queue.flushdb()
    port = free_port()
    suffix = uuid.uuid4().hex[:8]
    env = {
        "LITESAM_BIND": f"127.0.0.1:{port}",
        "LITESAM_CHECKPOINT": "/data/models/tiny.pt",
        "LITESAM_VARIANT": "litesam_tiny",
        "LITESAM_TORCH_THREADS": "1",
        "REDIS_URL": TEST_REDIS_URL,
        "LABEL_STUDIO_URL": fake_ls.url,
        "LABEL_STUDIO_API_KEY": LEGACY_TOKEN,
    }
    volumes = [f"{models_dir}:/data/models:ro"]
    containers = []
    try:
        containers.append(run_container(engine, image, f"litesam-serve-{suffix}", env, volumes=volumes))
        wait_healthy(engine, containers[0])
        body = {
            "tasks": [{"id": 1, "data": {"image": "/data/upload/1/cat.png"}}],
            "label_config": CONFIG,
            "params": {"context": {"result": [keypoint(50, 50, 320, 240)]}},
        }
        answer = requests.post(f"http://127.0.0.1:{port}/predict", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        region = answer.json()["results"][0]["result"][0]
        assert region["type"] == "brushlabels" and decode_brush(region).shape == (240, 320)
        assert ("GET", "/data/upload/1/cat.png", f"Token {LEGACY_TOKEN}") in fake_ls.requests

        worker = f"litesam-docker-{suffix}"
        containers.append(run_container(
            engine, image, f"litesam-worker-{suffix}", env, "litesam-backend", "worker", "--name", worker,
            volumes=volumes,
        ))
        # The worker registers with RQ once it has loaded the model, before its loop.
        deadline = time.monotonic() + 120
        while worker not in {w.name for w in Worker.all(connection=queue)} and time.monotonic() < deadline:
            status = engine.docker("inspect", "--format", "{{.State.Status}}", containers[1]).stdout.strip()
            assert status == "running", engine.docker("logs", containers[1], check=False).stderr[-3000:]
            time.sleep(1)
        assert worker in {w.name for w in Worker.all(connection=queue)}, engine.docker("logs", containers[1]).stderr
        logs = engine.docker("logs", containers[0]).stderr
        assert "Traceback" not in logs and LEGACY_TOKEN not in logs
    finally:
        for name in containers:
            engine.docker("rm", "--force", name, check=False)
        fake_ls.close()
        queue.flushdb()
        queue.close()
