"""Label config parsing: output tags (BrushLabels, PolygonLabels) and their choice, the Image value key, smart
tools, clear errors."""

from pathlib import Path

import pytest

from backend.errors import BadRequestError
from backend.labelstudio.label_config import parse_label_config

REPO = Path(__file__).resolve().parents[1]


def test_the_repository_label_config():
    config = parse_label_config((REPO / "label_config.xml").read_text())
    brush = config.output_for("image")
    assert (brush.from_name, brush.to_name) == ("mask", "image")
    assert brush.labels == ("Object", "Person", "Vehicle")
    assert config.image("image").value_key == "image"
    tools = {tool.from_name: tool for tool in config.tools}
    assert tools["point"].region_type == "keypointlabels" and tools["point"].smart
    assert tools["box"].region_type == "rectanglelabels" and tools["box"].smart
    # every prompt label is also a brush label, so every mask can take its prompt's label
    for tool in config.tools:
        assert set(tool.labels) <= set(brush.labels)


def test_sam_example_config_and_case_insensitive_tags():
    xml = """
    <View>
      <Image name="img" value="$url"/>
      <brushlabels name="tag" toName="img"><Label value="Banana"/><Label value="Orange"/></brushlabels>
      <KeyPointLabels name="tag2" toName="img" smart="true"><Label value="Banana" smart="true"/></KeyPointLabels>
      <RectangleLabels name="tag3" toName="img"><Label value="Orange"/></RectangleLabels>
    </View>"""
    config = parse_label_config(xml)
    assert config.output_for(None).from_name == "tag"
    assert config.image("img").value_key == "url"
    smart = {t.from_name: t.smart for t in config.tools}
    assert smart == {"tag2": True, "tag3": False}


def test_two_images_pick_the_brush_of_the_prompted_image():
    xml = """
    <View>
      <Image name="left" value="$a"/><Image name="right" value="$b"/>
      <BrushLabels name="bl" toName="left"><Label value="X"/></BrushLabels>
      <BrushLabels name="br" toName="right"><Label value="Y"/></BrushLabels>
    </View>"""
    config = parse_label_config(xml)
    assert config.output_for("right").from_name == "br"
    assert config.image(config.output_for("right").to_name).value_key == "b"
    with pytest.raises(BadRequestError, match="no <BrushLabels> or <PolygonLabels> attached to the image 'middle'"):
        config.output_for("middle")


def test_polygon_labels_are_chosen_by_auto_and_each_kind_can_be_asked_for():
    both = parse_label_config(
        '<View><Image name="image" value="$image"/>'
        '<BrushLabels name="mask" toName="image"><Label value="A"/></BrushLabels>'
        '<PolygonLabels name="poly" toName="image"><Label value="A"/><Label value="B"/></PolygonLabels></View>'
    )
    assert (both.output_for(None).from_name, both.output_for(None).kind) == ("poly", "polygon")
    assert both.output_for("image", "brush").from_name == "mask"
    assert both.output_for("image", "polygon").labels == ("A", "B")
    only_polygons = parse_label_config(
        '<View><Image name="image" value="$image"/>'
        '<PolygonLabels name="poly" toName="image"><Label value="A"/></PolygonLabels></View>'
    )
    assert only_polygons.output_for(None).kind == "polygon"
    with pytest.raises(BadRequestError, match="no <BrushLabels> attached to the image 'image'"):
        only_polygons.output_for(None, "brush")
    with pytest.raises(BadRequestError, match="output must be one of auto, brush, polygon"):
        only_polygons.output_for(None, "mesh")
    with pytest.raises(BadRequestError, match="label 'C' is not a label of <PolygonLabels name='poly'>"):
        only_polygons.output_for(None).label_or_first("C")


def test_multi_image_value_list():
    config = parse_label_config(
        '<View><Image name="pages" valueList="$images"/>'
        '<BrushLabels name="m" toName="pages"><Label value="A"/></BrushLabels></View>'
    )
    assert config.image("pages").value_key == "images"


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        (
            '<View><Image name="image" value="$image"/>'
            '<RectangleLabels name="r" toName="image"><Label value="A"/></RectangleLabels></View>',
            "no <BrushLabels> or <PolygonLabels>",
        ),
        ('<View><BrushLabels name="b" toName="image"><Label value="A"/></BrushLabels></View>', "no <Image"),
        (
            '<View><Image name="image" value="$image"/>'
            '<BrushLabels name="b" toName="other"><Label value="A"/></BrushLabels></View>',
            "no <BrushLabels>",
        ),
        (
            '<View><Image name="image" value="$image"/><Text name="text" value="$text"/>'
            '<PolygonLabels name="poly" toName="text"><Label value="A"/></PolygonLabels></View>',
            "<PolygonLabels name='poly'> is attached to 'text', which is not an <Image> of this config",
        ),
        ("<View><Image name='image' value='$image'>", "not well-formed"),
        ('<!DOCTYPE x [<!ENTITY a "aaaa">]><View/>', "DOCTYPE"),
        ("", "non-empty XML"),
        (None, "non-empty XML"),
        (42, "non-empty XML"),
    ],
)
def test_bad_configs_are_clear_errors(xml, message):
    with pytest.raises(BadRequestError, match=message):
        parse_label_config(xml)
