"""``litesam-backend``: the backend's command line.

    litesam-backend serve [--bind HOST:PORT] [--workers N] [--threads N] [--timeout S] [--pid FILE]
    litesam-backend worker …          (RQ worker for pre-annotation jobs, backend.preannotate_cli)
    litesam-backend preannotate …     (start a pre-annotation job, backend.preannotate_cli)
    litesam-backend distill --project N …  (litesam distill on a project's task images, backend.distill_cli)

Defaults come from the environment (:mod:`backend.settings`). A subcommand is a function
``add_<name>_command(subparsers, settings)`` that adds its parser and sets ``func`` (called with the parsed
arguments and the settings, returning the exit code); list it in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence

from .distill_cli import add_distill_command
from .errors import BackendError
from .preannotate_cli import add_preannotate_command, add_worker_command
from .settings import Settings

#: Seconds gunicorn lets one request run (Label Studio gives /predict 100 s).
REQUEST_TIMEOUT_S = 120


def add_serve_command(subparsers: argparse._SubParsersAction, settings: Settings) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the ML backend API with gunicorn",
        description="Serve the Label Studio ML backend (gunicorn, gthread workers with a health lane: "
        "backend/gunicorn_config.py). The checkpoint is resolved (downloaded once if it is a URL) and hashed "
        "before the workers start.",
    )
    parser.add_argument(
        "--bind", default=settings.bind, help=f"HOST:PORT (LITESAM_BIND, default {settings.bind})"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=settings.workers,
        help=f"worker processes (LITESAM_WORKERS, default {settings.workers})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=settings.threads,
        help=f"threads per worker (LITESAM_THREADS, default {settings.threads})",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=REQUEST_TIMEOUT_S,
        help=f"seconds before a stuck worker is restarted (default {REQUEST_TIMEOUT_S})",
    )
    parser.add_argument("--pid", default=None, help="write gunicorn's master PID to this file")
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from .gunicorn_config import OWNED_METRICS_DIR_ENV
    from .model_service import ModelService

    if args.workers < 1 or args.threads < 1:
        print("litesam-backend serve: --workers and --threads must be at least 1", file=sys.stderr)
        return 2
    model = ModelService(settings)
    model.checkpoint()  # download/verify once here, not in every worker's first request
    print(f"litesam-backend: model version {model.model_version}, serving on {args.bind}", file=sys.stderr)
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        args.bind,
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "--config",
        "python:backend.gunicorn_config",
        "--timeout",
        str(args.timeout),
        "--graceful-timeout",
        "30",
        "--log-level",
        settings.log_level.lower(),
    ]
    if args.pid:
        command += ["--pid", args.pid]
    environ = dict(os.environ)
    if not environ.get("PROMETHEUS_MULTIPROC_DIR"):  # every worker's metrics in one scrape (backend.metrics)
        directory = tempfile.mkdtemp(prefix="litesam-metrics-")
        environ["PROMETHEUS_MULTIPROC_DIR"] = environ[OWNED_METRICS_DIR_ENV] = directory
    command.append("backend._wsgi:app")
    os.execve(sys.executable, command, environ)
    return 0  # not reached: execve replaces this process


#: Every subcommand's registration function, in help order.
COMMANDS: list[Callable[[argparse._SubParsersAction, Settings], None]] = [
    add_serve_command,
    add_worker_command,
    add_preannotate_command,
    add_distill_command,
]


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litesam-backend",
        description="Lite-SAM Label Studio ML backend. Configuration: environment variables "
        "(see backend/settings.py or the README).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers, settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = Settings.from_env()
        args = build_parser(settings).parse_args(argv)
        return args.func(args, settings)
    except BackendError as exc:
        print(f"litesam-backend: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
