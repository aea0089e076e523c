"""``litesam-backend distill``: a Label Studio project's task images as a distillation source, fetched with the
backend's rules (a local HTTP server stands in for Label Studio's REST API and uploads)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backend.cli import main as backend_main
from backend.distill_cli import project_images
from litesam.distill.config import DistillConfig
from litesam.distill.loop import distill
from litesam.errors import DatasetError
from tests.backend_support import FakeLabelStudio, exif_rotated_jpeg, png_bytes, settings_for

DEMO = "litesam/weights/litesam_tiny_synthetic.pt"
CONFIG = '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image"><Label value="a"/></BrushLabels></View>'
TASKS_PAGE = "/api/tasks/?fields=all&include=id%2Cdata%2Cpredictions_model_versions&page={}&page_size=100&project=7&resolve_uri=false"


@pytest.fixture
def label_studio():
    server = FakeLabelStudio()
    server.add("/api/projects/7/", json.dumps({"id": 7, "label_config": CONFIG}).encode())
    tasks = [
        {"id": 12, "data": {"image": "/data/upload/7/rotated.jpg"}},
        {"id": 11, "data": {"image": "/data/upload/7/plain.png"}},
        {"id": 13, "data": {"image": "http://10.0.0.1/internal.png"}},  # neither Label Studio nor allowed
        {"id": 14, "data": {"text": "no image"}},
    ]
    server.add(TASKS_PAGE.format(1), json.dumps({"tasks": tasks, "total": 4}).encode())
    server.add(TASKS_PAGE.format(2), json.dumps({"tasks": [], "total": 4}).encode())
    server.add("/data/upload/7/rotated.jpg", exif_rotated_jpeg(60, 40))
    server.add("/data/upload/7/plain.png", png_bytes(50, 30))
    yield server
    server.close()


def test_project_images_are_fetched_with_the_backends_rules(label_studio, tmp_path):
    settings = settings_for(DEMO, label_studio_url=label_studio.url, variant=None)
    items = project_images(settings, 7)
    assert [item.name for item in items] == ["task 11", "task 12", "task 13"]  # task order; no image: skipped
    plain, rotated, forbidden = (item.load() if i < 2 else item for i, item in enumerate(items))
    assert plain.shape == (30, 50, 3) and rotated.shape == (60, 40, 3)  # natural, EXIF-transposed size
    assert items[0].key != items[1].key and items[0].key.startswith("labelstudio:")
    with pytest.raises(DatasetError, match="task 13: refusing to fetch"):
        forbidden.load()
    # A short distillation on the project's two fetchable images.
    summary = distill(
        DistillConfig(teacher=DEMO, data="labelstudio:7", output_dir=tmp_path / "run", variant="litesam_tiny_student",
                      batch_size=2, max_steps=1, autoppn=False, progress=False),
        source=items[:2],
    )
    assert summary["step"] == 1 and summary["cache"]["embedding_shards"] == 1


def test_cli_stops_on_an_image_it_may_not_fetch(label_studio, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "legacy-0123456789abcdef0123456789abcdef")
    code = backend_main(["distill", "--project", "7", "--teacher", DEMO, "--variant", "litesam_tiny_student",
                         "--no-progress", "--max-steps", "1", "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "task 13" in err and "refusing to fetch" in err and "Traceback" not in err
