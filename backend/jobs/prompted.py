"""Masks from a task's own regions: the ``boxes`` and ``points`` modes of a pre-annotation job.

* ``boxes``: every rectangle (``RectangleLabels`` / ``Rectangle`` region) of the task's annotations (those not
  cancelled), or of its predictions of the model version ``prompt_source`` (job option), becomes one mask
  (box prompt, one mask) with the rectangle's label; a rotated rectangle prompts with its bounding box, as a
  click does (:mod:`backend.labelstudio.prompts`).
* ``points``: the keypoints of each annotation (or prediction) are grouped by label and image; each group
  becomes one mask (all its points as positive prompts, unless a point says ``is_positive: false``).

Planning (:func:`task_prompts`) keeps the regions on the output tag's image; a task with none is skipped and
counted (``no_prompts``). A chunk (:func:`prompted_regions`) first checks every prompt's label against the
output tag — a label it lacks fails the whole task, with the label named, and nothing is written for it — then
makes each prompt's mask; a prompt whose region is unusable (outside the image, of zero size, without its
image size) is rejected alone, with the reason in the task's outcome.
"""

from __future__ import annotations

import json
import re

from ..errors import BadRequestError, TaskInputError
from ..labelstudio.client import LabelStudioClient
from ..labelstudio.label_config import OutputTag
from ..labelstudio.prompts import KEYPOINT_TYPES, RECTANGLE_TYPES, label_of_output, parse_context
from ..labelstudio.results import mask_regions
from ..prompt_masks import masks_for_prompts
from ..services import Services
from .failures import classify_task_error

_REGION_INDEX = re.compile(r"context\.result\[(\d+)\]")


def written_version(model_version: str, mode: str) -> str:
    """The model version a job writes: the model's own for SegEvery, ``<version>-boxes`` / ``-points`` for
    masks made from a task's regions, so each kind is its own choice in "use predictions"."""
    return model_version if mode == "segevery" else f"{model_version}-{mode}"


def task_prompts(sources: list[dict], mode: str, to_name: str) -> list[dict]:
    """The prompts of one task: ``[{"label": str | None, "regions": [region, …]}]`` (JSON, for the chunk).

    Args:
        sources: the task's annotations or predictions (dicts with a ``result`` list of regions).
        mode: "boxes" (one prompt per rectangle) or "points" (one per label and image of each source).
        to_name: the ``<Image>`` of the output tag; regions of other images are left out.
    """
    types = RECTANGLE_TYPES if mode == "boxes" else KEYPOINT_TYPES
    prompts = []
    for source in sources:
        groups: dict[tuple, list[dict]] = {}
        for region in source.get("result") or []:
            if not isinstance(region, dict) or region.get("type") not in types:
                continue
            if region.get("to_name") != to_name:
                continue
            label = _region_label(region)
            if mode == "boxes":
                prompts.append({"label": label, "regions": [region]})
            else:
                groups.setdefault((label, region.get("item_index")), []).append(region)
        prompts += [{"label": label, "regions": regions} for (label, _), regions in groups.items()]
    return prompts


def prompted_regions(
    services: Services, ls: LabelStudioClient | None, task: dict, planned: dict, tag: OutputTag
) -> tuple[list[dict], list[dict]]:
    """The result regions of one task's prompts (``task["prompts"]``) and the prompts rejected on the way.

    Args:
        task: ``{"id", "image", "prompts"}`` of the plan.
        planned: the job record's plan (``labels``: the output tag's labels as JSON, ``tolerance``).
        tag: the output tag.
    Returns:
        (regions, rejected): ``rejected`` is ``[{"regions": [region ids], "reason"}]``.
    Raises:
        TaskInputError: a label the output tag lacks, a bad image, or every prompt rejected.
    """
    tag = OutputTag(tag.from_name, tag.to_name, tuple(json.loads(planned["labels"])), tag.kind)
    labelled = []
    for prompt in task["prompts"]:
        ids = [str(r.get("id", "?")) for r in prompt["regions"]]
        try:
            labelled.append((prompt, ids, label_of_output(tag, prompt["label"])))
        except BadRequestError as exc:
            raise TaskInputError(f"region {', '.join(ids)}: {exc.message}; nothing written for this task") from None
    value = task.get("image")
    uris = value if isinstance(value, list) else [value]
    embeddings: dict[int, object] = {}
    regions, rejected = [], []
    for prompt, ids, label in labelled:
        try:
            prompt_set = parse_context({"result": prompt["regions"]})
        except BadRequestError as exc:
            reason = _REGION_INDEX.sub(lambda m: f"region {ids[int(m.group(1))]}", exc.message)
            rejected.append({"regions": ids, "reason": reason})
            continue
        index = prompt_set.item_index or 0
        if index not in embeddings:
            embeddings[index] = _embedding(services, ls, task, uris, index)
        masks, scores = masks_for_prompts(services.model, embeddings[index], prompt_set)
        for mask, score in zip(masks, scores, strict=True):
            regions += mask_regions(
                mask,
                tag,
                label=label,
                score=score,
                tolerance=float(planned["tolerance"]),
                image_rotation=prompt_set.image_rotation,
                item_index=prompt_set.item_index,
            )
    if rejected and not regions:
        raise TaskInputError("; ".join(r["reason"] for r in rejected))
    return regions, rejected


def _embedding(services: Services, ls: LabelStudioClient | None, task: dict, uris: list, index: int):
    if not 0 <= index < len(uris) or not isinstance(uris[index], str) or not uris[index].strip():
        raise TaskInputError(f"the task has no image {index + 1} (its image field is missing or not a URL)")
    try:
        return services.embeddings.embedding_for(uris[index], int(task["id"]))[0]
    except Exception as exc:
        classified = classify_task_error(exc, "", ls)
        if classified is exc:
            raise
        raise classified from None


def _region_label(region: dict) -> str | None:
    value = region.get("value") if isinstance(region.get("value"), dict) else {}
    for key in (region.get("type"), "labels"):
        labels = value.get(key) if isinstance(key, str) else None
        if isinstance(labels, list) and labels and isinstance(labels[0], str):
            return labels[0]
    return None
