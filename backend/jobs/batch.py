"""Label Studio's "Retrieve predictions" (a batch ``/predict``, no context): answered now for a few tasks,
as a pre-annotation job for more."""

from __future__ import annotations

import logging

import redis

from litesam.everything import SegEvery

from ..errors import BadRequestError, JobBusyError, QueueUnavailableError, TaskInputError
from ..labelstudio.label_config import parse_label_config
from ..labelstudio.results import prediction
from ..services import Services
from .board import JobBoard
from .layout import redis_connection
from .options import JobOptions, is_int
from .tasks import output_plan, task_regions

logger = logging.getLogger(__name__)


def handle_batch_predict(
    services: Services,
    project: object,
    tasks: list,
    label_config: object,
    *,
    sync_limit: int | None = None,
    options: JobOptions | None = None,
) -> list[dict]:
    """Answer a batch ``/predict`` (Label Studio's "Retrieve predictions", no context).

    Up to ``sync_limit`` tasks are pre-annotated here and now: one prediction per task, in order (a task where
    SegEvery keeps no mask gets a prediction without regions: it was looked at). Larger batches become a
    pre-annotation job for exactly those task ids, and the answer is ``[]`` — the app then answers
    ``{"results": []}``, for which Label Studio stores nothing; never one empty prediction per task, which
    would mark the tasks as predicted before they were. A running job of the project is reused (one job per
    project at a time). ``options`` (label, SegEvery filters …) apply to both paths.

    Raises:
        BadRequestError: no usable project id or task ids, or (synchronous path) a task's own bad input.
    """
    task_ids = [t.get("id") for t in tasks if isinstance(t, dict)] if isinstance(tasks, list) else []
    if not task_ids or len(task_ids) != len(tasks) or not all(is_int(t) for t in task_ids):
        raise BadRequestError("a batch /predict needs task objects with integer ids")
    settings = services.settings
    options = options or JobOptions.from_json(None, settings.job_defaults)
    if sync_limit is None:
        sync_limit = settings.sync_predict_limit
    if len(tasks) > sync_limit:
        project_id = _project_id(project)
        try:
            status, created = JobBoard(redis_connection(settings)).start(
                project_id,
                task_ids=task_ids,
                options=options,
                source="predict",
            )
        except redis.RedisError as exc:
            raise QueueUnavailableError(
                f"Redis does not answer ({type(exc).__name__}): the {len(tasks)} tasks cannot be queued for "
                "pre-annotation; check REDIS_URL"
            ) from None
        running_tasks = status["tasks"]
        if not created and running_tasks is not None and not set(task_ids) <= set(running_tasks):
            raise JobBusyError(
                f"pre-annotation job {status['id']} of project {project_id} is running on other tasks "
                f"({status['done']}/{status['total']} done); retrieve predictions again when it has finished"
            )
        logger.info(
            "batch /predict of %d task(s) in project %d → job %s (%s)",
            len(tasks),
            project_id,
            status["id"],
            "new" if created else "already running",
        )
        return []
    planned = output_plan(parse_label_config(label_config), options, settings)
    version = services.model.model_version
    model = services.model.model()
    segment = SegEvery(model, options.segevery_config(model))
    ls = services.label_studio if services.label_studio.configured else None
    answers = []
    for task in tasks:
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        try:
            regions = task_regions(
                services,
                segment,
                ls,
                {"id": task["id"], "image": data.get(planned["image_key"])},
                planned,
                options,
            )
        except TaskInputError as exc:
            raise BadRequestError(f"task {task['id']}: {exc.message}") from None
        answers.append(prediction(regions, version))
    return answers


def _project_id(project: object) -> int:
    """The project id from ``/predict``'s ``project`` field, ``"<id>.<created timestamp>"``."""
    text = str(project) if project is not None else ""
    head = text.split(".", 1)[0]
    if not head.isdigit() or int(head) < 1:
        raise BadRequestError(f"the request's 'project' ({project!r}) does not start with a project id")
    return int(head)
