"""The app's orjson answers mean what Flask's default provider's answers meant."""

from __future__ import annotations

import dataclasses
import datetime
import json

import numpy as np
from flask import Flask, jsonify
from flask.json.provider import DefaultJSONProvider

from backend.json_answers import OrjsonProvider


@dataclasses.dataclass
class Outcome:
    task: int
    state: str


def _apps() -> tuple[Flask, Flask]:
    fast, default = Flask("fast"), Flask("default")
    fast.json = OrjsonProvider(fast)
    default.json = DefaultJSONProvider(default)
    return fast, default


def test_a_brush_answer_parses_to_what_the_default_provider_gave():
    rng = np.random.default_rng(0)
    answer = {
        "results": [{"result": [{"value": {"format": "rle", "rle": rng.integers(0, 256, 50_000).tolist(),
                                           "brushlabels": ["Objekt ünd Straße"]}, "type": "brushlabels"}],
                     "score": 0.8125}],
        "model_version": "litesam_r640-0123abcd",
        "when": datetime.datetime(2026, 12, 6, 19, 0, tzinfo=datetime.timezone.utc),
        "outcome": Outcome(3, "done"),
    }  # fmt: skip
    fast, default = _apps()
    with fast.app_context():
        fast_body = jsonify(answer).get_data()
    with default.app_context():
        default_body = jsonify(answer).get_data()
    assert json.loads(fast_body) == json.loads(default_body)
    assert json.loads(fast_body)["when"] == "Sun, 06 Dec 2026 19:00:00 GMT"  # Flask's own date conversion
    assert "Straße".encode() in fast_body  # UTF-8, not \u escapes
    assert list(json.loads(fast_body)) == list(answer)  # insertion order


def test_numpy_values_non_string_keys_and_nan():
    fast, _ = _apps()
    with fast.app_context():
        body = jsonify({"area": np.int64(7), "iou": np.float32(0.5), "box": np.arange(4), 3: float("nan")})
    assert body.mimetype == "application/json"
    assert json.loads(body.get_data()) == {"area": 7, "iou": 0.5, "box": [0, 1, 2, 3], "3": None}


def test_debug_mode_indents_and_dumps_with_arguments_uses_python_json():
    fast, _ = _apps()
    fast.debug = True
    with fast.app_context():
        text = jsonify({"a": [1]}).get_data(as_text=True)
        assert text == '{\n  "a": [\n    1\n  ]\n}\n'
        assert fast.json.dumps({"b": 1, "a": 2}) == '{"b":1,"a":2}'
        assert fast.json.dumps({"b": 1, "a": 2}, sort_keys=True) == '{"a": 2, "b": 1}'
