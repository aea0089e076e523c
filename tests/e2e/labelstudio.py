"""A real Label Studio 1.23.2 server for end-to-end tests, started headless on 127.0.0.1.

Recipe: /work/shared/design/labelstudio-e2e.md. A first start on an empty data directory runs every migration
(about 35 s on 2 cores), so a *template* data directory is built once and kept under
``<repo>/.cache/ls-template`` (with the admin's personal access token); each test session starts on a copy of it
(about 4 s). The server's environment is built from scratch: nothing of the caller's ``LABEL_STUDIO_*`` /
``HEARTEX_*`` / ``USERNAME`` / ``PASSWORD`` / ``HOST`` / ``PORT`` / ``DJANGO_DB`` / ``DEBUG`` … can leak in, because
LS's ``get_env(X)`` reads ``LABEL_STUDIO_X``, ``HEARTEX_X`` and plain ``X``.

Typical use (see ``tests/e2e/conftest.py`` for the session fixture)::

    ls = LabelStudioServer.start(workdir)
    pid = ls.create_project(LABEL_CONFIG)
    task_ids = ls.upload_images(pid, [("a.png", png_bytes)])
    ml_id = ls.connect_backend(pid, "http://127.0.0.1:9090")
    body = ls.interactive_annotating(ml_id, task_ids[0], context)
    ls.stop()

Every helper raises ``LabelStudioError`` (an ``AssertionError``, so pytest reports a failure with the response
body and the server's log tail) when Label Studio answers with an unexpected status.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.processes import ManagedProcess, ProcessError, base_env, free_port

LS_VERSION = "1.23.2"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "e2e-admin-pass-123"
# Legacy DRF token of the admin (LS accepts 6..40 characters). label-studio-ml 1.0.9 downloads images with it.
LEGACY_TOKEN = "e2e0legacy0token0000000000000000000000aa"
# Bump when the template's recipe changes, so stale templates are rebuilt.
TEMPLATE_FORMAT = 2

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE_DIR = REPO_ROOT / ".cache" / "ls-template"

#: Seconds a first start on an empty data dir (all migrations, the template build) may take: measured 30-55 s on
#: 2 quiet cores, 340 s on one loaded core; ``LITESAM_E2E_LS_FIRST_START_TIMEOUT`` overrides the default of 600.
FIRST_START_TIMEOUT = float(os.environ.get("LITESAM_E2E_LS_FIRST_START_TIMEOUT") or 600.0)
START_TIMEOUT = 90.0  # copy of the template (measured 3-7 s)
REQUEST_TIMEOUT = 60.0
PORT_ATTEMPTS = 3

_SERVER_LINE = re.compile(r"Starting development server at http://127\.0\.0\.1:(\d+)/")


class LabelStudioError(AssertionError):
    """Label Studio answered unexpectedly, or could not be started (the message carries the details)."""


def label_studio_executable() -> Path:
    """The ``label-studio`` console script next to the running interpreter (the test venv's)."""
    exe = Path(sys.executable).parent / "label-studio"
    if not exe.exists():
        raise LabelStudioError(f"label-studio is not installed in this interpreter's environment ({exe})")
    return exe


def label_studio_env(
    *, data_dir: Path, files_root: Path, home: Path, port: int, secret_key: str
) -> dict[str, str]:
    """The complete, hermetic environment of one Label Studio process (recipe §2, pitfalls 2, 3, 5, 7).

    ``secret_key`` is Django's SECRET_KEY, which also signs the PAT's JWTs: the template's key, handed to every
    server started on a copy. Left to LS, the key is drawn at random into ``<data_dir>/.env``, and one that
    begins with ``$`` (1 in 50 draws) reads back through django-environ as a reference to another variable, so
    the next start draws a new key and every PAT fails ("Signature verification failed").
    """
    env = base_env(home)  # none of the caller's LS variables; no real ~/.local/share/label-studio
    env.update(
        {
            "SECRET_KEY": secret_key,
            "DJANGO_DB": "sqlite",
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_USERNAME": ADMIN_EMAIL,
            "LABEL_STUDIO_PASSWORD": ADMIN_PASSWORD,
            "LABEL_STUDIO_USER_TOKEN": LEGACY_TOKEN,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
            "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_SENTRY_DSN": "",
            "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_DEBUG": "false",
            "LABEL_STUDIO_HOST": f"http://127.0.0.1:{port}",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
        }
    )
    return env


@dataclass(frozen=True)
class TemplateInfo:
    """What ``harness.json`` of a template records."""

    path: Path  # the template folder; its ``data/`` is a migrated LS data directory
    pat: str  # the admin's personal access token (one per user: it cannot be issued again)
    secret_key: str  # Django's SECRET_KEY, which signed the PAT; every server on a copy runs with it
    build_seconds: float | None  # how long the build took, None when the template already existed


# ------------------------------------------------------------------------------------------- template
def ensure_template(template_dir: Path = DEFAULT_TEMPLATE_DIR) -> TemplateInfo:
    """Return the template data directory, building it first if it is missing or stale.

    Building starts LS on an empty data directory (all migrations, admin user, organization with legacy tokens
    on), issues the admin's PAT, stops LS, and moves the result into place atomically. A file lock serialises
    concurrent builders (and readers that copy the template, see ``LabelStudioServer.start``).
    """
    with _template_lock(template_dir):
        return _ensure_template_locked(template_dir)


@contextlib.contextmanager
def _template_lock(template_dir: Path) -> Iterator[None]:
    template_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(template_dir.parent / (template_dir.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ensure_template_locked(template_dir: Path) -> TemplateInfo:
    info = _read_template(template_dir)
    return info if info is not None else _build_template(template_dir)


def _read_template(template_dir: Path) -> TemplateInfo | None:
    try:
        meta = json.loads((template_dir / "harness.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    fresh = (
        meta.get("format") == TEMPLATE_FORMAT
        and meta.get("label_studio") == LS_VERSION
        and meta.get("legacy_token") == LEGACY_TOKEN
        and isinstance(meta.get("pat"), str)
        and isinstance(meta.get("secret_key"), str)
        and (template_dir / "data" / "label_studio.sqlite3").is_file()
    )
    return TemplateInfo(template_dir, meta["pat"], meta["secret_key"], None) if fresh else None


def _build_template(template_dir: Path) -> TemplateInfo:
    started = time.monotonic()
    # Leftovers of interrupted builds (no other build runs: the caller holds the lock).
    for stale in template_dir.parent.glob(f"{template_dir.name}.build-*"):
        shutil.rmtree(stale, ignore_errors=True)
    build_dir = template_dir.parent / f"{template_dir.name}.build-{os.getpid()}"
    build_dir.mkdir()
    secret_key = secrets.token_hex(32)  # [0-9a-f] only: nothing django-environ reads as a reference
    server = LabelStudioServer._launch(
        build_dir, data_dir=build_dir / "data", secret_key=secret_key, timeout=FIRST_START_TIMEOUT
    )
    try:
        server._check_legacy_token()
        pat = server._issue_pat()
    except BaseException:
        server.stop()
        raise
    server.stop()
    build_seconds = time.monotonic() - started
    meta = {
        "format": TEMPLATE_FORMAT,
        "label_studio": LS_VERSION,
        "admin_email": ADMIN_EMAIL,
        "legacy_token": LEGACY_TOKEN,
        "pat": pat,
        "secret_key": secret_key,
        "build_seconds": round(build_seconds, 1),
    }
    (build_dir / "harness.json").write_text(json.dumps(meta, indent=2) + "\n")
    for scratch in ("files", "home", "label-studio.log"):  # keep only data/ and harness.json
        path = build_dir / scratch
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    shutil.rmtree(template_dir, ignore_errors=True)
    build_dir.rename(template_dir)
    return TemplateInfo(template_dir, pat, secret_key, build_seconds)


# --------------------------------------------------------------------------------------------- server
class LabelStudioServer:
    """A running Label Studio, with the admin's credentials and helpers over its REST API.

    Attributes: ``url`` (``http://127.0.0.1:<port>``), ``port``, ``legacy_token``, ``pat``, ``workdir``,
    ``data_dir`` (LS's BASE_DATA_DIR), ``files_root`` (LOCAL_FILES_DOCUMENT_ROOT), ``process``
    (``ManagedProcess``), ``startup_seconds`` (process start → /health answers), ``template`` (``TemplateInfo``).
    """

    def __init__(
        self, *, process: ManagedProcess, port: int, workdir: Path, data_dir: Path, files_root: Path
    ):
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.workdir = workdir
        self.data_dir = data_dir
        self.files_root = files_root
        self.legacy_token = LEGACY_TOKEN
        self.pat: str | None = None
        self.template: TemplateInfo | None = None
        self.startup_seconds: float | None = None
        self._http: httpx.Client | None = None
        self._local_storages: dict[tuple[int, str], int] = {}

    # ----------------------------------------------------------------------------------- start / stop
    @classmethod
    def start(
        cls, workdir: str | os.PathLike, *, template_dir: Path = DEFAULT_TEMPLATE_DIR
    ) -> LabelStudioServer:
        """Start LS in ``workdir`` on a copy of the template (built first if needed); wait until /health is UP."""
        workdir = Path(workdir)
        data_dir = workdir / "data"
        with _template_lock(template_dir):  # no rebuild can replace the template while it is copied
            template = _ensure_template_locked(template_dir)
            shutil.copytree(template.path / "data", data_dir)
        server = cls._launch(
            workdir, data_dir=data_dir, secret_key=template.secret_key, timeout=START_TIMEOUT
        )
        server.pat = template.pat
        server.template = template
        return server

    @classmethod
    def _launch(
        cls, workdir: Path, *, data_dir: Path, secret_key: str, timeout: float
    ) -> LabelStudioServer:
        """Start ``label-studio start`` on a free port; retry on a port race (recipe pitfall 6)."""
        files_root = workdir / "files"
        home = workdir / "home"
        for folder in (files_root, home, data_dir):
            folder.mkdir(parents=True, exist_ok=True)
        exe = label_studio_executable()
        log_path = workdir / "label-studio.log"
        attempt = 0
        while True:
            attempt += 1
            port = free_port()
            argv = [
                exe,
                "start",
                "--no-browser",
                "--internal-host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                data_dir,
                "--enable-legacy-api-token",
            ]
            env = label_studio_env(
                data_dir=data_dir, files_root=files_root, home=home, port=port, secret_key=secret_key
            )
            process = ManagedProcess(f"label-studio:{port}", argv, env=env, cwd=workdir, log_path=log_path)
            process.start()
            server = cls(
                process=process, port=port, workdir=workdir, data_dir=data_dir, files_root=files_root
            )
            try:
                match = process.wait_log(_SERVER_LINE.pattern, timeout=timeout)
                if int(match.group(1)) != port:
                    raise ProcessError(f"Label Studio moved from port {port} to {match.group(1)}")
                server.startup_seconds = process.wait_http(
                    f"{server.url}/health", timeout=max(5.0, timeout - process.elapsed())
                )
                return server
            except ProcessError as exc:
                server.stop()
                log = process.log_text(since_start=True)
                port_race = "already in use" in log or "moved from port" in str(exc)
                if not port_race or attempt >= PORT_ATTEMPTS:
                    raise LabelStudioError(f"Label Studio did not start: {exc}") from exc

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stop the server (SIGTERM, SIGKILL after ``timeout`` s) and close HTTP clients. Idempotent."""
        if self._http is not None:
            self._http.close()
            self._http = None
        return self.process.stop(timeout=timeout)

    def log_tail(self, lines: int = 80) -> str:
        """The server log's last lines, for assertion messages."""
        return self.process.log_tail(lines)

    # ------------------------------------------------------------------------------------ credentials
    def access_token(self) -> str:
        """A short-lived JWT access token from the PAT (``POST /api/token/refresh/``; ~5 min lifetime)."""
        if self.pat is None:
            raise LabelStudioError("this server has no personal access token")
        with httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT, trust_env=False) as client:
            response = client.post("/api/token/refresh/", json={"refresh": self.pat})
        return self._json(response, 200)["access"]

    def auth_headers(self, kind: str = "legacy") -> dict[str, str]:
        """``Authorization`` header: ``kind`` = "legacy" (Token <legacy>), "bearer" (Bearer <access from PAT>)."""
        if kind == "legacy":
            return {"Authorization": f"Token {self.legacy_token}"}
        if kind == "bearer":
            return {"Authorization": f"Bearer {self.access_token()}"}
        raise ValueError(f"unknown auth kind {kind!r}: use 'legacy' or 'bearer'")

    def http(self, auth: str | None = "legacy") -> httpx.Client:
        """A new ``httpx.Client`` on ``url`` with ``auth`` ("legacy", "bearer" or None); the caller closes it."""
        headers = self.auth_headers(auth) if auth is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=REQUEST_TIMEOUT, trust_env=False)

    def client(self, api_key: str | None = None):
        """A ``label_studio_sdk.LabelStudio`` client; ``api_key`` defaults to the legacy token (pass ``pat`` for JWT)."""
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=api_key or self.legacy_token, timeout=REQUEST_TIMEOUT)

    @property
    def api(self) -> httpx.Client:
        """The shared legacy-token ``httpx.Client`` the helpers use."""
        if self._http is None:
            self._http = self.http("legacy")
        return self._http

    # --------------------------------------------------------------------------------------- projects
    def create_project(self, label_config: str, title: str | None = None, **fields: Any) -> int:
        """Create a project (``POST /api/projects/``) and return its id. ``fields`` go into the body as is."""
        body = {"title": title or f"e2e {time.strftime('%H:%M:%S')}", "label_config": label_config, **fields}
        return int(self._json(self.api.post("/api/projects/", json=body), 201)["id"])

    def upload_images(self, project_id: int, files: Sequence[tuple[str, bytes]]) -> list[int]:
        """Upload image files as new tasks (multipart import) and return the task ids in the order of ``files``.

        Each part gets its own field name ``file0``, ``file1`` … (a repeated name imports only one file, recipe
        pitfall 8). File names must be distinct; LS stores each as ``/data/upload/<project>/<uuid8>-<name>``.
        """
        names = [name for name, _ in files]
        if not files or len(set(names)) != len(names):
            raise ValueError(f"upload_images needs one or more distinct file names, got {names}")
        parts = [(f"file{i}", (name, data, _content_type(name))) for i, (name, data) in enumerate(files)]
        response = self.api.post(
            f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, files=parts
        )
        task_ids = [int(t) for t in self._json(response, 201)["task_ids"]]
        if len(task_ids) != len(files):
            raise LabelStudioError(
                f"uploaded {len(files)} files but LS created tasks {task_ids}: {response.text}"
            )
        by_name: dict[str, int] = {}
        for task_id in task_ids:
            uri = json.dumps(self.task(task_id)["data"])
            for name in names:
                if f'-{name}"' in uri:
                    by_name[name] = task_id
        if sorted(by_name.values()) != sorted(task_ids) or len(by_name) != len(names):
            raise LabelStudioError(f"could not match uploaded files {names} to tasks {task_ids} by file name")
        return [by_name[name] for name in names]

    def write_local_file(self, relpath: str, data: bytes) -> Path:
        """Write ``data`` to ``files_root/relpath`` (the local-files document root) and return the path."""
        path = (self.files_root / relpath).resolve()
        if self.files_root.resolve() not in path.parents:
            raise ValueError(f"{relpath!r} leaves the document root {self.files_root}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def add_local_storage(self, project_id: int, subdir: str) -> int:
        """Attach ``files_root/subdir`` as a Local Storage of the project (needed to serve /data/local-files)."""
        key = (project_id, subdir)
        if key not in self._local_storages:
            folder = self.files_root / subdir
            folder.mkdir(parents=True, exist_ok=True)
            body = {"project": project_id, "path": str(folder), "use_blob_urls": False, "title": subdir}
            storage = self._json(self.api.post("/api/storages/localfiles/", json=body), 201)
            self._local_storages[key] = int(storage["id"])
        return self._local_storages[key]

    def import_local_files(
        self,
        project_id: int,
        files: Sequence[tuple[str, bytes]],
        *,
        subdir: str = "images",
        data_key: str = "image",
    ) -> list[int]:
        """Put ``files`` under ``files_root/subdir``, attach that folder as Local Storage, import one task per
        file with ``data[data_key] = "/data/local-files/?d=<subdir>/<name>"``; return task ids in order."""
        self.add_local_storage(project_id, subdir)
        tasks = []
        for name, data in files:
            self.write_local_file(f"{subdir}/{name}", data)
            tasks.append({data_key: f"/data/local-files/?d={subdir}/{name}"})
        return self.import_tasks(project_id, tasks)

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        """Import task ``data`` dicts (JSON import; a dict with a ``data`` key is taken as a full task)."""
        response = self.api.post(
            f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=list(tasks)
        )
        task_ids = [int(t) for t in self._json(response, 201)["task_ids"]]
        if len(task_ids) != len(tasks):
            raise LabelStudioError(f"imported {len(tasks)} tasks but LS created {task_ids}: {response.text}")
        return task_ids

    def task(self, task_id: int) -> dict:
        """``GET /api/tasks/{id}`` as a dict (``data``, ``predictions`` … ; URIs unresolved)."""
        return self._json(self.api.get(f"/api/tasks/{task_id}", params={"resolve_uri": "false"}), 200)

    def tasks(self, project_id: int) -> list[dict]:
        """All tasks of a project (``GET /api/tasks?project=N``, every page), ordered by id."""
        out: list[dict] = []
        for page in range(1, 10_000):
            params = {
                "project": project_id,
                "page": page,
                "page_size": 100,
                "fields": "all",
                "resolve_uri": "false",
            }
            response = self.api.get("/api/tasks", params=params)
            if response.status_code == 404 and page > 1:  # past the last page
                break
            batch = self._json(response, 200)["tasks"]
            out.extend(batch)
            if len(batch) < 100:
                break
        return sorted(out, key=lambda t: t["id"])

    # ------------------------------------------------------------------------------------ ML backends
    def connect_backend(
        self,
        project_id: int,
        url: str,
        *,
        interactive: bool = True,
        title: str = "litesam",
        basic_auth: tuple[str, str] | None = None,
        extra_params: Mapping[str, Any] | None = None,
        expect_state: str | None = "CO",
    ) -> int:
        """Connect an ML backend to a project (``POST /api/ml/``; LS calls its /health and /setup) → backend id.

        With ``expect_state`` (default "CO" = connected) the backend's state is checked afterwards.
        """
        body: dict[str, Any] = {
            "project": project_id,
            "url": url,
            "title": title,
            "is_interactive": interactive,
        }
        if basic_auth is not None:
            body.update(
                auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1]
            )
        if extra_params is not None:
            body["extra_params"] = dict(extra_params)
        ml_id = int(self._json(self.api.post("/api/ml/", json=body), 201)["id"])
        if expect_state is not None:
            backend = self.ml_backend(ml_id)
            if backend.get("state") != expect_state:
                raise LabelStudioError(
                    f"ML backend {url} is in state {backend.get('state')!r}, expected {expect_state!r}: "
                    f"{backend.get('error_message')!r}\n{self.log_tail(30)}"
                )
        return ml_id

    def ml_backend(self, ml_id: int) -> dict:
        """``GET /api/ml/{id}`` (state: CO connected, ER error, DI disconnected, TR training, PR predicting)."""
        return self._json(self.api.get(f"/api/ml/{ml_id}"), 200)

    def interactive_annotating(self, ml_id: int, task_id: int, context: Mapping[str, Any] | None) -> dict:
        """What the labeling UI calls after a smart region is drawn; returns LS's JSON body unchanged.

        LS answers HTTP 200 with ``{"data": {"result": [...], "score", "model_version"}}`` on success and with
        ``{"errors": [...]}`` on failure (recipe pitfall 9): assert on the body.
        """
        body = {"task": task_id, "context": dict(context) if context is not None else None}
        return self._json(self.api.post(f"/api/ml/{ml_id}/interactive-annotating", json=body), 200)

    def retrieve_predictions(self, project_id: int, task_ids: Sequence[int] | None = None) -> dict:
        """Data Manager action "Retrieve predictions" (synchronous) for all tasks or ``task_ids``."""
        selected = (
            {"all": True, "excluded": []} if task_ids is None else {"all": False, "included": list(task_ids)}
        )
        response = self.api.post(
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project_id},
            json={"selectedItems": selected},
        )
        return self._json(response, 200)

    def predictions(self, *, task: int | None = None, project: int | None = None) -> list[dict]:
        """``GET /api/predictions/`` filtered by ``task`` or ``project`` (exactly one of them)."""
        if (task is None) == (project is None):
            raise ValueError("predictions() needs exactly one of task= or project=")
        params = {"task": task} if task is not None else {"project": project}
        return self._json(self.api.get("/api/predictions/", params=params), 200)

    # --------------------------------------------------------------------------------------- internals
    def _json(self, response: httpx.Response, expected: int) -> Any:
        if response.status_code != expected:
            raise LabelStudioError(
                f"{response.request.method} {response.request.url} -> HTTP {response.status_code} "
                f"(expected {expected}): {response.text[:2000]}\n{self.log_tail(30)}"
            )
        return response.json()

    def _check_legacy_token(self) -> None:
        with self.http("legacy") as client:
            self._json(client.get("/api/current-user/whoami"), 200)

    def _issue_pat(self) -> str:
        """``POST /api/token/`` once for the admin (a second call answers 409: one PAT per user)."""
        return self._json(self.api.post("/api/token/"), 201)["token"]


def _content_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}.get(
        suffix, "application/octet-stream"
    )
