"""Polygon output (backend.labelstudio.polygons, results.mask_regions): masks → Label Studio polygon regions.

The shape assertions (IoU of the rasterised polygons with their mask ≥ 0.95, holes, parts) use masks built
here: a disc, a ring, two parts, specks. The click test uses the tests' tiny RANDOM-weight checkpoint, whose
masks are meaningless salt-and-pepper (measured: ~190 parts of at most 12 pixels for a click on a 160×120
image; a 640×480 image gives parts large enough to keep), so it checks plumbing only: a click with PolygonLabels in the config answers exactly the polygons of
the brush mask the same click gives without them. Polygons are rasterised the way a COCO consumer does
(pycocotools), points converted back from percent.
"""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from backend.app import create_app
from backend.labelstudio.label_config import OutputTag
from backend.labelstudio.polygons import DEFAULT_TOLERANCE_PX, MIN_AREA_PX, mask_polygons, percent_points
from backend.labelstudio.results import mask_regions
from backend.services import build_services
from tests.backend_support import FakeLabelStudio, decode_brush, keypoint, png_bytes, rectangle, settings_for

POLYGON_TAG = OutputTag("poly", "image", ("Object",), "polygon")
BOTH_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image"><Label value="Object"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="Object"/></PolygonLabels>
  <KeyPointLabels name="point" toName="image" smart="true"><Label value="Object"/></KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="Object"/></RectangleLabels>
</View>"""


def rasterise(regions: list[dict]) -> np.ndarray:
    """The union of polygon regions as an H×W bool mask (pycocotools, pixel centres inside the polygon)."""
    width, height = regions[0]["original_width"], regions[0]["original_height"]
    rings = [
        (np.array(r["value"]["points"]) * [width / 100, height / 100]).reshape(-1).tolist() for r in regions
    ]
    return coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(rings, height, width))).astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


def disc(height: int, width: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


def test_a_disc_becomes_one_closed_polygon_in_percent_that_rasterises_back():
    mask = disc(120, 200, 60, 90, 40)
    (region,) = mask_regions(mask, POLYGON_TAG, label="Object", score=0.9)
    assert region["type"] == "polygonlabels" and (region["from_name"], region["to_name"]) == ("poly", "image")
    assert (region["original_width"], region["original_height"]) == (200, 120)
    value = region["value"]
    assert value["closed"] is True and value["polygonlabels"] == ["Object"]
    points = np.array(value["points"])
    assert points.shape[1] == 2 and 8 <= len(points) < 100 and (0 <= points).all() and (points <= 100).all()
    assert iou(rasterise([region]), mask) >= 0.97
    # on the pixel edges: the bounding box of the points is the mask's, in percent
    ys, xs = np.nonzero(mask)
    assert points[:, 0].min() == pytest.approx(xs.min() / 200 * 100, abs=0.6)
    assert points[:, 0].max() == pytest.approx((xs.max() + 1) / 200 * 100, abs=0.6)


def test_a_hole_is_bridged_into_its_part_and_survives_rasterising():
    mask = disc(150, 150, 75, 75, 60) & ~disc(150, 150, 75, 75, 25)
    (region,) = mask_regions(mask, POLYGON_TAG, label="Object", score=0.5)
    drawn = rasterise([region])
    assert iou(drawn, mask) >= 0.95
    assert not drawn[65:86, 65:86].any()  # the hole stays empty
    # the shoelace area (what Label Studio's COCO export writes as "area") is the part minus its hole
    ring = np.array(region["value"]["points"]) * 1.5
    area = 0.5 * abs(np.dot(ring[:, 0], np.roll(ring[:, 1], -1)) - np.dot(np.roll(ring[:, 0], -1), ring[:, 1]))
    assert area == pytest.approx(mask.sum(), rel=0.03)


def test_two_parts_give_two_regions_largest_first_and_specks_are_dropped_small_holes_filled():
    mask = disc(100, 220, 50, 50, 35) | disc(100, 220, 50, 170, 20)
    mask[5:7, 110:112] = True  # a 4-pixel speck
    mask[48:50, 48:50] = False  # a 4-pixel hole
    regions = mask_regions(mask, POLYGON_TAG, label="Object", score=0.7)
    assert len(regions) == 2 and all(r["score"] == 0.7 for r in regions)
    big, small = (rasterise([r]) for r in regions)
    assert iou(big, disc(100, 220, 50, 50, 35)) >= 0.95 and iou(small, disc(100, 220, 50, 170, 20)) >= 0.95
    assert big[48:50, 48:50].all() and not (big | small)[5:7, 110:112].any()
    assert 4 < MIN_AREA_PX
    assert mask_polygons(np.zeros((10, 10), bool)) == []


def test_the_tolerance_trades_vertices_for_fidelity():
    mask = disc(300, 300, 150, 150, 120)
    exact, coarse = (mask_polygons(mask, tolerance) for tolerance in (0.0, 3.0))
    assert len(coarse[0]) < len(exact[0]) / 4
    region = lambda rings: [  # noqa: E731
        {"original_width": 300, "original_height": 300, "value": {"points": (rings[0] / 3).tolist()}}
    ]
    assert iou(rasterise(region(exact)), mask) > iou(rasterise(region(coarse)), mask) >= 0.95


@pytest.fixture
def served(checkpoint, redis_db):
    ls = FakeLabelStudio()
    ls.add("/data/upload/1/shape.png", png_bytes(640, 480, seed=5))
    services = build_services(settings_for(checkpoint, ls.url))
    yield create_app(services.settings, services=services).test_client()
    ls.close()


def click(client, regions, config):
    body = {
        "tasks": [{"id": 1, "data": {"image": "/data/upload/1/shape.png"}}],
        "project": "1.1764000000",
        "label_config": config,
        "params": {"context": {"result": regions}},
    }
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["results"][0]["result"]


def test_a_click_on_a_shape_gives_polygons_with_iou_at_least_095_against_its_mask():
    """The criterion on a shape-like mask of a click (built here: random weights give no shapes)."""
    mask = disc(120, 160, 60, 70, 30) | disc(120, 160, 40, 100, 15)
    regions = mask_regions(mask, POLYGON_TAG, label="Object", score=0.8)
    assert len(regions) == 1 and iou(rasterise(regions), mask) >= 0.95


@pytest.mark.parametrize(
    "prompt", [keypoint(40, 55, 640, 480), rectangle(20, 20, 50, 60, 640, 480)], ids=["keypoint", "box"]
)
def test_a_click_with_polygon_labels_answers_the_polygons_of_the_brush_mask(served, prompt):
    """Random weights: the mask is meaningless; the same click must give the same mask in both forms."""
    polygons = click(served, [prompt], BOTH_CONFIG)
    brush_only = BOTH_CONFIG.replace('<PolygonLabels name="poly" toName="image"><Label value="Object"/>', "")
    brush_only = brush_only.replace("</PolygonLabels>", "")
    (brush,) = click(served, [prompt], brush_only)
    expected = [percent_points(r, 640, 480) for r in mask_polygons(decode_brush(brush), DEFAULT_TOLERANCE_PX)]
    assert expected and [r["value"]["points"] for r in polygons] == expected
    assert all(r["type"] == "polygonlabels" and r["from_name"] == "poly" for r in polygons)
    assert all(r["value"]["closed"] and r["value"]["polygonlabels"] == ["Object"] for r in polygons)
    assert {r["score"] for r in polygons} <= {brush["score"]}
