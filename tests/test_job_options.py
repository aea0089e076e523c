"""A pre-annotation job's options (backend.jobs.options): JSON in and out, the refused values, and the SegEvery
settings they make for a served model. No Redis: options are plain data until a job is started.
"""

from __future__ import annotations

import json

import pytest

from backend.errors import BadRequestError
from backend.jobs.options import JobOptions
from litesam.build import build_model
from litesam.everything import SegEvery
from litesam.variants import VARIANTS
from tests.jobs_support import OPEN_FILTERS


def test_options_round_trip_through_json_and_refuse_bad_values():
    options = JobOptions.from_json(
        {
            "label": "Person",
            "chunk_size": 3,
            "retry_intervals": [1, 5],
            "pred_iou_thresh": 0,
            "proposal_score_thresh": None,
        }
    )
    assert options.chunk_size == 3 and options.retry_intervals == (1, 5) and options.pred_iou_thresh == 0.0
    assert JobOptions.from_json(json.loads(json.dumps(options.to_json()))) == options
    assert JobOptions.from_json(None) == JobOptions()
    for bad, fragment in [
        ({"chunk": 3}, "unknown job option(s) chunk"),
        ({"chunk_size": 0}, "'chunk_size' must be a positive integer"),
        ({"chunk_size": True}, "'chunk_size' must be a positive integer"),
        ({"pred_iou_thresh": 1.5}, "from 0 to 1"),
        ({"pred_iou_thresh": float("nan")}, "from 0 to 1"),
        ({"retry_intervals": []}, "non-empty list"),
        ({"label": ""}, "'label' must be a non-empty string"),
        ([1], "must be a JSON object"),
    ]:
        with pytest.raises(BadRequestError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            JobOptions.from_json(bad)


def test_segevery_config_opens_filters_on_top_of_the_model_defaults():
    tiny = build_model("litesam_tiny")
    config = JobOptions.from_json(OPEN_FILTERS).segevery_config(tiny)
    assert config.pred_iou_thresh == 0.0 and config.stability_score_thresh == 0.0
    assert config.proposals.score_threshold == 0.0
    for variant in ("litesam_tiny", "litesam_r640", "sam_vit_tiny"):  # null filters, none calibrated: SAM's
        default = JobOptions().segevery_config(build_model(variant))
        assert (default.pred_iou_thresh, default.stability_score_thresh) == (0.88, 0.95)
        assert default.proposals == VARIANTS[variant].proposals and default.proposals.score_threshold > 0
    tiny.segevery_filters = {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.8}  # as a checkpoint carries
    calibrated = JobOptions().segevery_config(tiny)
    assert (calibrated.pred_iou_thresh, calibrated.stability_score_thresh) == (0.7, 0.8)
    explicit = JobOptions.from_json({"pred_iou_thresh": None, "stability_score_thresh": 0.9}).segevery_config(tiny)
    assert (explicit.pred_iou_thresh, explicit.stability_score_thresh) == (0.7, 0.9)


def test_points_per_side_sets_the_grid_of_engines_and_autoppn_variants_ignore_it():
    options = JobOptions.from_json({"points_per_side": 4})
    assert JobOptions().points_per_side == 32  # SAM's automatic-mask-generator default
    engine_model = build_model("sam_vit_tiny")
    engine = SegEvery(engine_model, options.segevery_config(engine_model))
    assert (engine.config.prompt_mode, engine.config.points_per_side) == ("grid", 4)
    lite_model = build_model("litesam_tiny")
    lite = SegEvery(lite_model, options.segevery_config(lite_model))
    assert lite.config.prompt_mode == "autoppn"
    for bad in (0, 2.5, "4"):
        with pytest.raises(BadRequestError, match="'points_per_side' must be a positive integer"):
            JobOptions.from_json({"points_per_side": bad})
