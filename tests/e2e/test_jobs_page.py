"""The jobs page in a real headless Chromium (Debian's ``chromium``), with real clicks, against a real
``litesam-backend serve`` (gunicorn, basic auth on), real workers, a real Label Studio and Redis.

Chromium is driven over the DevTools protocol through ``--remote-debugging-pipe`` (JSON messages separated
by NUL bytes on file descriptors 3 and 4), so no driver package is needed. The click is a trusted mouse
event at the button's position (``Input.dispatchMouseEvent``), the project id is typed with ``Input.insertText``.
The test checks that the page and ``GET /jobs/<id>`` show the same progress: while the job is half done
(a worker that quits after the plan and one chunk) and when it is finished.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from queue import Empty, Queue

import httpx
import pytest

from backend.jobs.board import JobBoard
from tests.backend_support import png_bytes, serve_backend
from tests.jobs_support import (
    start_worker,
    wait_for,
    worker_env,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG = (REPO / "label_config.xml").read_text()
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BASIC = ("jobs-admin", "page-basic-pass")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-pipe",
]


class Browser:
    """A headless Chromium with one page, spoken to over the DevTools pipe."""

    def __init__(self, profile: Path, log_path: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # bash puts the pipe ends on fds 3 (commands in) and 4 (answers out), where Chromium expects them
        argv = [
            "bash",
            "-c",
            f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w}',
            "chromium",
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv,
                pass_fds=(to_browser_r, from_browser_w),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._answers: dict[int, Queue] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)[
            "sessionId"
        ]

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, _, buffer = buffer.partition(b"\0")
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        waiting = self._answers.get(message["id"])
                    if waiting is not None:
                        waiting.put(message)

    def call(self, method: str, session: str | None = None, timeout: float = 30.0, **params) -> dict:
        with self._lock:
            self._next_id += 1
            call_id = self._next_id
            self._answers[call_id] = Queue()
        message = {"id": call_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        try:
            answer = self._answers[call_id].get(timeout=timeout)
        except Empty:
            raise AssertionError(f"Chromium did not answer {method} within {timeout} s") from None
        finally:
            with self._lock:
                del self._answers[call_id]
        if "error" in answer:
            raise AssertionError(f"{method} failed: {answer['error']}")
        return answer.get("result", {})

    def page(self, method: str, **params) -> dict:
        return self.call(method, session=self.session, **params)

    def evaluate(self, expression: str):
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float, what: str):
        return wait_for(
            lambda: self.evaluate(expression),
            timeout,
            what,
            interval=0.2,
            explain=lambda: self.evaluate("document.body.innerText"),
        )

    def click(self, selector: str) -> None:
        """A real (trusted) left click in the middle of the element."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView();"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.page(
                "Input.dispatchMouseEvent",
                type=kind,
                x=x,
                y=y,
                button="left",
                clickCount=0 if kind == "mouseMoved" else 1,
            )

    def type(self, text: str) -> None:
        self.page("Input.insertText", text=text)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture
def env(label_studio, tmp_path, checkpoint, redis_db):
    return worker_env(
        tmp_path,
        checkpoint=checkpoint,
        label_studio_url=label_studio.url,
        api_key=label_studio.pat,
        BASIC_AUTH_USER=BASIC[0],
        BASIC_AUTH_PASS=BASIC[1],
    )


@pytest.fixture
def backend_url(env, tmp_path):
    with serve_backend(tmp_path, env, threads=4, ready_status=401) as served:  # basic auth is on
        yield served.url


@pytest.fixture
def browser(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(
            "Chromium is not installed: apt-get install -y chromium (.ci/run installs it)", pytrace=False
        )
    instance = Browser(tmp_path / "chromium-profile", tmp_path / "chromium.log")
    try:
        yield instance
    finally:
        instance.close()


ROW = "document.querySelector('li.job')"
PAGE_VIEW = f"""(() => {{
  const row = {ROW};
  if (!row) return null;
  return {{id: row.dataset.jobId, state: row.dataset.state, total: row.dataset.total, done: row.dataset.done,
          skipped: row.dataset.skipped, failed: row.dataset.failed, percent: row.dataset.percent,
          width: row.querySelector('.fill').style.width, counts: row.querySelector('.counts').textContent,
          rows: document.querySelectorAll('li.job').length}};
}})()"""


def same_progress(view: dict, api: dict) -> None:
    assert view["id"] == api["id"] and view["state"] == api["state"]
    assert (view["total"], view["done"], view["skipped"], view["failed"]) == tuple(
        str(api[k]) for k in ("total", "done", "skipped", "failed")
    )
    assert float(view["percent"]) == api["percent"] and view["width"] == f"{api['percent']:g}%"
    settled = api["done"] + api["skipped"] + api["failed"]
    assert view["counts"].startswith(f"{settled} of {api['total']} tasks · {api['done']} pre-annotated")


@pytest.mark.e2e
def test_jobs_page_starts_a_job_with_a_click_and_shows_the_same_progress_as_the_api(
    label_studio, backend_url, browser, env, tmp_path, redis_db
):
    project = label_studio.create_project(CONFIG, title="litesam jobs page")
    label_studio.upload_images(project, [(f"p{i}.png", png_bytes(48 + i, 40, seed=i)) for i in range(20)])
    auth = "Basic " + base64.b64encode(f"{BASIC[0]}:{BASIC[1]}".encode()).decode()
    api = httpx.Client(base_url=backend_url, headers={"Authorization": auth}, timeout=10, trust_env=False)
    assert httpx.get(f"{backend_url}/jobs/ui", timeout=10, trust_env=False).status_code == 401

    browser.page("Network.enable")
    browser.page("Network.setExtraHTTPHeaders", headers={"Authorization": auth})
    browser.page("Page.navigate", url=f"{backend_url}/jobs/ui")
    browser.wait("document.readyState === 'complete' && !!document.getElementById('start')", 30, "the page")
    browser.wait(
        "document.getElementById('empty').hidden === false && "
        "document.getElementById('updated').textContent.startsWith('updated')",
        30,
        "the first poll",
    )

    browser.click("#project")
    browser.type(str(project))
    browser.click("#start")
    message = browser.wait(
        "(() => { const t = document.getElementById('message').textContent;"
        " return t.startsWith('Started job') && t; })()",
        30,
        "the start message",
    )
    (job,) = JobBoard(redis_db).recent()
    assert (
        job["project"] == project
        and job["source"] == "api"
        and message.startswith(f"Started job {job['id'][:8]}")
    )
    browser.wait(f"{ROW} && {ROW}.dataset.jobId === {json.dumps(job['id'])}", 30, "the job's row")

    # half done: a worker that quits after the plan and one chunk (8 of 20 tasks, chunks of 8)
    half = start_worker(tmp_path, env, "half", "--max-jobs", "2")
    half.popen.wait(timeout=120)
    status = api.get(f"/jobs/{job['id']}").json()
    assert (status["state"], status["total"], status["done"]) == ("running", 20, 8), status
    view = browser.wait(
        f"(() => {{ const v = {PAGE_VIEW}; return v && v.done === '8' && v; }})()",
        30,
        "the page to show 8 done",
    )
    same_progress(view, status)
    assert view["rows"] == 1

    # a second click while it runs gives back the running job (one job per project)
    browser.click("#start")
    browser.wait(
        "document.getElementById('message').textContent.includes('already has a running job')",
        30,
        "the running-job message",
    )
    assert len(api.get("/jobs").json()["jobs"]) == 1

    # a second worker finishes the job; the bar reaches 100 %
    rest = start_worker(tmp_path, env, "rest")
    try:
        view = browser.wait(
            f"(() => {{ const v = {PAGE_VIEW}; return v && v.state === 'finished' && v; }})()",
            120,
            "the page to show the job finished",
        )
    finally:
        rest.stop()
    status = api.get(f"/jobs/{job['id']}").json()
    assert status["state"] == "finished" and status["done"] == 20
    same_progress(view, status)
    assert view["width"] == "100%"
    time.sleep(1.5)  # one more poll: the page keeps showing the final state
    same_progress(browser.evaluate(PAGE_VIEW), status)


@pytest.mark.e2e
def test_the_cancel_button_cancels_a_waiting_job_and_frees_its_project(
    label_studio, backend_url, browser, redis_db
):
    project = label_studio.create_project(CONFIG, title="litesam jobs page cancel")
    label_studio.upload_images(project, [("c0.png", png_bytes(40, 32, seed=1))])
    auth = "Basic " + base64.b64encode(f"{BASIC[0]}:{BASIC[1]}".encode()).decode()
    api = httpx.Client(base_url=backend_url, headers={"Authorization": auth}, timeout=10, trust_env=False)
    job = api.post("/jobs", json={"project": project}).json()["job"]  # no worker runs: it waits

    browser.page("Network.enable")
    browser.page("Network.setExtraHTTPHeaders", headers={"Authorization": auth})
    browser.page("Page.navigate", url=f"{backend_url}/jobs/ui")
    browser.wait(f"{ROW} && {ROW}.dataset.jobId === {json.dumps(job['id'])}", 30, "the job's row")
    browser.evaluate("window.confirm = () => true")  # answer the page's "Cancel job …?" question
    browser.click("li.job button.cancel")
    browser.wait(
        "document.getElementById('message').textContent.startsWith('Cancelled job')", 30, "the cancel message"
    )
    assert api.get(f"/jobs/{job['id']}").json()["state"] == "cancelled"
    browser.wait(f"{ROW}.dataset.state === 'cancelled' && {ROW}.querySelector('.cancel').hidden", 30, "the row")
    again = api.post("/jobs", json={"project": project})
    assert again.status_code == 202 and again.json()["job"]["id"] != job["id"]  # the project is free
    JobBoard(redis_db).cancel(again.json()["job"]["id"])
