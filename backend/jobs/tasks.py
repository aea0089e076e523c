"""The RQ job functions of pre-annotation: the parent :func:`plan_project` and the chunks :func:`run_chunk`.

::

    JobBoard.start(project) ─▶ plan_project(job_id)            parent, any worker
                                 lists the tasks (label-studio-sdk, resolve_uri=False), skips tasks holding a
                                 prediction of our model version (with ``overwrite``: notes their ids, which
                                 the writer deletes once the task's new prediction is written), enqueues the
                                 chunks in the same Redis transaction that records the plan
                            ─▶ run_chunk(job_id, index, tasks)   any worker, in parallel
                                 image → embedding (get or compute, stored for later clicks) → SegEvery →
                                 the regions of each mask (brush, or polygons: the plan's output tag) →
                                 PredictionWriter (batched writes)

Job functions take JSON arguments only (ids and task URIs; the queue uses RQ's JSON serializer) and find the
process's services (model, embeddings, Label Studio client) through :func:`use_services`, set once by the
worker. A running job checks the record's state before each task and each write, and stops once cancelled.
"""

from __future__ import annotations

import logging
import time

from rq import get_current_job

from litesam.everything import SegEvery

from ..errors import (
    BadRequestError,
    ConfigurationError,
    LabelStudioUnavailable,
    TaskInputError,
    UpstreamError,
)
from ..labelstudio.client import LabelStudioClient
from ..labelstudio.label_config import LabelConfig, OutputTag, parse_label_config
from ..labelstudio.polygons import DEFAULT_TOLERANCE_PX
from ..labelstudio.results import mask_regions, prediction
from ..services import Services, build_services
from ..settings import Settings
from .board import JobBoard
from .failures import classify_task_error
from .options import JobOptions
from .prompted import prompted_regions, task_prompts, written_version
from .writer import PredictionWriter

logger = logging.getLogger(__name__)

_services: Services | None = None


def use_services(services: Services) -> None:
    """Give job functions this process's services (the worker calls it once at start)."""
    global _services
    _services = services


def current_services() -> Services:
    """The services set by :func:`use_services`, else built once from the environment (a plain ``rq worker``)."""
    global _services
    if _services is None:
        logger.info("job functions build their services from the environment (no worker preloaded them)")
        _services = build_services(Settings.from_env())
    return _services


def plan_project(job_id: str) -> dict:
    """Parent job: list the project's tasks, decide what to do, enqueue the chunks (idempotent on retry)."""
    board = JobBoard(get_current_job().connection)
    record = board.job_record(job_id)
    if record.state not in ("queued", "listing"):
        return {"job": job_id, "planned": False, "state": record.state}
    project, options = record.project, record.options
    if not board.begin_listing(job_id):  # cancelled since it was read
        return {"job": job_id, "planned": False, "state": board.job_record(job_id).state}

    services = current_services()
    version = written_version(services.model.model_version, record.mode)
    ls = services.label_studio
    try:
        output = output_plan(parse_label_config(ls.label_config(project)), options, services.settings)
    except LabelStudioUnavailable:
        raise  # transient: RQ retries the parent with backoff
    except (BadRequestError, UpstreamError) as exc:  # a missing project or an unusable config: no retry helps
        board.fail_job(job_id, project, f"project {project}: {exc.message}", end_now=True)
        return {"job": job_id, "planned": False, "error": exc.message}

    tasks = ls.tasks(project, record.task_ids)
    missing = sorted(set(record.task_ids or ()) - {t[0] for t in tasks})
    ours = [t for t in tasks if version in t[2]]
    replaces: dict[int, list[int]] = {}  # task → ids of our earlier predictions that its new one replaces
    if record.overwrite:
        # Deleted by the writer once the task's new prediction is written: a task that fails keeps its old.
        for task_id, _, _ in ours:
            if board.is_cancelled(job_id):
                logger.info("job %s: cancelled while listing earlier predictions", job_id)
                return {"job": job_id, "planned": False, "state": "cancelled"}
            replaces[task_id] = [prediction_id for prediction_id, _ in ls.our_predictions(task_id, version)]
        count = sum(map(len, replaces.values()))
        logger.info("job %s: overwrite: %d earlier prediction(s) of %s to replace", job_id, count, version)
        todo, skipped = tasks, 0
    else:
        todo, skipped = [t for t in tasks if version not in t[2]], len(ours)
    payload = [{"id": task_id, "image": data.get(output["image_key"])} for task_id, data, _ in todo]
    for item in payload:
        if replaces.get(item["id"]):
            item["replaces"] = replaces[item["id"]]
    no_prompts = 0
    if record.mode != "segevery":
        sources = ls.region_sources(project, [t[0] for t in todo], options.prompt_source) if todo else {}
        for item in payload:
            item["prompts"] = task_prompts(sources.get(item["id"], []), record.mode, output["to_name"])
        no_prompts = sum(1 for item in payload if not item["prompts"])
        payload = [item for item in payload if item["prompts"]]
    chunks = [payload[i : i + options.chunk_size] for i in range(0, len(payload), options.chunk_size)]
    plan = {
        "project": project,
        "total": len(tasks) + len(missing),
        "skipped": skipped + no_prompts,
        "no_prompts": no_prompts,
        "model_version": version,
        **output,
    }
    reasons = {task_id: f"task {task_id} is not in project {project}" for task_id in missing}
    if board.commit_plan(job_id, plan, chunks, reasons, options):
        logger.info(
            "job %s: project %d (%s): %d task(s), %d skipped, %d without prompts, %d chunk(s) of ≤%d",
            job_id,
            project,
            record.mode,
            len(tasks),
            skipped,
            no_prompts,
            len(chunks),
            options.chunk_size,
        )
    return {
        "job": job_id,
        "planned": True,
        "tasks": len(tasks),
        "skipped": skipped + no_prompts,
        "chunks": len(chunks),
    }


def output_plan(config: LabelConfig, options: JobOptions, settings: Settings) -> dict:
    """Where a job's masks go: ``from_name``, ``to_name`` and ``output`` ("brush" or "polygon") of the output
    tag (:meth:`LabelConfig.output_for` with the job's ``output``, else ``LITESAM_OUTPUT``), its ``image_key``,
    the ``label`` of SegEvery's masks and the polygons' ``tolerance`` in pixels.

    Raises:
        BadRequestError: no such output tag, or the label is not one of its labels.
    """
    tag = config.output_for(None, options.output or settings.output)
    tolerance = options.polygon_tolerance
    return {
        "from_name": tag.from_name,
        "to_name": tag.to_name,
        "output": tag.kind,
        "image_key": config.image(tag.to_name).value_key,
        "label": tag.label_or_first(options.label),
        "labels": list(tag.labels),
        "tolerance": settings.polygon_tolerance if tolerance is None else tolerance,
    }


def planned_output(planned: dict) -> OutputTag:
    """The output tag a plan (:func:`output_plan`) names (its labels were checked when it was planned)."""
    return OutputTag(planned["from_name"], planned["to_name"], (), planned.get("output") or "brush")


def run_chunk(job_id: str, index: int, tasks: list[dict]) -> dict:
    """Chunk job: pre-annotate ``tasks`` (``[{"id", "image"}]``, with ``"replaces"``: ids of our earlier
    predictions of the task, deleted once its new one is written) and write their predictions."""
    rq_job = get_current_job()
    board = JobBoard(rq_job.connection)
    record = board.job_record(job_id)
    planned = record.fields
    services = current_services()
    version = written_version(services.model.model_version, record.mode)
    if version != planned["model_version"]:
        raise ConfigurationError(
            f"this worker serves model version {version}, but the job was planned for "
            f"{planned['model_version']}; run every worker with the same LITESAM_VARIANT and checkpoint"
        )
    options = record.options
    segment = None
    if record.mode == "segevery":
        model = services.model.model()
        segment = SegEvery(model, options.segevery_config(model))
        side = segment.config.points_per_side
        prompts = f"a {side}×{side} point grid" if segment.config.prompt_mode == "grid" else "AutoPPN proposals"
        logger.info(
            "job %s: chunk %d: %d task(s), SegEvery prompted by %s", job_id, index + 1, len(tasks), prompts
        )
    worker = rq_job.worker_name or ""
    writer = PredictionWriter(
        board, services.label_studio, job_id, record.project, version, options.write_batch, worker
    )
    meta = rq_job.meta
    for task in tasks:
        task_id = int(task["id"])
        if board.is_cancelled(job_id):
            logger.info("job %s: cancelled; chunk %d stops before task %d", job_id, index + 1, task_id)
            meta["cancelled"] = True
            break
        if board.outcome(job_id, task_id) is not None:
            continue  # settled by an earlier attempt of this chunk
        meta["current_task"] = task_id
        rq_job.save_meta()
        board.count_attempt(job_id, task_id)
        started = time.perf_counter()
        rejected: list[dict] = []
        try:
            if segment is None:
                regions, rejected = prompted_regions(
                    services, services.label_studio, task, planned, planned_output(planned)
                )
            else:
                regions = task_regions(services, segment, services.label_studio, task, planned, options)
        except TaskInputError as exc:
            board.record_outcome(job_id, record.project, task_id, "failed", reason=exc.message, worker=worker)
            logger.warning("job %s: task %d failed: %s", job_id, task_id, exc.message)
            continue
        logger.info(
            "job %s: task %d: %d region(s) in %.2f s",
            job_id,
            task_id,
            len(regions),
            time.perf_counter() - started,
        )
        writer.add(task_id, prediction(regions, version), rejected, task.get("replaces", ()))
    writer.flush()
    meta["current_task"] = None
    rq_job.save_meta()
    return {"job": job_id, "chunk": index, "tasks": len(tasks)}


def task_regions(
    services: Services,
    segment: SegEvery,
    ls: LabelStudioClient | None,
    task: dict,
    planned: dict,
    options: JobOptions,
) -> list[dict]:
    """The regions of one task (``{"id", "image"}``) for ``planned``'s output tag (:func:`output_plan`).

    A multi-image task (``<Image valueList=…>``: a list of URLs) gets the regions of every image, each with
    its ``item_index``; ``max_masks`` applies per image (SegEvery ranks masks best first).

    Raises:
        TaskInputError: this task's own input is bad (:func:`backend.jobs.failures.classify_task_error`).
        LabelStudioUnavailable: a download failed while Label Studio (``ls``) does not answer.
    """
    value = task.get("image")
    multi = isinstance(value, list)
    uris = value if multi else [value]
    if not uris or not all(isinstance(u, str) and u.strip() for u in uris):
        kind = "an empty or malformed list of images" if multi else "missing or not a URL"
        raise TaskInputError(f"the task's data field {planned['image_key']!r} is {kind}")
    regions = []
    tag = planned_output(planned)
    tolerance = float(planned.get("tolerance", DEFAULT_TOLERANCE_PX))
    for index, uri in enumerate(uris):
        try:
            embedding, _ = services.embeddings.embedding_for(uri, int(task["id"]))
        except Exception as exc:
            where = f"image {index + 1} of {len(uris)}: " if multi else ""
            classified = classify_task_error(exc, where, ls)
            if classified is exc:
                raise
            raise classified from None
        with services.model.inference():
            records = segment.generate_from_embedding(embedding)[: options.max_masks]
        regions += [
            region
            for r in records
            for region in mask_regions(
                r["segmentation"],
                tag,
                label=planned["label"],
                score=r["predicted_iou"],
                tolerance=tolerance,
                item_index=index if multi else None,
            )
        ]
    return regions
