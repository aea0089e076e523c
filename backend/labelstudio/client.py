"""The one Label Studio client of a backend process: authentication, the REST calls, and where images are.

* **Auth**: :class:`~backend.labelstudio.auth.LabelStudioAuth` makes the ``Authorization`` header from
  ``LABEL_STUDIO_API_KEY`` (a personal access token is exchanged and refreshed). Every request to Label
  Studio carries it: image downloads (:mod:`backend.images`) and the REST calls, which go through
  label-studio-sdk with this header put on each request (the SDK's own token handling is not used).
* **REST** (pre-annotation jobs): project config, task listing, predictions. The prediction writes are posted
  as orjson-encoded bytes on the SDK's own HTTP client (:meth:`LabelStudioClient.import_predictions`); the
  other calls go through the SDK. Connection failures, timeouts, 429 and 5xx answers raise
  :class:`~backend.errors.LabelStudioUnavailable` (the job retries); other HTTP errors raise
  :class:`~backend.errors.UpstreamError` with Label Studio's answer.
* **URIs**: which URL serves a task's image, and which images never change (:mod:`backend.labelstudio.uris`).
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager

import httpx
import orjson
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from ..errors import ConfigurationError, LabelStudioUnavailable, UpstreamError, UpstreamTooLargeError
from ..settings import Settings
from . import uris
from .auth import LabelStudioAuth

#: Timeout of one Label Studio REST call.
LABEL_STUDIO_TIMEOUT_S = 30.0
#: What the SDK is given as its key: not a JWT, so it never exchanges tokens itself; :class:`_HeaderAuth`
#: replaces the header it makes with ours on every request.
_SDK_KEY_PLACEHOLDER = "litesam-backend-authenticates-each-request"


class LabelStudioClient:
    """Label Studio at ``LABEL_STUDIO_URL`` with ``LABEL_STUDIO_API_KEY`` (thread-safe; one per process).

    Nothing is contacted when it is built; REST calls need both settings (else :class:`ConfigurationError`).
    """

    def __init__(self, settings: Settings) -> None:
        self.url = settings.label_studio_url
        self.auth = LabelStudioAuth(
            settings.label_studio_url, settings.label_studio_api_key, timeout=settings.fetch_timeout
        )
        self._sdk: LabelStudio | None = None
        self._http: httpx.Client | None = None  # the SDK's HTTP client, built with it

    @property
    def configured(self) -> bool:
        """Whether both the URL and the key are set (REST calls can be made)."""
        return self.url is not None and self.auth.configured

    # -- where images are ---------------------------------------------------------------------------------
    def image_url(self, uri: object, task_id: object = None) -> str:
        """The absolute URL to GET for a task's image URI (:func:`backend.labelstudio.uris.image_url`)."""
        return uris.image_url(self.url, uri, task_id)

    def immutable_source(self, uri: object) -> str | None:
        """A stable name of an image that never changes behind its URI, else None (uploads only)."""
        return uris.immutable_source(self.url, uri)

    def check_image_path(self, url: str) -> None:
        """Refuse (ForbiddenURLError) a Label Studio URL that is not an image path."""
        uris.check_image_path(self.url, url)

    # -- REST ------------------------------------------------------------------------------------------------
    @property
    def sdk(self) -> LabelStudio:
        """label-studio-sdk's client (built on first use)."""
        if self._sdk is None:
            self._connect()
        return self._sdk

    @property
    def http(self) -> httpx.Client:
        """The HTTP client the SDK sends on, for calls made without the SDK (built on first use)."""
        if self._http is None:
            self._connect()
        return self._http

    def _connect(self) -> None:
        if not self.configured:
            raise ConfigurationError(
                "pre-annotation needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to read "
                "tasks and write predictions"
            )
        with self.calling("connect"):
            http = httpx.Client(
                auth=_HeaderAuth(self.auth),
                timeout=LABEL_STUDIO_TIMEOUT_S,
                follow_redirects=True,
                trust_env=False,
            )
            self._sdk = LabelStudio(
                base_url=self.url,
                api_key=_SDK_KEY_PLACEHOLDER,
                httpx_client=http,
                timeout=LABEL_STUDIO_TIMEOUT_S,
            )
            self._http = http

    @contextmanager
    def calling(self, what: str) -> Iterator[None]:
        """Turn the errors of a Label Studio call (``what``, for the message) into backend errors."""
        try:
            yield
        except ApiError as exc:
            status = exc.status_code or 0
            body = exc.body if isinstance(exc.body, str) else json.dumps(exc.body)[:300] if exc.body else ""
            message = f"Label Studio answered {status} to {what}: {body[:300]}".rstrip(": ")
            if status >= 500 or status in (0, 429):
                raise LabelStudioUnavailable(message) from None
            raise UpstreamError(message) from None
        except (httpx.TransportError, requests.RequestException) as exc:
            raise LabelStudioUnavailable(
                f"Label Studio at {self.url} could not be reached to {what} ({type(exc).__name__})"
            ) from None

    def reachable(self) -> bool:
        """Whether Label Studio answers ``/health`` now."""
        if self.url is None:
            return False
        try:
            return httpx.get(f"{self.url}/health", timeout=5.0, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def label_config(self, project: int) -> str:
        with self.calling(f"read project {project}"):
            return self.sdk.projects.get(id=project).label_config or ""

    def tasks(self, project: int, task_ids: Sequence[int] | None) -> list[tuple[int, dict, set[str]]]:
        """(id, data, model versions of its predictions) of the project's tasks (only ``task_ids`` if given)."""
        query = None
        if task_ids is not None:
            query = json.dumps({"selectedItems": {"all": False, "included": list(task_ids)}})
        found = []
        with self.calling(f"list the tasks of project {project}"):
            pages = self.sdk.tasks.list(
                project=project,
                fields="all",
                include="id,data,predictions_model_versions",
                resolve_uri=False,
                page_size=100,
                query=query,
            )
            for task in pages:
                # Label Studio joins the model versions with commas; ours never contain one.
                versions = {
                    v.strip() for v in (task.predictions_model_versions or "").split(",") if v.strip()
                }
                found.append((int(task.id), dict(task.data or {}), versions))
        return found

    def region_sources(
        self, project: int, task_ids: Sequence[int] | None, prediction_version: str | None
    ) -> dict[int, list[dict]]:
        """Task id → the region holders a job takes prompts from: its annotations that were not cancelled, or
        (``prediction_version`` given) its predictions of that model version; each a dict with ``result``."""
        query = None
        if task_ids is not None:
            query = json.dumps({"selectedItems": {"all": False, "included": list(task_ids)}})
        found = {}
        with self.calling(f"list the annotations of project {project}"):
            pages = self.sdk.tasks.list(
                project=project,
                fields="all",  # no "include": it cuts annotations down to their ids
                resolve_uri=False,
                page_size=100,
                query=query,
            )
            for task in pages:
                if prediction_version is None:
                    holders = [_as_dict(a) for a in task.annotations or []]
                    holders = [a for a in holders if not a.get("was_cancelled")]
                else:
                    holders = [_as_dict(p) for p in task.predictions or []]
                    holders = [p for p in holders if p.get("model_version") == prediction_version]
                found[int(task.id)] = holders
        return found

    def annotated_tasks(self, project: int) -> list[tuple[int, dict, list[dict]]]:
        """(id, data, every annotation as a dict, cancelled ones included) of each task of the project, by id."""
        found = []
        with self.calling(f"list the annotations of project {project}"):
            pages = self.sdk.tasks.list(project=project, fields="all", resolve_uri=False, page_size=100)
            for task in pages:
                found.append((int(task.id), dict(task.data or {}), [_as_dict(a) for a in task.annotations or []]))
        return sorted(found, key=lambda item: item[0])

    def our_predictions(self, task_id: int, model_version: str) -> list[tuple[int, int]]:
        """(prediction id, region count) of the task's predictions of ``model_version``."""
        with self.calling(f"read the predictions of task {task_id}"):
            listed = self.sdk.predictions.list(task=task_id)
        return [(int(p.id), len(p.result or [])) for p in listed if p.model_version == model_version]

    def delete_prediction(self, prediction_id: int) -> None:
        with self.calling(f"delete prediction {prediction_id}"):
            try:
                self.sdk.predictions.delete(id=prediction_id)
            except ApiError as exc:
                if exc.status_code != 404:  # 404: already gone (an earlier attempt deleted it)
                    raise

    def import_predictions(self, project: int, predictions: Sequence[tuple[int, dict]]) -> int:
        """Write (task id, prediction dict) pairs in one call; returns how many Label Studio created.

        Raises :class:`~backend.errors.UpstreamTooLargeError` when Label Studio or a proxy in front of it
        answers 413 (nginx's default ``client_max_body_size`` is 1 MB); the message gives the body's size.

        The body (a JSON list of ``{task, result, score, model_version}``, as the SDK's
        ``projects.import_predictions`` sends) is encoded by orjson and posted on the SDK's HTTP client, so
        the same auth, timeout and redirects apply. Through the SDK, its ``jsonable_encoder`` walks every
        integer of every brush RLE in Python: 8.1 s for one task of 50 noise masks (160,000 RLE integers
        each), against 0.08 s for orjson (AMD Zen 4, one thread; README, "Pre-annotation writes").
        """
        fields = ("result", "score", "model_version")
        body = orjson.dumps(
            [{"task": task, **{key: p[key] for key in fields}} for task, p in predictions],
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        what = f"import {len(predictions)} prediction(s) into project {project}"
        with self.calling(what):
            # No retry: a POST whose connection broke after sending may have been carried out by Label Studio.
            # A failed write fails the chunk; its retry checks what landed.
            answer = self.http.post(
                f"{self.url}/api/projects/{int(project)}/import/predictions",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            if answer.status_code == 413:
                raise UpstreamTooLargeError(
                    f"Label Studio, or a proxy in front of it, refused {len(predictions)} prediction(s) as "
                    f"too large (HTTP 413 for {len(body) / 1e6:.2f} MB of JSON)"
                )
            if answer.is_error:
                raise ApiError(status_code=answer.status_code, headers=dict(answer.headers), body=answer.text)
        try:
            return int(answer.json().get("created") or 0)
        except (ValueError, AttributeError, TypeError):
            raise UpstreamError(f"Label Studio answered {what} with no count: {answer.text[:300]}") from None


def _as_dict(item: object) -> dict:
    """An annotation or prediction of the SDK's task listing as a plain dict."""
    return item if isinstance(item, dict) else item.model_dump()


class _HeaderAuth(httpx.Auth):
    """Puts :class:`LabelStudioAuth`'s header on each SDK request; after a 401 to a refreshed access token,
    fetches a new one and sends the request once more."""

    def __init__(self, auth: LabelStudioAuth) -> None:
        self._auth = auth

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._auth.header()
        response = yield request
        if response.status_code == 401 and self._auth.is_personal_access_token:
            self._auth.invalidate()
            request.headers["Authorization"] = self._auth.header()
            yield request
