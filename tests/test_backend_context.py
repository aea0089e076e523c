"""Interactive context → prompts, for every region shape of labelstudio-protocol.md §1.6, and bad input."""

import math

import numpy as np
import pytest

from backend.errors import BadRequestError
from backend.labelstudio.label_config import parse_label_config
from backend.labelstudio.prompts import parse_context, resolve_label
from tests.backend_support import keypoint, rectangle

W, H = 333, 517
CONFIG = parse_label_config(
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="mask" toName="image"><Label value="Object"/><Label value="Person"/></BrushLabels>'
    '<KeyPointLabels name="point" toName="image" smart="true"><Label value="Object"/></KeyPointLabels>'
    "</View>"
)


def ctx(*regions):
    return {"result": list(regions)}


@pytest.mark.parametrize("context", [None, {}, {"result": []}, {"result": None}])
def test_no_regions_is_a_batch_call(context):
    assert parse_context(context) is None


def test_one_smart_keypoint_percent_to_pixels():
    ps = parse_context(ctx(keypoint(50.0, 25.0, W, H)))
    assert (ps.label, ps.to_name, ps.original_width, ps.original_height) == ("Object", "image", W, H)
    assert len(ps.prompts) == 1
    prompt = ps.prompts[0]
    np.testing.assert_allclose(prompt.point_coords, [[0.5 * W, 0.25 * H]], rtol=1e-6)
    assert prompt.point_coords.dtype == np.float32 and prompt.point_coords.shape == (1, 2)
    assert prompt.point_labels.tolist() == [1] and prompt.box is None


def test_cumulative_positive_and_negative_keypoints_of_one_label():
    ps = parse_context(
        ctx(
            keypoint(10, 10, W, H),
            keypoint(20, 20, W, H, positive=False),
            keypoint(30, 30, W, H, positive=None),  # non-smart keypoint: no is_positive → positive
            keypoint(40, 40, W, H, positive=True),
        )
    )
    assert len(ps.prompts) == 1
    assert ps.prompts[0].point_labels.tolist() == [1, 0, 1, 1]
    np.testing.assert_allclose(
        ps.prompts[0].point_coords[:, 0], np.array([10, 20, 30, 40]) / 100 * W, rtol=1e-6
    )


def test_is_positive_null_and_integers():
    a = keypoint(10, 10, W, H)
    a["is_positive"] = None
    b = keypoint(20, 20, W, H)
    b["is_positive"] = 0
    assert parse_context(ctx(a, b)).prompts[0].point_labels.tolist() == [1, 0]


def test_label_from_value_labels_when_the_type_key_is_absent():
    region = keypoint(10, 10, W, H)
    del region["value"]["keypointlabels"]
    assert parse_context(ctx(region)).label == "Object"


def test_only_regions_of_the_last_label_and_image_are_used():
    ps = parse_context(
        ctx(
            keypoint(10, 10, W, H, label="Person"),
            keypoint(15, 15, W, H, label="Object", to_name="other"),
            keypoint(20, 20, W, H, label="Object"),
            keypoint(30, 30, W, H, label="Object", positive=False),
        )
    )
    assert ps.label == "Object"
    np.testing.assert_allclose(ps.prompts[0].point_coords[:, 0], [0.2 * W, 0.3 * W], rtol=1e-6)


def test_only_regions_on_the_last_image_of_a_multi_image_task_are_used():
    def on(item_index, region):
        return {**region, "item_index": item_index}

    ps = parse_context(
        ctx(
            on(0, keypoint(10, 10, 640, 480)),  # another image of the valueList, another size
            on(1, keypoint(20, 20, W, H)),
            on(0, rectangle(5, 5, 50, 50, 640, 480)),
            keypoint(25, 25, W, H),  # no item_index: not the same image either
            on(1, keypoint(30, 30, W, H, positive=False)),
        )
    )
    assert ps.item_index == 1 and (ps.original_width, ps.original_height) == (W, H)
    assert len(ps.prompts) == 1 and ps.prompts[0].box is None
    np.testing.assert_allclose(ps.prompts[0].point_coords[:, 0], [0.2 * W, 0.3 * W], rtol=1e-6)
    assert ps.prompts[0].point_labels.tolist() == [1, 0]


def test_one_rectangle_is_one_box():
    ps = parse_context(ctx(rectangle(10, 20, 30, 40, W, H)))
    assert len(ps.prompts) == 1
    prompt = ps.prompts[0]
    assert prompt.point_coords is None and prompt.point_labels is None
    np.testing.assert_allclose(prompt.box, [0.1 * W, 0.2 * H, 0.4 * W, 0.6 * H], rtol=1e-6)


def test_several_rectangles_give_one_prompt_each():
    ps = parse_context(
        ctx(rectangle(0, 0, 10, 10, W, H), rectangle(50, 50, 10, 10, W, H), rectangle(80, 5, 15, 20, W, H))
    )
    assert len(ps.prompts) == 3
    np.testing.assert_allclose(ps.prompts[1].box, [0.5 * W, 0.5 * H, 0.6 * W, 0.6 * H], rtol=1e-6)


def test_rectangle_and_points_together_go_into_every_box():
    region = keypoint(30, 30, W, H, positive=False)
    ps = parse_context(ctx(rectangle(10, 10, 50, 50, W, H), rectangle(60, 60, 20, 20, W, H), region))
    assert len(ps.prompts) == 2
    for prompt in ps.prompts:
        assert prompt.box is not None and prompt.point_labels.tolist() == [0]


def test_rotated_rectangle_becomes_its_bounding_box():
    # 100×200 px image; rectangle at (20 px, 40 px), 40 px wide and 20 px high, rotated 90° clockwise about
    # its top-left corner: it then covers x in [0, 20], y in [40, 80].
    ps = parse_context(ctx(rectangle(20, 20, 40, 10, 100, 200, rotation=90)))
    np.testing.assert_allclose(ps.prompts[0].box, [0, 40, 20, 80], atol=1e-4)
    # 45°: corners (20,40), (48.28,68.28), (34.14,82.43), (5.86,54.14)
    ps = parse_context(ctx(rectangle(20, 20, 40, 10, 100, 200, rotation=45)))
    s = math.sqrt(0.5)
    np.testing.assert_allclose(
        ps.prompts[0].box, [20 - 20 * s, 40, 20 + 40 * s, 40 + 40 * s + 20 * s], atol=1e-3
    )


def test_slightly_outside_coordinates_are_clipped():
    ps = parse_context(ctx(keypoint(101.5, -1.0, W, H)))
    np.testing.assert_allclose(ps.prompts[0].point_coords, [[W, 0.0]])
    ps = parse_context(ctx(rectangle(-1, 90, 50, 11.5, W, H)))
    np.testing.assert_allclose(ps.prompts[0].box, [0, 0.9 * H, 0.49 * W, H], rtol=1e-5)


def test_rotation_image_rotation_and_item_index_are_carried():
    region = keypoint(10, 10, W, H)
    region["image_rotation"] = 90
    region["item_index"] = 2
    ps = parse_context(ctx(region))
    assert ps.image_rotation == 90 and ps.item_index == 2


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["value"].update(x=float("nan")), "value.x must be a finite number"),
        (lambda r: r["value"].update(y=float("inf")), "value.y must be a finite number"),
        (lambda r: r["value"].update(x="12"), "value.x must be a finite number"),
        (lambda r: r["value"].update(x=True), "value.x must be a finite number"),
        (lambda r: r["value"].pop("y"), "has no 'y'"),
        (lambda r: r["value"].update(x=150.0), "outside the image"),
        (lambda r: r["value"].update(y=-30.0), "outside the image"),
        (lambda r: r.pop("original_width"), "has no original_width"),
        (lambda r: r.update(original_height=0), "original_height must be a positive whole number"),
        (lambda r: r.update(original_width=12.5), "original_width must be a positive whole number"),
        (lambda r: r.update(original_width=float("nan")), "original_width must be a positive whole number"),
        (lambda r: r.update(is_positive="yes"), "is_positive must be true or false"),
        (lambda r: r.update(type="polygonlabels"), "prompts must be one of"),
        (lambda r: r.update(value="x"), "value must be an object"),
        (lambda r: r["value"].update(keypointlabels="Object"), "must be a list of label strings"),
    ],
)
def test_bad_keypoints_are_400_with_a_clear_message(mutate, message):
    region = keypoint(10, 10, W, H)
    mutate(region)
    with pytest.raises(BadRequestError, match=message):
        parse_context(ctx(region))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["value"].update(width=-5), "positive width and height"),
        (lambda r: r["value"].update(height=0), "positive width and height"),
        (lambda r: r["value"].pop("height"), "has no 'height'"),
        (lambda r: r["value"].update(rotation=float("nan")), "rotation must be a finite number"),
        (lambda r: r["value"].update(x=120), "outside the image"),
        (lambda r: r["value"].update(x=90, width=30), "outside the image"),
    ],
)
def test_bad_rectangles_are_400_with_a_clear_message(mutate, message):
    region = rectangle(10, 10, 20, 20, W, H)
    mutate(region)
    with pytest.raises(BadRequestError, match=message):
        parse_context(ctx(region))


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ("[]", "context must be an object"),
        ({"result": {"x": 1}}, "must be a list of regions"),
        ({"result": [1]}, r"context.result\[0\] must be an object"),
    ],
)
def test_malformed_context(context, message):
    with pytest.raises(BadRequestError, match=message):
        parse_context(context)


def test_regions_that_disagree_on_the_image_size():
    with pytest.raises(BadRequestError, match="disagree on original_width"):
        parse_context(ctx(keypoint(10, 10, W, H), keypoint(20, 20, W + 1, H)))


def test_label_must_be_a_brush_label_and_the_error_lists_them():
    brush, label = resolve_label(parse_context(ctx(keypoint(10, 10, W, H, label="Person"))), CONFIG)
    assert (brush.from_name, label) == ("mask", "Person")
    with pytest.raises(
        BadRequestError,
        match=r"label 'Banana' is not a label of <BrushLabels name='mask'>; "
        r"available labels: 'Object', 'Person'",
    ):
        resolve_label(parse_context(ctx(keypoint(10, 10, W, H, label="Banana"))), CONFIG)


def test_unlabelled_regions():
    region = keypoint(10, 10, W, H)
    region["value"].pop("keypointlabels")
    region["value"].pop("labels")
    with pytest.raises(BadRequestError, match="carry no label"):
        resolve_label(parse_context(ctx(region)), CONFIG)
    single = parse_label_config(
        '<View><Image name="image" value="$image"/>'
        '<BrushLabels name="m" toName="image"><Label value="Only"/></BrushLabels></View>'
    )
    assert resolve_label(parse_context(ctx(region)), single)[1] == "Only"
