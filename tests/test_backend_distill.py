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


def serve_project(tasks: list[dict]) -> FakeLabelStudio:
    """A fake Label Studio holding project 7 with ``tasks`` and two uploaded images."""
    server = FakeLabelStudio()
    server.add("/api/projects/7/", json.dumps({"id": 7, "label_config": CONFIG}).encode())
    server.add(TASKS_PAGE.format(1), json.dumps({"tasks": tasks, "total": len(tasks)}).encode())
    server.add(TASKS_PAGE.format(2), json.dumps({"tasks": [], "total": len(tasks)}).encode())
    server.add("/data/upload/7/rotated.jpg", exif_rotated_jpeg(60, 40))
    server.add("/data/upload/7/plain.png", png_bytes(50, 30))
    return server


FETCHABLE = [
    {"id": 12, "data": {"image": "/data/upload/7/rotated.jpg"}},
    {"id": 11, "data": {"image": "/data/upload/7/plain.png"}},
    {"id": 14, "data": {"text": "no image"}},
]
FORBIDDEN = {"id": 13, "data": {"image": "http://10.0.0.1/internal.png"}}  # neither Label Studio nor allowed


@pytest.fixture
def label_studio():
    server = serve_project(FETCHABLE)
    yield server
    server.close()


@pytest.fixture
def forbidding_label_studio():
    server = serve_project([*FETCHABLE, FORBIDDEN])
    yield server
    server.close()


def test_project_images_are_fetched_with_the_backends_rules(label_studio, tmp_path):
    settings = settings_for(DEMO, label_studio_url=label_studio.url, variant=None)
    items = project_images(settings, 7)
    assert [item.name for item in items] == ["task 11", "task 12"]  # task order; no image: skipped
    plain, rotated = (item.load() for item in items)
    assert plain.shape == (30, 50, 3) and rotated.shape == (60, 40, 3)  # natural, EXIF-transposed size
    assert items[0].key != items[1].key and items[0].key.startswith("labelstudio:")
    # A short distillation on the project's two images.
    summary = distill(
        DistillConfig(teacher=DEMO, data="labelstudio:7", output_dir=tmp_path / "run", variant="litesam_tiny_student",
                      batch_size=2, max_steps=1, autoppn=False, progress=False),
        source=items,
    )
    assert summary["step"] == 1 and summary["cache"]["embedding_shards"] == 1


@pytest.mark.parametrize(
    ("uri", "allowed", "reason"),
    [
        ("http://10.0.0.1/internal.png", "", "neither Label Studio's host"),
        ("http://169.254.169.254/latest/meta-data/x.png", "*", "non-public address 169.254.169.254"),
        ("/api/projects/7/", "", "images are read only from"),  # Label Studio, but not an image path
    ],
)
def test_project_images_refuse_a_url_before_any_download(label_studio, uri, allowed, reason):
    label_studio.add(TASKS_PAGE.format(1), json.dumps({"tasks": [*FETCHABLE, {"id": 13, "data": {"image": uri}}],
                                                        "total": 4}).encode())
    hosts = (allowed,) if allowed else ()
    settings = settings_for(DEMO, label_studio_url=label_studio.url, variant=None, allowed_hosts=hosts)
    with pytest.raises(DatasetError, match=f"task 13: refusing to fetch .*{reason}"):
        project_images(settings, 7)
    assert not any(path.startswith("/data/") for _, path, _ in label_studio.requests)  # nothing downloaded


def test_cli_stops_on_an_image_it_may_not_fetch(forbidding_label_studio, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LABEL_STUDIO_URL", forbidding_label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "legacy-0123456789abcdef0123456789abcdef")
    code = backend_main(["distill", "--project", "7", "--teacher", DEMO, "--variant", "litesam_tiny_student",
                         "--no-progress", "--max-steps", "1", "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "task 13" in err and "refusing to fetch" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused while listing: no output folder, no cache
