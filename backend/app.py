"""The backend's Flask app: the ML-backend routes Label Studio 1.23 calls, built by :func:`create_app`.

=========================  ==========================================================================
route                      behaviour
=========================  ==========================================================================
GET /health, GET /         ``{"status": "UP", "model_loaded", "model_version", "variant", "engine", "redis"}``;
                           fast, never loads or runs the model (Label Studio waits 1 s); the checkpoint
                           is hashed and, without LITESAM_VARIANT, identified once per process
POST /setup                ``{"model_version"}``; checks the config's BrushLabels when a schema is sent;
                           fast, never loads the model (Label Studio waits 3 s)
POST /predict              interactive: ``{"results": [prediction], "model_version"}``; batch (no
                           context): ``{"results": []}``
GET|POST /versions         ``{"versions": [model_version], "model_version"}``
GET /metrics               Prometheus text format (:mod:`backend.metrics`): requests, caches, encoder and
                           decoder time, embedding bytes, job tasks and queue depth
POST /webhook              ``{"status": "ok"}`` at once, the body unparsed (at most :data:`WEBHOOK_READ_BYTES`
                           read and dropped); Lite-SAM does not train from annotations
=========================  ==========================================================================

Every route answers JSON. Errors are ``{"error": message}`` with the status of the :mod:`backend.errors` class
(400 bad input — JSON nested too deeply and bodies the server cannot read, such as a malformed or cut-short
chunked body, included —, 401, 403 refused URL, 413 too large, 502 Label Studio or image host failed, 500
misconfiguration); an unexpected exception is logged with its traceback and answered 500
without it. With BASIC_AUTH_USER/BASIC_AUTH_PASS set every route requires them except ``/webhook``: Label
Studio sends its event webhooks (ANNOTATION_CREATED, …) without the ML connection's basic-auth credentials
(seen in the end-to-end test), and the route changes nothing.

Other modules add routes as Flask blueprints: ``create_app(settings, blueprints=[jobs_blueprint])``; inside a
request they reach the process's objects with :func:`current_services`. A batch ``/predict`` (no prompt
regions in the context) is answered by ``batch_predict(services, project, tasks, label_config)`` when one is
given, and with ``{"results": []}`` otherwise.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable

import redis
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import ClientDisconnected, HTTPException

from litesam.errors import InvalidImageError, InvalidPromptError, LiteSamError

from . import metrics
from .errors import (
    BackendError,
    BadRequestError,
    PayloadTooLargeError,
    QueueUnavailableError,
    UnauthorizedError,
)
from .json_answers import OrjsonProvider
from .labelstudio.label_config import parse_label_config
from .labelstudio.prompts import parse_context
from .model import LiteSamBackend
from .services import Services, build_services
from .settings import Settings

logger = logging.getLogger(__name__)

#: Largest request body accepted (the app's ``MAX_CONTENT_LENGTH``); interactive calls carry every draft's
#: RLE (often ~1 MB). :func:`json_body` enforces it for Content-Length and chunked bodies alike.
MAX_REQUEST_BYTES = 100 * 1024 * 1024
#: Most of a ``/webhook`` body that is read (and dropped); the route never parses it.
WEBHOOK_READ_BYTES = 1024 * 1024
_READ_CHUNK = 64 * 1024
_UNREADABLE = (
    "the request body could not be read ({}): a malformed or incomplete chunked body, or a body shorter "
    "than its Content-Length"
)
_EXTENSION = "litesam"
_METRICS_REDIS = "litesam_metrics_redis"
_BATCH = "litesam_batch_predict"

#: ``batch_predict(services, project, tasks, label_config) -> list of predictions`` (one per task, or none).
BatchPredict = Callable[[Services, object, list, object], list]


def create_app(
    settings: Settings,
    *,
    blueprints: Iterable[Blueprint] = (),
    services: Services | None = None,
    batch_predict: BatchPredict | None = None,
) -> Flask:
    """Build the app for ``settings`` (and ``services``, built from the settings when not given)."""
    app = Flask("backend")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.json = OrjsonProvider(app)
    app.extensions[_EXTENSION] = services or build_services(settings)
    app.extensions[_BATCH] = batch_predict
    app.before_request(_start_clock)
    app.before_request(_check_basic_auth)
    app.after_request(_count_request)
    app.register_error_handler(BackendError, _backend_error)
    app.register_error_handler(LiteSamError, _litesam_error)
    app.register_error_handler(redis.RedisError, _redis_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    app.register_blueprint(_routes)
    for blueprint in blueprints:
        app.register_blueprint(blueprint)
    return app


def current_services() -> Services:
    """The :class:`Services` of the app handling the current request."""
    return current_app.extensions[_EXTENSION]


def json_body() -> dict:
    """The request body as a JSON object, at most the app's ``MAX_CONTENT_LENGTH`` bytes.

    A declared length over the limit is refused before reading; a chunked body has no Content-Length, and
    at most limit + 1 bytes of it are read (Werkzeug 3 itself stops such a stream at the app's
    ``MAX_CONTENT_LENGTH``; its 413 gets this function's message).

    Raises:
        PayloadTooLargeError: the body is larger than the limit.
        BadRequestError: empty, malformed or not an object.
    """
    limit = current_app.config.get("MAX_CONTENT_LENGTH") or MAX_REQUEST_BYTES
    too_large = (
        f"the request body is larger than the backend's limit of {limit} bytes; "
        "send fewer or smaller drafts and tasks per request"
    )
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(too_large)
    try:
        raw = _read_stream(limit + 1)
    except HTTPException as exc:
        if exc.code == 413:
            raise PayloadTooLargeError(too_large) from None
        raise
    if len(raw) > limit:
        raise PayloadTooLargeError(too_large)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError("the request body is JSON nested too deeply to be read") from None
    if not isinstance(body, dict):
        raise BadRequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _read_stream(most: int) -> bytes:
    """Up to ``most`` bytes of the request body (fewer at its end); a read may return less than asked.

    Raises:
        BadRequestError: the body cannot be read: the server's reader failed on a malformed chunked body
            (gunicorn's InvalidChunkSize, ChunkMissingTerminator, …) or on a body cut short (gunicorn's
            NoMoreData, Werkzeug's ClientDisconnected).
            The server closes such a connection after the answer.
    """
    chunks: list[bytes] = []
    size = 0
    while size < most:
        try:
            chunk = request.stream.read(min(_READ_CHUNK, most - size))
        except HTTPException as exc:
            if not isinstance(exc, ClientDisconnected):  # Werkzeug's own: the body ended early
                raise
            raise BadRequestError(_UNREADABLE.format(type(exc).__name__)) from None
        except Exception as exc:  # the WSGI server's own body errors; their classes are its own
            raise BadRequestError(_UNREADABLE.format(type(exc).__name__)) from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


_routes = Blueprint("ml_backend", __name__)


@_routes.route("/health", methods=["GET"])
@_routes.route("/", methods=["GET"])
def health():
    services = current_services()
    answer = {
        "status": "UP",
        "model_class": LiteSamBackend.__name__,
        "model_loaded": services.model.loaded,
        "model_version": None,
        "redis": "ok" if services.store.ping() else "unavailable",
    }
    try:
        answer["model_version"] = services.model.model_version
        answer["variant"] = services.model.variant
        answer["engine"] = services.model.title
    except BackendError as exc:
        answer["model_error"] = exc.message
    return jsonify(answer)


@_routes.route("/setup", methods=["POST"])
def setup():
    body = json_body()
    schema = body.get("schema")
    if schema:
        parse_label_config(schema)
    return jsonify({"model_version": current_services().model.model_version})


@_routes.route("/predict", methods=["POST"])
def predict():
    body = json_body()
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        raise BadRequestError("the request needs 'tasks': a list of task objects")
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise BadRequestError("'params' must be an object")
    context = (params or {}).get("context", body.get("context"))
    services = current_services()
    prompt_set = parse_context(context)
    if prompt_set is None:
        batch_predict = current_app.extensions[_BATCH]
        results = []
        if batch_predict is not None:
            results = batch_predict(services, body.get("project"), tasks, body.get("label_config"))
    else:
        results = LiteSamBackend(services, body.get("label_config")).predict_prompts(tasks, prompt_set)
    if not results:
        return jsonify({"results": []})
    return jsonify({"results": results, "model_version": services.model.model_version})


@_routes.route("/versions", methods=["GET", "POST"])
def versions():
    version = current_services().model.model_version
    return jsonify({"versions": [version], "model_version": version})


@_routes.route("/metrics", methods=["GET"])
def prometheus_metrics():
    connection = current_app.extensions.get(_METRICS_REDIS)
    if connection is None:
        url = current_services().settings.redis_url.reveal()
        connection = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
        current_app.extensions[_METRICS_REDIS] = connection
    return Response(metrics.exposition(connection), mimetype=None, content_type=metrics.CONTENT_TYPE)


@_routes.route("/webhook", methods=["POST"])
def webhook():
    """Acknowledge a Label Studio event. The route has no basic auth (see the module docstring), so it never
    parses the body: at most :data:`WEBHOOK_READ_BYTES` are read, so that a client sending a small body
    sees the answer, and dropped."""
    if request.content_length is None or request.content_length <= WEBHOOK_READ_BYTES:
        _read_stream(WEBHOOK_READ_BYTES)
    logger.debug("webhook ignored: Lite-SAM does not train from Label Studio annotations")
    return jsonify({"status": "ok", "message": "Lite-SAM does not train from Label Studio annotations"})


def _start_clock():
    g.litesam_started = time.perf_counter()


def _count_request(response):
    """Count the answered request and its latency under its URL rule (``unmatched`` for unknown paths)."""
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics.REQUESTS.labels(route, request.method, str(response.status_code)).inc()
    started = g.get("litesam_started")
    if started is not None:
        metrics.REQUEST_SECONDS.labels(route, request.method).observe(time.perf_counter() - started)
    return response


def _check_basic_auth():
    settings = current_services().settings
    if not settings.basic_auth_enabled or request.endpoint == "ml_backend.webhook":
        return None
    auth = request.authorization
    user_ok = auth is not None and hmac.compare_digest(
        (auth.username or "").encode(), settings.basic_auth_user.encode()
    )
    pass_ok = auth is not None and hmac.compare_digest(
        (auth.password or "").encode(), settings.basic_auth_pass.reveal().encode()
    )
    if not (user_ok and pass_ok):
        raise UnauthorizedError(
            "this backend requires basic auth; set the user and password in Label Studio's "
            "model connection (Authentication method: Basic Auth)"
        )
    return None


def _error(status: int, message: str):
    response = jsonify({"error": message})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="litesam-backend"'
    return response


def _backend_error(exc: BackendError):
    log = logger.error if exc.status >= 500 else logger.warning
    log("%s %s → %d: %s", request.method, request.path, exc.status, exc.message)
    return _error(exc.status, exc.message)


def _litesam_error(exc: LiteSamError):
    status = 400 if isinstance(exc, (InvalidImageError, InvalidPromptError)) else 500
    log = logger.error if status >= 500 else logger.warning
    log("%s %s → %d: %s", request.method, request.path, status, exc)
    return _error(status, str(exc))


def _redis_error(exc: redis.RedisError):
    """Only the job routes and the batch ``/predict`` reach Redis unguarded (the embedding store never
    raises): the job queue is down."""
    return _backend_error(
        QueueUnavailableError(
            f"Redis does not answer ({type(exc).__name__}): pre-annotation jobs cannot be queued or read; "
            "check REDIS_URL"
        )
    )


def _http_error(exc: HTTPException):
    return _error(exc.code or 500, exc.description or exc.name)


def _unexpected_error(exc: Exception):
    logger.exception("%s %s failed", request.method, request.path)
    return _error(500, "internal error in the Lite-SAM backend; the details are in its log")
