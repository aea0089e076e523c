"""Read what the backend needs from a Label Studio labeling config (XML).

The backend answers with masks, as brush masks or as polygons, so a config must hold an *output tag*: a
``<BrushLabels>`` or a ``<PolygonLabels>`` attached to an ``<Image>``. Which one a mask goes to
(:meth:`LabelConfig.output_for`): ``output="auto"`` (the default) takes the PolygonLabels of the image when it
has one, else its BrushLabels; ``"brush"`` and ``"polygon"`` ask for one kind. Prompts come from keypoint and
rectangle tools (``<KeyPointLabels smart="true">``, ``<RectangleLabels smart="true">``) attached to the same
image; their label values must also be labels of the output tag, because the mask takes the label of the
prompt.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ..errors import BadRequestError

#: Control tags whose regions are prompts, lower-case tag name → the region ``type`` Label Studio sends.
PROMPT_TAGS = {
    "keypointlabels": "keypointlabels",
    "keypoint": "keypoint",
    "rectanglelabels": "rectanglelabels",
    "rectangle": "rectangle",
}


#: Output tags, lower-case tag name → the kind of answer (``output`` values other than "auto").
OUTPUT_TAGS = {"brushlabels": "brush", "polygonlabels": "polygon"}
OUTPUTS = ("auto", "brush", "polygon")


@dataclass(frozen=True)
class OutputTag:
    """A ``<BrushLabels>`` or ``<PolygonLabels>`` ``name=from_name toName=to_name`` with its label values in
    config order; ``kind`` is "brush" or "polygon"."""

    from_name: str
    to_name: str
    labels: tuple[str, ...]
    kind: str

    @property
    def tag(self) -> str:
        return "<BrushLabels>" if self.kind == "brush" else "<PolygonLabels>"

    def label_or_first(self, label: str | None) -> str:
        """The label of masks no prompt labelled (pre-annotation): ``label``, by default the tag's first.

        Raises:
            BadRequestError: ``label`` is not one of the tag's labels, or the tag has none.
        """
        chosen = label or (self.labels[0] if self.labels else None)
        if chosen is None or chosen not in self.labels:
            raise BadRequestError(
                f"label {chosen!r} is not a label of {self.tag[:-1]} name={self.from_name!r}>; "
                f"its labels: {', '.join(self.labels) or '(none)'}"
            )
        return chosen


@dataclass(frozen=True)
class ImageTag:
    """An ``<Image name=name value="$value_key">`` (or ``valueList="$value_key"`` for several images per task);
    ``value_key`` is the task data field with the URL (or the list of URLs)."""

    name: str
    value_key: str


@dataclass(frozen=True)
class PromptTool:
    """A keypoint or rectangle control; ``smart`` when it sends interactive prompts (smart / smartOnly)."""

    from_name: str
    to_name: str
    region_type: str
    labels: tuple[str, ...]
    smart: bool


@dataclass(frozen=True)
class LabelConfig:
    """The parts of a labeling config the backend uses."""

    outputs: tuple[OutputTag, ...]
    images: tuple[ImageTag, ...]
    tools: tuple[PromptTool, ...]

    def output_for(self, to_name: str | None, output: str = "auto") -> OutputTag:
        """The output tag of image ``to_name`` (None: the image of the first output tag) for ``output``.

        Raises:
            BadRequestError: ``output`` is unknown, or no output tag of that kind is attached to the image.
        """
        if output not in OUTPUTS:
            raise BadRequestError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        image = to_name if to_name is not None else self.outputs[0].to_name
        mine = [tag for tag in self.outputs if tag.to_name == image]
        for kind in ("polygon", "brush") if output == "auto" else (output,):
            for tag in mine:
                if tag.kind == kind:
                    return tag
        attached = ", ".join(f"{t.tag[:-1]} name={t.from_name!r}> → {t.to_name!r}" for t in self.outputs)
        wanted = "<BrushLabels> or <PolygonLabels>" if output == "auto" else OutputTag("", "", (), output).tag
        raise BadRequestError(
            f"the label config has no {wanted} attached to the image {image!r} (output tags: {attached})"
        )

    def image(self, name: str) -> ImageTag:
        """The ``<Image>`` tag called ``name``."""
        for image in self.images:
            if image.name == name:
                return image
        raise BadRequestError(
            f"the label config has no <Image name={name!r}> (images: {', '.join(i.name for i in self.images)})"
        )


def parse_label_config(xml: object) -> LabelConfig:
    """Parse a labeling config; results are cached per config text (configs are re-sent on every request).

    Raises:
        BadRequestError: not a string, not well-formed XML, a DOCTYPE/entity declaration, no ``<Image>``,
            or no ``<BrushLabels>`` / ``<PolygonLabels>`` attached to an ``<Image>`` (the message names the
            output tags attached to something else).
    """
    if not isinstance(xml, str) or not xml.strip():
        raise BadRequestError("label_config must be the project's labeling config, a non-empty XML string")
    return _parse(xml)


@functools.lru_cache(maxsize=64)
def _parse(xml: str) -> LabelConfig:
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        raise BadRequestError("label config must not contain DOCTYPE or ENTITY declarations")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise BadRequestError(f"label config is not well-formed XML: {exc}") from None

    images: list[ImageTag] = []
    outputs: list[OutputTag] = []
    tools: list[PromptTool] = []
    for element in root.iter():
        tag = element.tag.lower() if isinstance(element.tag, str) else ""
        name = element.get("name")
        if tag == "image" and name:
            value = element.get("value") or element.get("valueList") or ""
            if value.startswith("$") and len(value) > 1:
                images.append(ImageTag(name=name, value_key=value[1:]))
        elif tag in OUTPUT_TAGS and name:
            outputs.append(OutputTag(name, element.get("toName", ""), _labels(element), OUTPUT_TAGS[tag]))
        elif tag in PROMPT_TAGS and name:
            smart = _true(element.get("smart")) or _true(element.get("smartOnly"))
            tools.append(
                PromptTool(name, element.get("toName", ""), PROMPT_TAGS[tag], _labels(element), smart)
            )

    if not images:
        raise BadRequestError('label config has no <Image name="…" value="$field"> tag')
    image_names = {image.name for image in images}
    attached = [tag for tag in outputs if tag.to_name in image_names]
    if not attached:
        elsewhere = "".join(
            f"; {tag.tag[:-1]} name={tag.from_name!r}> is attached to {tag.to_name!r}, which is not an "
            f"<Image> of this config (images: {', '.join(sorted(image_names))})"
            for tag in outputs
        )
        raise BadRequestError(
            "label config has no <BrushLabels> or <PolygonLabels> tag attached to an <Image>; this backend "
            'answers with masks: add e.g. <BrushLabels name="mask" toName="image"><Label value="Object"/>'
            f"</BrushLabels>{elsewhere}"
        )
    return LabelConfig(tuple(attached), tuple(images), tuple(tools))


def _labels(element: ET.Element) -> tuple[str, ...]:
    return tuple(
        label.get("value")
        for label in element.iter()
        if isinstance(label.tag, str) and label.tag.lower() == "label" and label.get("value") is not None
    )


def _true(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "true"
