"""A pre-annotation job's options: what ``POST /jobs {"options": …}``, ``preannotate`` flags and
``LITESAM_JOB_DEFAULTS`` may set, validated once into a :class:`JobOptions`."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from rq import Retry

from litesam.everything import SegEveryConfig
from litesam.modeling.lite_sam import LiteSAM

from ..errors import BadRequestError
from ..labelstudio.label_config import OUTPUTS

#: The RQ queue of parent and chunk jobs (workers listen on it; ``JobOptions.queue`` can name another).
QUEUE_NAME = "litesam-preannotate"
#: Job modes (:mod:`backend.jobs.prompted`): SegEvery (no prompts), a mask per rectangle, a mask per group of
#: keypoints.
MODES = ("segevery", "boxes", "points")


@dataclass(frozen=True)
class JobOptions:
    """Per-job settings, JSON in and out (``POST /jobs {"options": {...}}``, ``preannotate`` flags).

    Attributes:
        label: the label of every SegEvery mask (SegEvery's masks have no class); default the first label of
            the output tag.
        output: "brush", "polygon" or "auto" (polygons when the image has a ``<PolygonLabels>``); None: the
            backend's ``LITESAM_OUTPUT``.
        polygon_tolerance: polygon simplification tolerance in pixels; None: ``LITESAM_POLYGON_TOLERANCE``.
        prompt_source: jobs of mode ``boxes`` / ``points`` take the regions of the predictions of this model
            version; None: of the annotations (:mod:`backend.jobs.prompted`).
        chunk_size: tasks per chunk job (the unit of parallelism and of retries).
        write_batch: predictions per ``import_predictions`` call (a batch is also cut at ~16 MB of RLE).
        max_masks: most regions written per image (SegEvery ranks them best first).
        pred_iou_thresh, stability_score_thresh: SegEvery's mask filters; None: the served checkpoint's
            calibrated ones (``litesam calibrate``), else SAM's automatic-mask-generator values.
        box_nms_thresh, points_per_batch: SegEvery's box NMS and batch size (defaults: SegEvery's own).
        points_per_side: n of SegEvery's n×n point grid, the prompts of engines without an AutoPPN head
            (official SAM-family checkpoints; SAM's default 32 → 1,024 prompts); AutoPPN variants ignore it.
        proposal_score_thresh: AutoPPN's minimum proposal confidence; None: the served checkpoint's
            calibrated one, else the variant's default (0.3).
        job_timeout: seconds a chunk job may run (the parent gets the same) before RQ stops it.
        result_ttl, failure_ttl: seconds RQ keeps finished / failed job data.
        retries: how often a failed chunk or parent is retried.
        retry_intervals: backoff in seconds before each retry (the last value repeats).
        queue: the RQ queue the jobs go to.
    """

    label: str | None = None
    output: str | None = None
    polygon_tolerance: float | None = None
    prompt_source: str | None = None
    chunk_size: int = 8
    write_batch: int = 8
    max_masks: int = 100
    pred_iou_thresh: float | None = None
    stability_score_thresh: float | None = None
    box_nms_thresh: float = SegEveryConfig.box_nms_thresh
    points_per_batch: int = SegEveryConfig.points_per_batch
    points_per_side: int = SegEveryConfig.points_per_side
    proposal_score_thresh: float | None = None
    job_timeout: int = 1800
    result_ttl: int = 7 * 24 * 3600
    failure_ttl: int = 7 * 24 * 3600
    retries: int = 3
    retry_intervals: tuple[int, ...] = (10, 60, 300)
    queue: str = QUEUE_NAME

    @classmethod
    def from_json(cls, raw: object, defaults: str = "{}") -> JobOptions:
        """Options from a JSON object on top of ``defaults`` (a JSON object's text, e.g.
        ``Settings.job_defaults``); unknown keys and bad values raise :class:`BadRequestError`."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise BadRequestError(f"'options' must be a JSON object, got {type(raw).__name__}")
        raw = {**json.loads(defaults), **raw}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise BadRequestError(
                f"unknown job option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values = {}
        for name, value in raw.items():
            values[name] = _option_value(name, value)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["retry_intervals"] = list(self.retry_intervals)
        return data

    def retry(self) -> Retry:
        return Retry(max=self.retries, interval=list(self.retry_intervals))

    def segevery_config(self, model: LiteSAM) -> SegEveryConfig:
        """SegEvery settings for the served model: our filters and grid on top of its defaults
        (:meth:`SegEveryConfig.for_model`: a None filter is the one calibrated for its weights, else SAM's;
        the variant's AutoPPN decoding); the prompt mode stays "auto" (AutoPPN when the model has a
        head, else the grid)."""
        return SegEveryConfig.for_model(
            model,
            pred_iou_thresh=self.pred_iou_thresh,
            stability_score_thresh=self.stability_score_thresh,
            proposal_score_thresh=self.proposal_score_thresh,
            points_per_batch=self.points_per_batch,
            points_per_side=self.points_per_side,
            box_nms_thresh=self.box_nms_thresh,
            max_masks=self.max_masks,
        )

    @classmethod
    def from_record(cls, text: str) -> JobOptions:
        """The options stored in a job record (the JSON text :meth:`to_json` wrote, checked when the job
        was created)."""
        return cls.from_json(json.loads(text))


#: Options whose null means "the served model's default" (its calibrated filters, its variant's AutoPPN threshold).
_VARIANT_DEFAULTS = ("pred_iou_thresh", "stability_score_thresh", "proposal_score_thresh")
_UNIT_FLOATS = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "proposal_score_thresh")
_POSITIVE_INTS = (
    "chunk_size",
    "write_batch",
    "max_masks",
    "points_per_batch",
    "points_per_side",
    "job_timeout",
    "result_ttl",
    "failure_ttl",
    "retries",
)


def _option_value(name: str, value: object) -> object:
    if name == "label":
        if value is not None and (not isinstance(value, str) or not value):
            raise BadRequestError("option 'label' must be a non-empty string (a BrushLabels label) or null")
        return value
    if name == "output":
        if value is not None and value not in OUTPUTS:
            raise BadRequestError(f"option 'output' must be one of {', '.join(OUTPUTS)} or null, got {value!r}")
        return value
    if name == "polygon_tolerance":
        if value is not None and (not is_number(value) or value < 0):
            raise BadRequestError(f"option 'polygon_tolerance' must be a number of pixels ≥ 0, got {value!r}")
        return None if value is None else float(value)
    if name == "prompt_source":
        if value is not None and (not isinstance(value, str) or not value or len(value) > 200):
            raise BadRequestError("option 'prompt_source' must be a model version (1 to 200 characters) or null")
        return value
    if name == "queue":
        if not isinstance(value, str) or not value or len(value) > 100:
            raise BadRequestError("option 'queue' must be a queue name (1 to 100 characters)")
        return value
    if name == "retry_intervals":
        if not isinstance(value, list) or not value or not all(is_int(v) and v >= 0 for v in value):
            raise BadRequestError(
                "option 'retry_intervals' must be a non-empty list of seconds (integers ≥ 0)"
            )
        return tuple(value)
    if name in _UNIT_FLOATS:
        if value is None and name in _VARIANT_DEFAULTS:
            return None
        if not is_number(value) or not 0.0 <= value <= 1.0:
            raise BadRequestError(f"option {name!r} must be a number from 0 to 1, got {value!r}")
        return float(value)
    if name in _POSITIVE_INTS:
        if not is_int(value) or value < 1:
            raise BadRequestError(f"option {name!r} must be a positive integer, got {value!r}")
        return value
    raise BadRequestError(f"unknown job option {name!r}")  # from_json checked the names already


def checked_target(project: object, task_ids: object, mode: object) -> list[int] | None:
    """Check what a job is asked to work on; returns the sorted, de-duplicated task ids (None: all tasks).

    Raises:
        BadRequestError: a malformed project id or task id list, or an unknown mode.
    """
    if mode not in MODES:
        raise BadRequestError(f"'mode' must be one of {', '.join(MODES)}, got {mode!r}")
    if not is_int(project) or project < 1:
        raise BadRequestError(f"'project' must be a positive integer project id, got {project!r}")
    if task_ids is None:
        return None
    if not isinstance(task_ids, (list, tuple)) or not task_ids or not all(is_int(t) and t > 0 for t in task_ids):
        raise BadRequestError("'tasks' must be a non-empty list of positive integer task ids")
    return sorted(set(task_ids))


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)
