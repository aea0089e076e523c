"""End to end: a real Label Studio 1.23.2 and a real ``litesam-backend serve`` (gunicorn) with a tiny
random-weight checkpoint, connected as an interactive ML backend with basic auth.

The smart-tool calls go through Label Studio exactly as the labeling UI sends them
(``POST /api/ml/{id}/interactive-annotating``); the backend downloads the images from Label Studio with a
personal access token. The masks must decode to each image's natural size (a 333×517 PNG, an EXIF-rotated
JPEG, a local file), and Label Studio must accept the results as a prediction and as an annotation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.backend_support import (
    TEST_REDIS_URL,
    decode_brush,
    exif_rotated_jpeg,
    keypoint,
    make_tiny_checkpoint,
    png_bytes,
    rectangle,
    serve_backend,
)
from tests.e2e.processes import base_env

REPO = Path(__file__).resolve().parents[2]
CONFIG = (REPO / "label_config.xml").read_text()
BASIC = ("label-studio", "e2e-basic-pass")
ODD = png_bytes(333, 517, seed=11)  # 333 wide, 517 high
ROTATED = exif_rotated_jpeg(120, 80)  # stored 120×80 with EXIF orientation 6: shown 80 wide, 120 high


@pytest.fixture
def backend_url(label_studio, tmp_path):
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    checkpoint = make_tiny_checkpoint(tmp_path / "tiny.pt")
    env = base_env(
        tmp_path,
        LABEL_STUDIO_URL=label_studio.url,
        LABEL_STUDIO_API_KEY=label_studio.pat,
        REDIS_URL=TEST_REDIS_URL,
        LITESAM_CHECKPOINT=checkpoint,
        LITESAM_VARIANT="litesam_tiny",
        BASIC_AUTH_USER=BASIC[0],
        BASIC_AUTH_PASS=BASIC[1],
        OMP_NUM_THREADS="1",
        LITESAM_TORCH_THREADS="1",
        LOG_LEVEL="INFO",
    )
    try:
        with serve_backend(tmp_path, env, ready_status=401) as served:  # basic auth is on
            yield served.url
            log = served.process.log_text()
            assert "Traceback" not in log and "POST /webhook → 401" not in log, served.process.log_tail()
            assert label_studio.pat not in log and BASIC[1] not in log
    finally:
        client.flushdb()


def suggestion(label_studio, ml_id, task_id, regions):
    """The labeling UI's call; returns the result regions Label Studio hands to the frontend."""
    body = label_studio.interactive_annotating(ml_id, task_id, {"result": regions})
    assert "errors" not in body, body
    data = body["data"]
    assert data["model_version"].startswith("litesam_tiny-")
    return data["result"], data


@pytest.mark.e2e
def test_interactive_masks_through_label_studio(label_studio, backend_url):
    project = label_studio.create_project(CONFIG, title="litesam interactive e2e")
    odd_task, rotated_task = label_studio.upload_images(project, [("odd.png", ODD), ("rotated.jpg", ROTATED)])
    (local_task,) = label_studio.import_local_files(project, [("local.png", png_bytes(200, 150, seed=3))])
    ml_id = label_studio.connect_backend(project, backend_url, interactive=True, basic_auth=BASIC)

    # model versions as Label Studio reads them (GET /versions, which label-studio-ml 1.0.9 does not answer)
    versions = label_studio.api.get(f"/api/ml/{ml_id}/versions").json()
    assert len(versions["versions"]) == 1 and versions["versions"][0].startswith("litesam_tiny-")
    version = versions["versions"][0]

    # positive and negative smart keypoints (cumulative, as the UI re-sends them)
    points = [
        keypoint(30, 40, 333, 517),
        keypoint(60, 70, 333, 517, positive=False),
        keypoint(45, 20, 333, 517, positive=True),
    ]
    result, data = suggestion(label_studio, ml_id, odd_task, points)
    assert data["model_version"] == version
    assert len(result) == 1 and result[0]["type"] == "brushlabels" and result[0]["from_name"] == "mask"
    assert result[0]["value"]["brushlabels"] == ["Object"]
    assert decode_brush(result[0]).shape == (517, 333)
    point_result = result

    # two smart rectangles: one mask each
    boxes = [
        rectangle(10, 10, 30, 30, 333, 517, label="Vehicle"),
        rectangle(50, 50, 40, 30, 333, 517, label="Vehicle"),
    ]
    result, _ = suggestion(label_studio, ml_id, odd_task, boxes)
    assert len(result) == 2 and all(r["value"]["brushlabels"] == ["Vehicle"] for r in result)
    assert all(decode_brush(r).shape == (517, 333) for r in result)

    # EXIF-rotated JPEG: the natural (shown) size is 80×120
    result, _ = suggestion(label_studio, ml_id, rotated_task, [keypoint(50, 25, 80, 120, label="Person")])
    assert (result[0]["original_width"], result[0]["original_height"]) == (80, 120)
    assert decode_brush(result[0]).shape == (120, 80)

    # a local file (/data/local-files/?d=…) and a rectangle
    result, _ = suggestion(label_studio, ml_id, local_task, [rectangle(20, 20, 50, 50, 200, 150)])
    assert decode_brush(result[0]).shape == (150, 200)

    # a label that is not a brush label: Label Studio relays the backend's 400 as an error
    body = label_studio.interactive_annotating(
        ml_id, odd_task, {"result": [keypoint(30, 40, 333, 517, label="Cat")]}
    )
    assert "errors" in body and "400" in body["errors"][0]

    # Label Studio accepts the masks as a prediction and as an annotation, and gives them back unchanged
    ls = label_studio.client()
    ls.predictions.create(
        task=odd_task, result=point_result, model_version=version, score=point_result[0]["score"]
    )
    (stored,) = ls.predictions.list(task=odd_task)
    assert (
        stored.model_version == version
        and stored.result[0]["value"]["rle"] == point_result[0]["value"]["rle"]
    )
    annotation = ls.annotations.create(id=odd_task, result=point_result)
    again = ls.annotations.get(id=annotation.id)
    assert again.result[0]["value"]["rle"] == point_result[0]["value"]["rle"]
    assert decode_brush(again.result[0]).shape == (517, 333)

    # "Retrieve predictions" (a batch call without context): the tasks without a prediction of our version
    # get one from the batch handler (SegEvery, synchronous for this small batch), masks at natural size;
    # the task that already has one is not sent again
    label_studio.retrieve_predictions(project)
    sizes = {odd_task: (517, 333), rotated_task: (120, 80), local_task: (150, 200)}
    for task_id, size in sizes.items():
        (prediction,) = label_studio.predictions(task=task_id)
        assert prediction["model_version"] == version
        assert all(decode_brush(region).shape == size for region in prediction["result"])
    assert label_studio.ml_backend(ml_id)["state"] in ("CO", "PR")
