"""End to end: polygon output through a real Label Studio 1.23.2, and its COCO export through label-studio-sdk's
own converter.

A project whose config has PolygonLabels gets polygon suggestions for a smart rectangle (tiny RANDOM-weight
checkpoint: the mask is meaningless, the test checks that Label Studio relays and stores the regions); polygons
built here from known masks (a ring: a bridged hole; two parts) are stored as an annotation too. The export is
converted to COCO by ``label_studio_sdk.converter.Converter``: each region must come out as its polygon in pixels,
and the ring's COCO polygon must rasterise (pycocotools) to the ring, hole included. (The config has no
KeyPointLabels: with one, the converter files the polygons of a keypoint label under a keypoint category.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from label_studio_sdk.converter import Converter
from pycocotools import mask as coco_mask

from backend.labelstudio.label_config import OutputTag
from backend.labelstudio.results import mask_regions
from tests.backend_support import png_bytes, rectangle
from tests.e2e.test_interactive_e2e import BASIC, backend_url, suggestion  # noqa: F401 (a fixture)

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="poly" toName="image"><Label value="Object"/><Label value="Person"/></PolygonLabels>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="Object"/></RectangleLabels>
</View>"""
WIDTH, HEIGHT = 240, 180


def disc(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


@pytest.mark.e2e
def test_polygons_are_suggested_stored_and_exported_to_coco(label_studio, backend_url, tmp_path):  # noqa: F811
    project = label_studio.create_project(CONFIG, title="litesam polygons e2e")
    (task,) = label_studio.upload_images(project, [("shape.png", png_bytes(WIDTH, HEIGHT, seed=2))])
    ml_id = label_studio.connect_backend(project, backend_url, interactive=True, basic_auth=BASIC)

    result, data = suggestion(label_studio, ml_id, task, [rectangle(20, 20, 50, 60, WIDTH, HEIGHT)])
    for region in result:
        assert region["type"] == "polygonlabels" and region["from_name"] == "poly"
        assert region["value"]["closed"] is True and region["value"]["polygonlabels"] == ["Object"]

    tag = OutputTag("poly", "image", ("Object", "Person"), "polygon")
    ring = disc(90, 80, 60) & ~disc(90, 80, 25)
    (ring_region,) = mask_regions(ring, tag, label="Person", score=0.9)
    parts = mask_regions(disc(40, 200, 25) | disc(140, 200, 20), tag, label="Object", score=0.8)
    assert len(parts) == 2
    regions = [ring_region, *parts, *result]
    ls = label_studio.client()
    annotation = ls.annotations.create(id=task, result=regions)
    stored = ls.annotations.get(id=annotation.id).result
    assert [r["value"]["points"] for r in stored] == [r["value"]["points"] for r in regions]
    ls.predictions.create(task=task, result=result, model_version=data["model_version"], score=data["score"])

    export = label_studio.api.get(f"/api/projects/{project}/export", params={"exportType": "JSON"})
    assert export.status_code == 200, export.text
    (path := tmp_path / "export.json").write_text(export.text)
    converter = Converter(CONFIG, str(tmp_path), download_resources=False)
    converter.convert_to_coco(str(path), str(tmp_path / "coco"), is_dir=False)
    coco = json.loads((tmp_path / "coco" / "result.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    exported = coco["annotations"]
    assert len(exported) == len(regions)
    for region, item in zip(regions, exported, strict=True):
        expected = (np.array(region["value"]["points"]) * [WIDTH / 100, HEIGHT / 100]).reshape(-1)
        np.testing.assert_allclose(item["segmentation"][0], expected, atol=1e-6)
        assert names[item["category_id"]] == region["value"]["polygonlabels"][0]

    ring_coco = exported[0]
    drawn = coco_mask.decode(coco_mask.frPyObjects(ring_coco["segmentation"], HEIGHT, WIDTH))[:, :, 0] > 0
    assert np.logical_and(drawn, ring).sum() / np.logical_or(drawn, ring).sum() >= 0.95
    assert not drawn[80:100, 70:90].any()  # the hole
    assert ring_coco["area"] == pytest.approx(ring.sum(), rel=0.03)
