"""Helpers shared by the end-to-end pre-annotation job tests: worker pools, projects of small images of
different sizes, waiting for a job, and checking the predictions a job wrote.

This module holds no tests. Every mask checked here comes from RANDOM weights: the checks are about plumbing
(one prediction per task, regions of the right shape and label at each image's natural size), never quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.jobs.board import JobBoard
from tests.backend_support import decode_brush, exif_rotated_jpeg, png_bytes
from tests.e2e.processes import ManagedProcess
from tests.jobs_support import start_worker, wait_for

REPO = Path(__file__).resolve().parents[2]
CONFIG = (REPO / "label_config.xml").read_text()


class Workers:
    """Worker processes started by a test, all stopped at its end."""

    def __init__(self, tmp_path: Path, env: dict) -> None:
        self.tmp_path, self.env = tmp_path, env
        self.started: list[ManagedProcess] = []

    def start(self, name: str, *args: str) -> ManagedProcess:
        process = start_worker(self.tmp_path, self.env, name, *args)
        self.started.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(p.log_tail(40) for p in self.started)

    def stop(self) -> None:
        for process in self.started:
            process.stop()


def images(count: int, seed: int = 0) -> list[tuple[str, bytes, tuple[int, int]]]:
    """(file name, bytes, natural (height, width)) of ``count`` images of different sizes; one EXIF-rotated."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        if i == 3:
            out.append(
                (f"img{i:02d}.jpg", exif_rotated_jpeg(120, 80), (120, 80))
            )  # stored 120×80, shown 80×120
            continue
        width, height = int(rng.integers(40, 160)), int(rng.integers(30, 120))
        out.append((f"img{i:02d}.png", png_bytes(width, height, seed=seed * 100 + i), (height, width)))
    return out


def new_project(label_studio, files) -> tuple[int, dict[int, tuple[int, int]]]:
    project = label_studio.create_project(CONFIG, title="litesam pre-annotation e2e")
    task_ids = label_studio.upload_images(project, [(name, data) for name, data, _ in files])
    return project, {task: size for task, (_, _, size) in zip(task_ids, files, strict=True)}


def wait_job(board: JobBoard, job_id: str, workers: Workers, timeout: float = 120) -> dict:
    return wait_for(
        lambda: (s := board.status(job_id))["state"] in ("finished", "failed") and s,
        timeout,
        f"job {job_id} to end",
        interval=0.25,
        explain=lambda: f"{board.status(job_id)}\n{workers.logs()}",
    )


def predictions_by_task(label_studio, task_ids) -> dict[int, list[dict]]:
    return {task: label_studio.predictions(task=task) for task in task_ids}


def ours(predictions: list[dict], version: str) -> list[dict]:
    return [p for p in predictions if p["model_version"] == version]


def check_prediction(prediction: dict, size: tuple[int, int], label: str = "Object") -> None:
    assert prediction["result"], "random weights with open filters keep at least one mask"
    scores = []
    for region in prediction["result"]:
        assert (
            region["type"] == "brushlabels" and region["from_name"] == "mask" and region["to_name"] == "image"
        )
        assert region["value"]["brushlabels"] == [label]
        mask = decode_brush(region)  # exactly H·W·4 values
        assert mask.shape == size and set(np.unique(mask)) <= {0, 255}
        assert 0.0 <= region["score"] <= 1.0
        scores.append(region["score"])
    assert prediction["score"] == pytest.approx(float(np.mean(scores)))
