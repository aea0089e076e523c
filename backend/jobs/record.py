"""A pre-annotation job's record read from Redis: its states, the parsed :class:`JobRecord`, its progress and
the status view that ``GET /jobs/<id>``, the jobs page and ``preannotate --wait`` all show."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .options import JobOptions

#: Job states. ``queued`` → ``listing`` (parent running) → ``running`` (chunks) → ``finished`` | ``failed``;
#: any state before the end → ``cancelled`` (:meth:`backend.jobs.board.JobBoard.cancel`).
STATES = ("queued", "listing", "running", "finished", "failed", "cancelled")
TERMINAL_STATES = ("finished", "failed", "cancelled")


@dataclass(frozen=True)
class JobRecord:
    """The fields of a job record that job functions and failure handling use, parsed once.

    Attributes:
        fields: the raw record hash (strings).
        id, project, state: the job id, its Label Studio project id, its state (:data:`STATES`).
        options: the job's options.
        overwrite: replace this model version's predictions instead of skipping their tasks.
        task_ids: the task ids asked for, or None for the whole project.
        chunks: the task ids of each chunk, once the plan is committed.
        mode: "segevery", "boxes" or "points" (:data:`backend.jobs.options.MODES`).
    """

    fields: dict[str, str]
    id: str
    project: int
    state: str
    options: JobOptions
    overwrite: bool
    task_ids: list[int] | None
    chunks: list[list[int]]
    mode: str

    @classmethod
    def parse(cls, fields: dict[str, str]) -> JobRecord:
        return cls(
            fields=fields,
            id=fields["id"],
            project=int(fields["project"]),
            state=fields["state"],
            options=JobOptions.from_record(fields["options"]),
            overwrite=fields.get("overwrite") == "1",
            task_ids=json.loads(fields["task_ids"]) if fields.get("task_ids") else None,
            chunks=json.loads(fields.get("chunks") or "[]"),
            mode=fields.get("mode") or "segevery",
        )

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STATES


def field_value(value: object) -> str | int | float:
    """A Python value as a record hash field (bool → 0/1, None → "", lists and dicts → JSON)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    if value is None:
        return ""
    return json.dumps(value)


def progress(fields: dict[str, str]) -> dict:
    """``total`` (None until the tasks are listed), ``done``, ``failed``, ``skipped``, ``pending``,
    ``percent`` (of the settled tasks, one decimal) and ``regions`` of a record hash."""
    total = int(fields["total"]) if fields.get("total") not in (None, "") else None
    done, failed, skipped = (int(fields.get(k) or 0) for k in ("done", "failed", "skipped"))
    settled = done + failed + skipped
    return {
        "total": total,
        "done": done,
        "failed": failed,
        "skipped": skipped,
        "pending": None if total is None else max(total - settled, 0),
        "percent": (100.0 if total == 0 else round(100.0 * settled / total, 1)) if total is not None else 0.0,
        "regions": int(fields.get("regions") or 0),
    }


def status_view(fields: dict[str, str], failures: list[dict], rejected: list[dict] = ()) -> dict:
    """One job's state and progress: ``id, project, state, mode, overwrite, source, tasks, total, done, failed,
    skipped, no_prompts (of the skipped: tasks without rectangles / keypoints), pending, percent, regions,
    model_version (the one written), label, output (brush or polygon), output_tag, prompt_source,
    created_at, started_at, finished_at, error, cancel_reason, retries, last_error, failures`` (``[{"task",
    "reason"}]``) and ``rejected`` (``[{"task", "regions", "reason"}]``: prompts of done tasks that gave no
    mask)."""
    options = json.loads(fields.get("options") or "{}")
    task_ids = json.loads(fields["task_ids"]) if fields.get("task_ids") else None
    view = {
        "id": fields["id"],
        "project": int(fields["project"]),
        "state": fields["state"],
        "mode": fields.get("mode") or "segevery",
        "overwrite": fields.get("overwrite") == "1",
        "source": fields.get("source", ""),
        "tasks": task_ids,
        **progress(fields),
        "model_version": fields.get("model_version") or None,
        "label": fields.get("label") or None,
        "output": fields.get("output") or None,
        "output_tag": fields.get("from_name") or None,
        "prompt_source": options.get("prompt_source"),
        "no_prompts": int(fields.get("no_prompts") or 0),
        "created_at": fields.get("created_at") or None,
        "started_at": fields.get("started_at") or None,
        "finished_at": fields.get("finished_at") or None,
        "error": fields.get("error") or None,
        "cancel_reason": fields.get("cancel_reason") or None,
        "retries": int(fields.get("retries") or 0),
        "last_error": None,
        "failures": failures,
        "rejected": list(rejected),
    }
    if fields["state"] not in TERMINAL_STATES and fields.get("last_error"):
        view["last_error"] = fields["last_error"]
    return view
