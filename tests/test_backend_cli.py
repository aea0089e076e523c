"""``litesam-backend``: subcommand parsing, defaults from the environment, the gunicorn command ``serve`` runs."""

import sys
from pathlib import Path

import pytest

import backend.cli as cli
from tests.backend_support import make_tiny_checkpoint


@pytest.fixture
def env(monkeypatch):
    for name in (
        "LITESAM_CHECKPOINT",
        "LITESAM_CHECKPOINT_SHA256",
        "LITESAM_BIND",
        "LITESAM_WORKERS",
        "LITESAM_THREADS",
        "LITESAM_VARIANT",
        "LOG_LEVEL",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_help_lists_serve(env, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0 and "serve" in capsys.readouterr().out


def test_serve_execs_gunicorn_with_env_defaults_and_flags(env, tmp_path):
    checkpoint = make_tiny_checkpoint(tmp_path / "tiny.pt")
    env.setenv("LITESAM_CHECKPOINT", checkpoint)
    env.setenv("LITESAM_VARIANT", "litesam_tiny")
    env.setenv("LITESAM_WORKERS", "3")
    env.setenv("LITESAM_BIND", "127.0.0.1:9191")
    calls = []
    env.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    env.setattr(cli.os, "execve", lambda path, argv, environ: calls.append((path, argv, environ)))
    assert cli.main(["serve", "--threads", "5", "--pid", str(tmp_path / "g.pid")]) == 0
    ((path, argv, environ),) = calls
    metrics_dir = Path(environ["PROMETHEUS_MULTIPROC_DIR"])  # a fresh one, removed by gunicorn's on_exit hook
    assert metrics_dir.is_dir() and not any(metrics_dir.iterdir())
    metrics_dir.rmdir()
    assert path == sys.executable and argv[1:3] == ["-m", "gunicorn"]
    joined = " ".join(argv)
    for part in (
        "--bind 127.0.0.1:9191",
        "--workers 3",
        "--threads 5",
        "--config python:backend.gunicorn_config",
        f"--pid {tmp_path / 'g.pid'}",
        "--log-level info",
    ):
        assert part in joined
    assert argv[-1] == "backend._wsgi:app"


def test_serve_refuses_to_start_without_a_checkpoint(env, capsys):
    env.setattr(cli.os, "execve", lambda *a: pytest.fail("must not start gunicorn"))
    assert cli.main(["serve"]) == 2
    assert "LITESAM_CHECKPOINT is not set" in capsys.readouterr().err


def test_bad_environment_is_reported_with_the_variable_name(env, capsys):
    env.setenv("LITESAM_WORKERS", "many")
    assert cli.main(["serve"]) == 2
    assert "LITESAM_WORKERS must be an integer" in capsys.readouterr().err


def test_a_subcommand_is_required(env):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
