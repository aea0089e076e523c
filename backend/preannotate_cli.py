"""``litesam-backend worker`` and ``litesam-backend preannotate``: the commands of pre-annotation jobs.

    litesam-backend worker [--queue NAME …] [--burst] [--max-jobs N] [--maintenance-interval S]
    litesam-backend preannotate --project N [--mode segevery|boxes|points] [--overwrite] [--tasks 1,2,3]
                                [--label L] [--output brush|polygon] [--prompt-source VERSION] [--wait] …
    litesam-backend preannotate --cancel JOB_ID

``preannotate`` queues the same job as ``POST /jobs`` (straight into Redis, so the backend's web process need
not run) and, with ``--wait``, follows it with a progress bar. Exit codes with ``--wait``: 0 every task
pre-annotated or skipped, 3 finished with failed tasks (their reasons are printed), 1 the job failed or was
cancelled, 2 bad arguments or configuration. Without ``--wait``: 0 once the job is queued (or found running).

``--cancel JOB_ID`` cancels a job (as ``DELETE /jobs/<id>``): 0 the job is cancelled (now, or it was before),
1 it had already finished or failed (left as it was), 2 no such job or Redis does not answer.

Both follow :mod:`backend.cli`'s convention: ``add_<name>_command(subparsers, settings)`` adds the parser and
sets ``func(args, settings) -> exit code``.
"""

from __future__ import annotations

import argparse
import sys
import time

import redis
from tqdm import tqdm

from . import worker
from .errors import BadRequestError, JobNotFoundError
from .jobs.board import JobBoard
from .jobs.layout import redis_connection
from .jobs.options import MODES, JobOptions
from .labelstudio.label_config import OUTPUTS
from .jobs.record import TERMINAL_STATES
from .settings import Settings

#: Seconds between two looks at the job with ``--wait``.
POLL_S = 1.0
#: With ``--wait``, say that no worker took the job when it is still queued after this many seconds.
NO_WORKER_HINT_S = 15.0
#: Per-task failures printed at the end of ``--wait``.
FAILURES_PRINTED = 20


def add_worker_command(subparsers: argparse._SubParsersAction, settings: Settings) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a pre-annotation worker (RQ) that loads the model once",
        description="Run an RQ worker for pre-annotation jobs. It loads the model before its loop, runs jobs "
        "in its own process, and re-queues jobs of workers that died. Run several (on several machines) "
        "to go faster; they share Redis (REDIS_URL).",
    )
    worker.add_arguments(parser)
    parser.set_defaults(func=worker.run)


def add_preannotate_command(subparsers: argparse._SubParsersAction, settings: Settings) -> None:
    defaults = JobOptions()
    parser = subparsers.add_parser(
        "preannotate",
        help="pre-annotate a whole Label Studio project (a background job)",
        description="Queue a job that segments everything in every image of a project and writes the masks "
        "to Label Studio as predictions of this model version. Tasks that already hold one are skipped "
        "(--overwrite replaces them). Workers (litesam-backend worker) do the work.",
    )
    parser.add_argument("--project", type=int, default=None, help="Label Studio project id")
    parser.add_argument(
        "--cancel",
        default=None,
        metavar="JOB_ID",
        help="cancel this job instead of starting one (its project is free for a new job at once)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete this model version's predictions of the tasks first (others are kept)",
    )
    parser.add_argument(
        "--tasks",
        type=_task_list,
        default=None,
        metavar="ID,ID,…",
        help="only these task ids (default: every task of the project)",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="segevery",
        help="segevery: segment everything; boxes: a mask per rectangle of the annotations; points: a mask "
        "per label group of keypoints (default segevery)",
    )
    parser.add_argument(
        "--label",
        default=None,
        help="label of SegEvery's masks (default: the first label of the output tag)",
    )
    parser.add_argument(
        "--output", choices=OUTPUTS, default=None, help="brush or polygon regions (default LITESAM_OUTPUT)"
    )
    parser.add_argument("--polygon-tolerance", type=float, default=None, help="polygon tolerance in pixels")
    parser.add_argument(
        "--prompt-source",
        default=None,
        metavar="MODEL_VERSION",
        help="boxes/points: take the regions of this model version's predictions instead of the annotations",
    )
    parser.add_argument(
        "--wait", action="store_true", help="follow the job with a progress bar until it ends"
    )
    parser.add_argument(
        "--chunk-size", type=int, default=None, help=f"tasks per chunk job ({defaults.chunk_size})"
    )
    parser.add_argument(
        "--max-masks", type=int, default=None, help=f"masks per task at most ({defaults.max_masks})"
    )
    parser.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=None,
        help="SegEvery: keep masks with predicted IoU ≥ this (default: the checkpoint's calibrated value, else SAM's 0.88)",
    )
    parser.add_argument(
        "--stability-score-thresh",
        type=float,
        default=None,
        help="SegEvery: keep masks with stability ≥ this (default: the checkpoint's calibrated value, else SAM's 0.95)",
    )
    parser.add_argument(
        "--box-nms-thresh",
        type=float,
        default=None,
        help=f"SegEvery: box NMS IoU ({defaults.box_nms_thresh})",
    )
    parser.add_argument(
        "--points-per-side",
        type=int,
        default=None,
        help=f"SegEvery: n of the n×n point grid of engines without AutoPPN ({defaults.points_per_side})",
    )
    parser.add_argument(
        "--proposal-score-thresh",
        type=float,
        default=None,
        help="AutoPPN: minimum proposal confidence (default: the checkpoint's calibrated one, else the variant's)",
    )
    parser.add_argument("--queue", default=None, help=f"RQ queue ({defaults.queue})")
    parser.set_defaults(func=run_preannotate)


def _task_list(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected task ids separated by commas, got {text!r}") from None
    if not ids or min(ids) < 1:
        raise argparse.ArgumentTypeError("task ids must be positive integers")
    return ids


def run_preannotate(args: argparse.Namespace, settings: Settings) -> int:
    if (args.project is None) == (args.cancel is None):
        print("litesam-backend preannotate: give either --project N or --cancel JOB_ID", file=sys.stderr)
        return 2
    if args.cancel is not None:
        return _cancel(redis_connection(settings), args.cancel)
    names = (
        "label",
        "output",
        "polygon_tolerance",
        "prompt_source",
        "chunk_size",
        "max_masks",
        "pred_iou_thresh",
        "stability_score_thresh",
        "box_nms_thresh",
        "points_per_side",
        "proposal_score_thresh",
        "queue",
    )
    try:
        chosen = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
        options = JobOptions.from_json(chosen, settings.job_defaults)
    except BadRequestError as exc:
        print(f"litesam-backend preannotate: {exc.message}", file=sys.stderr)
        return 2
    connection = redis_connection(settings)
    try:
        status, created = JobBoard(connection).start(
            args.project,
            overwrite=args.overwrite,
            task_ids=args.tasks,
            options=options,
            source="cli",
            mode=args.mode,
        )
    except redis.RedisError as exc:
        return _redis_down(exc)
    if created:
        print(f"job {status['id']}: pre-annotating project {args.project} ({args.mode})", file=sys.stderr)
    else:
        what = "following it" if args.wait else "not starting another"
        print(
            f"project {args.project} already has a running job {status['id']} ({status['state']}); {what}",
            file=sys.stderr,
        )
    print(status["id"])
    if not args.wait:
        return 0
    return _follow(connection, status["id"])


def _redis_down(exc: redis.RedisError) -> int:
    """Say that Redis does not answer; returns exit code 2."""
    print(
        f"litesam-backend preannotate: Redis does not answer ({type(exc).__name__}); check REDIS_URL",
        file=sys.stderr,
    )
    return 2


def _cancel(connection: redis.Redis, job_id: str) -> int:
    """Cancel ``job_id``; return the exit code of the module docstring."""
    try:
        status, cancelled = JobBoard(connection).cancel(job_id, "cancelled from the command line")
    except JobNotFoundError as exc:
        print(f"litesam-backend preannotate: {exc.message}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        return _redis_down(exc)
    if cancelled:
        print(f"job {job_id}: cancelled; project {status['project']} is free for a new job", file=sys.stderr)
    else:
        print(f"job {job_id} had already ended ({status['state']}); nothing changed", file=sys.stderr)
    print(status["state"])
    return 0 if status["state"] == "cancelled" else 1


def _follow(connection: redis.Redis, job_id: str) -> int:
    """Show the job's progress until it ends; return the exit code of the module docstring."""
    started = time.monotonic()
    hinted = False
    board = JobBoard(connection)
    with tqdm(total=None, unit="task", desc="pre-annotating", dynamic_ncols=True, file=sys.stderr) as bar:
        while True:
            status = board.status(job_id)
            if status["total"] is not None and bar.total != status["total"]:
                bar.reset(total=status["total"])
            bar.n = status["done"] + status["skipped"] + status["failed"]
            bar.set_postfix_str(f"{status['state']}, {status['failed']} failed", refresh=False)
            bar.refresh()
            if status["state"] in TERMINAL_STATES:
                break
            if status["state"] == "queued" and not hinted and time.monotonic() - started > NO_WORKER_HINT_S:
                bar.write("no worker has taken the job yet; start one with `litesam-backend worker`")
                hinted = True
            time.sleep(POLL_S)
    print(
        f"{status['state']}: {status['done']} pre-annotated, {status['skipped']} skipped, {status['failed']} "
        f"failed of {status['total']} task(s); {status['regions']} regions, {_labelled(status)}, written as "
        f"model version {status['model_version']}",
        file=sys.stderr,
    )
    for item in status["rejected"][:FAILURES_PRINTED]:
        print(f"  task {item['task']}: rejected {', '.join(item['regions'])}: {item['reason']}", file=sys.stderr)
    for failure in status["failures"][:FAILURES_PRINTED]:
        print(f"  task {failure['task']}: {failure['reason']}", file=sys.stderr)
    if status["state"] == "cancelled":
        print(f"cancelled: {status['cancel_reason']}", file=sys.stderr)
        return 1
    if status["error"]:
        print(f"error: {status['error']}", file=sys.stderr)
        return 1
    return 3 if status["failed"] else 0


def _labelled(status: dict) -> str:
    """How the job's regions are labelled, for the summary line."""
    if status["mode"] == "segevery":
        return f"label {status['label']}"
    return f"each labelled as its {'rectangle' if status['mode'] == 'boxes' else 'keypoints'}"
