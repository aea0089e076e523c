"""Label config parsing: BrushLabels from/to names, the Image value key, smart tools, clear errors."""

from pathlib import Path

import pytest

from backend.errors import BadRequestError
from backend.labelstudio.label_config import parse_label_config

REPO = Path(__file__).resolve().parents[1]


def test_the_repository_label_config():
    config = parse_label_config((REPO / "label_config.xml").read_text())
    brush = config.brush_for("image")
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
    assert config.brush_for(None).from_name == "tag"
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
    assert config.brush_for("right").from_name == "br"
    assert config.image(config.brush_for("right").to_name).value_key == "b"
    with pytest.raises(BadRequestError, match="no <BrushLabels> attached to the image 'middle'"):
        config.brush_for("middle")


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
            "no <BrushLabels>",
        ),
        ('<View><BrushLabels name="b" toName="image"><Label value="A"/></BrushLabels></View>', "no <Image"),
        (
            '<View><Image name="image" value="$image"/>'
            '<BrushLabels name="b" toName="other"><Label value="A"/></BrushLabels></View>',
            "no <BrushLabels>",
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
