"""Take the README's screenshot of the jobs page: real jobs on a real Label Studio, in headless Chromium.

Starts the tests' Label Studio harness, a project with rectangles and one with PolygonLabels, a worker and
the backend (tiny RANDOM-weight checkpoint: the page shows real jobs, their masks are meaningless), runs a
``boxes`` job and a labelled SegEvery job with polygon output, then saves the page as a PNG.

    .venv/bin/python scripts/jobs_page_screenshot.py docs/jobs-page.png   (needs Redis, chromium)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend.jobs.board import JobBoard  # noqa: E402
from backend.jobs.options import JobOptions  # noqa: E402
from tests.backend_support import make_tiny_checkpoint, png_bytes, rectangle, serve_backend  # noqa: E402
from tests.e2e.labelstudio import LabelStudioServer  # noqa: E402
from tests.jobs_support import OPEN_FILTERS, start_worker, wait_for, worker_env  # noqa: E402

BOXES = """<View><Image name="image" value="$image"/>
<BrushLabels name="mask" toName="image"><Label value="Person"/><Label value="Vehicle"/></BrushLabels>
<RectangleLabels name="box" toName="image"><Label value="Person"/><Label value="Vehicle"/></RectangleLabels>
</View>"""
POLYGONS = """<View><Image name="image" value="$image"/>
<PolygonLabels name="outline" toName="image"><Label value="Object"/><Label value="Fruit"/></PolygonLabels>
</View>"""


def main(out: Path) -> None:
    import redis

    from tests.backend_support import TEST_REDIS_URL

    work = Path(tempfile.mkdtemp(prefix="jobs-shot-"))
    connection = redis.Redis.from_url(TEST_REDIS_URL)
    connection.flushdb()
    ls = LabelStudioServer.start(work / "ls")
    worker = None
    try:
        boxes = ls.create_project(BOXES, title="boxes")
        tasks = ls.upload_images(boxes, [(f"b{i}.png", png_bytes(120, 90, seed=i)) for i in range(6)])
        client = ls.client()
        for i, task in enumerate(tasks[:5]):
            labels = ["Person", "Vehicle"][: 1 + i % 2]
            client.annotations.create(
                id=task, result=[rectangle(10 + 40 * k, 20, 30, 50, 120, 90, label=l) for k, l in enumerate(labels)]
            )
        polygons = ls.create_project(POLYGONS, title="polygons")
        ls.upload_images(polygons, [(f"p{i}.png", png_bytes(160, 120, seed=9 + i)) for i in range(4)])
        env = worker_env(
            work, checkpoint=make_tiny_checkpoint(work / "tiny.pt"), label_studio_url=ls.url, api_key=ls.pat
        )
        worker = start_worker(work, env, "shot")
        board = JobBoard(connection)
        first, _ = board.start(boxes, mode="boxes")
        second, _ = board.start(polygons, options=JobOptions.from_json({**OPEN_FILTERS, "label": "Fruit", "max_masks": 5}))
        for job in (first, second):
            wait_for(lambda job=job: board.status(job["id"])["state"] == "finished", 180, "the job")
        with serve_backend(work, env) as served:
            subprocess.run(
                [
                    shutil.which("chromium") or "/usr/bin/chromium",
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    f"--user-data-dir={work / 'profile'}",
                    "--window-size=1000,700",
                    "--virtual-time-budget=4000",
                    f"--screenshot={out.resolve()}",
                    f"{served.url}/jobs/ui",
                ],
                check=True,
                timeout=120,
                capture_output=True,
            )
    finally:
        if worker is not None:
            worker.stop()
        ls.stop()
        connection.flushdb()
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
