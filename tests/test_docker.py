"""The Docker files, checked without a Docker engine: ``docker compose config`` validates the compose file, the
image's entry commands run here as plain processes (``litesam-backend serve`` behind the image's own
HEALTHCHECK command, with basic auth on), and the commands named in compose exist. The image itself is built
and run in tests/test_docker_image.py.
"""

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import yaml

from tests.backend_support import TEST_REDIS_URL, make_tiny_checkpoint, serve_backend
from tests.e2e.processes import base_env

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker" / "docker-compose.yml").read_text())
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()


def healthcheck_code() -> str:
    """The Python program of the Dockerfile's HEALTHCHECK (continuation lines joined, as Docker does)."""
    start = DOCKERFILE.index("HEALTHCHECK")
    command = DOCKERFILE[start : DOCKERFILE.index("\n\n", start)].replace("\\\n", "")
    return command[command.index('python -c "') + len('python -c "') : command.rindex('"')]


def test_compose_runs_label_studio_redis_backend_and_worker():
    services = COMPOSE["services"]
    assert set(services) == {"label-studio", "redis", "redis-cache", "backend", "worker"}
    assert "noeviction" in services["redis"]["command"]  # the job queue is never evicted
    assert "allkeys-lru" in services["redis-cache"]["command"]  # embeddings are
    named = {source.split(":")[0] for s in services.values() for source in s.get("volumes", [])}
    assert {n for n in named if not n.startswith(("$", "."))} <= set(COMPOSE["volumes"])
    assert services["label-studio"]["image"].endswith(":1.23.2")
    assert services["label-studio"]["environment"]["USE_DEFAULT_BANNED_SUBNETS"] == "false"
    assert services["backend"]["command"] == ["litesam-backend", "serve"]
    assert services["worker"]["command"] == ["litesam-backend", "worker"]
    for name in ("backend", "worker"):
        env = services[name]["environment"]
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["LITESAM_CACHE_REDIS_URL"] == "redis://redis-cache:6379/0"
        assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080"


def test_the_entry_commands_exist_and_answer_help():
    scripts = {ep.name for ep in entry_points(group="console_scripts")}
    assert {"litesam", "litesam-backend"} <= scripts
    for command in ("serve", "worker"):
        completed = subprocess.run(
            [sys.executable, "-m", "backend.cli", command, "--help"], capture_output=True, text=True, timeout=120
        )
        assert completed.returncode == 0, completed.stderr
        assert command in completed.stdout


def test_dockerignore_lets_in_only_what_the_image_copies():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    copied = {source for line in DOCKERFILE.splitlines() if line.startswith("COPY ") for source in line.split()[1:-1]}
    assert copied == {
        "requirements.txt", "requirements-no-deps.txt", "requirements-openvino.txt",
        "pyproject.toml", "README.md", "litesam", "backend",
    }
    allowed = lines[lines.index("*") + 1 :][: len(copied)]
    assert {line.removeprefix("!").removesuffix("/") for line in allowed} == copied


def test_healthcheck_passes_against_a_served_backend_with_basic_auth(tmp_path):
    env = base_env(
        tmp_path / "home",
        LITESAM_CHECKPOINT=make_tiny_checkpoint(tmp_path / "tiny.pt"),
        LITESAM_VARIANT="litesam_tiny",
        REDIS_URL=TEST_REDIS_URL,
        BASIC_AUTH_USER="labeler",
        BASIC_AUTH_PASS="s3cret-pass",
    )
    # workers/threads None: the image's command gives neither, so the settings' defaults apply.
    with serve_backend(tmp_path, env, workers=None, threads=None, ready_status=401) as (url, _):
        # The image's healthcheck asks the port of LITESAM_BIND, as the image's command binds it.
        env["LITESAM_BIND"] = "0.0.0.0:" + url.rpartition(":")[2]
        code = healthcheck_code()
        healthy = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30)
        assert healthy.returncode == 0, healthy.stderr
        without_credentials = {k: v for k, v in env.items() if not k.startswith("BASIC_AUTH")}
        refused = subprocess.run([sys.executable, "-c", code], env=without_credentials, capture_output=True, timeout=30)
        assert refused.returncode != 0 and b"401" in refused.stderr


def compose_config(**env: str) -> subprocess.CompletedProcess:
    """``docker compose config --format json`` on docker/docker-compose.yml with exactly ``env`` (and PATH)."""
    return subprocess.run(
        ["docker", "compose", "--file", str(REPO / "docker" / "docker-compose.yml"), "config", "--format", "json"],
        env={"PATH": os.environ.get("PATH", os.defpath), "HOME": os.environ.get("HOME", "/root"), **env},
        capture_output=True, text=True, timeout=60,
    )


def test_docker_compose_config_validates_the_compose_file():
    """Compose v2 itself (the ``docker compose`` plugin; scripts/system-deps.sh installs it) accepts the file,
    resolves the image's build to this repository's Dockerfile, and refuses to start without the API key."""
    completed = compose_config(LABEL_STUDIO_API_KEY="pat-for-the-test", LITESAM_WORKERS="3")
    assert completed.returncode == 0, completed.stderr
    config = json.loads(completed.stdout)
    assert config["name"] == "litesam"
    for name in ("backend", "worker"):
        service = config["services"][name]
        assert Path(service["build"]["context"]) == REPO
        assert (REPO / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == REPO / "docker" / "Dockerfile"
        assert service["image"] == "litesam-backend:latest"
        assert service["environment"]["LABEL_STUDIO_API_KEY"] == "pat-for-the-test"
        assert service["environment"]["LITESAM_WORKERS"] == "3"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    ports = config["services"]["backend"]["ports"]
    assert [(p["host_ip"], p["published"], p["target"]) for p in ports] == [("127.0.0.1", "9090", 9090)]
    refused = compose_config()
    assert refused.returncode != 0 and "set LABEL_STUDIO_API_KEY" in refused.stderr
