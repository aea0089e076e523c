"""HTTP routes of pre-annotation jobs, a Flask blueprint: ``create_app(settings, blueprints=[jobs_blueprint])``.

=========================  ==========================================================================
route                      behaviour
=========================  ==========================================================================
POST /jobs                 body ``{"project": N, "mode": "segevery" | "boxes" | "points" (optional,
                           see backend.jobs.prompted), "overwrite": false, "tasks": [task ids]
                           (optional), "options": {...} (optional, see JobOptions)}`` → 202
                           ``{"job": status, "created": true}``; when the project already has a running
                           job: 200 ``{"job": that job's status, "created": false}``
GET /jobs/<id>             the job's status (backend.jobs.record.status_view), 404 for an unknown id
DELETE /jobs/<id>          cancel the job (backend.jobs.board.JobBoard.cancel) → 200 ``{"job": status,
                           "cancelled": true}``; a job that had already ended (finished, failed or
                           cancelled before) is left as it was: 200 ``{"job": its unchanged status,
                           "cancelled": false}`` (repeating a DELETE is harmless); 404 for an unknown id
GET /jobs                  ``{"jobs": [status, …]}``, newest first, without per-task failures;
                           ``?limit=N`` (default 50, at most 200)
GET /jobs/ui               the jobs page: live progress bars and a "pre-annotate project N" form
GET /jobs/static/<file>    the page's script and style sheet
=========================  ==========================================================================

The page reads the same ``GET /jobs`` answer the API gives, so both always show the same progress. The
app's basic-auth guard (``before_request``) covers these routes like every other one; the page's requests
carry the credentials the browser already sent for the page. ``POST /jobs`` takes only JSON (415 otherwise):
a browser sends that cross-site only after a CORS preflight this app never allows, so a page on another
site cannot start jobs with the credentials a browser keeps for this one; the same holds for ``DELETE``. Redis down: 503 with a message (the app's error handler).
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, render_template, request

from ..app import current_services, json_body
from ..errors import BadRequestError, UnsupportedMediaTypeError
from .board import JobBoard
from .layout import redis_connection
from .options import JobOptions

MAX_LIST_LIMIT = 200
_EXTENSION = "litesam_jobs_redis"

jobs_blueprint = Blueprint(
    "jobs", __name__, template_folder="templates", static_folder="static", static_url_path="/jobs/static"
)


def _board() -> JobBoard:
    connection = current_app.extensions.get(_EXTENSION)
    if connection is None:
        connection = redis_connection(current_services().settings)
        current_app.extensions[_EXTENSION] = connection
    return JobBoard(connection)


@jobs_blueprint.route("/jobs", methods=["POST"])
def create_job():
    if not request.is_json:
        raise UnsupportedMediaTypeError(
            "send the job as JSON, with the header Content-Type: application/json"
        )
    body = json_body()
    unknown = sorted(set(body) - {"project", "mode", "overwrite", "tasks", "options"})
    if unknown:
        raise BadRequestError(
            f"unknown field(s) {', '.join(unknown)}; expected project, mode, overwrite, tasks, options"
        )
    overwrite = body.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise BadRequestError("'overwrite' must be true or false")
    options = JobOptions.from_json(body.get("options"), current_services().settings.job_defaults)
    status, created = _board().start(
        body.get("project"),
        overwrite=overwrite,
        task_ids=body.get("tasks"),
        options=options,
        source="api",
        mode=body.get("mode", "segevery"),
    )
    response = jsonify({"job": status, "created": created})
    response.status_code = 202 if created else 200
    return response


@jobs_blueprint.route("/jobs", methods=["GET"])
def list_jobs():
    raw = request.args.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
        raise BadRequestError(f"'limit' must be an integer from 1 to {MAX_LIST_LIMIT}")
    return jsonify({"jobs": _board().recent(int(raw))})


@jobs_blueprint.route("/jobs/<job_id>", methods=["GET"])
def get_job(job_id: str):
    return jsonify(_board().status(job_id))


@jobs_blueprint.route("/jobs/<job_id>", methods=["DELETE"])
def cancel_job(job_id: str):
    status, cancelled = _board().cancel(job_id)
    return jsonify({"job": status, "cancelled": cancelled})


@jobs_blueprint.route("/jobs/ui", methods=["GET"])
def jobs_page():
    return render_template("jobs.html")
