"""The app's JSON answers, encoded by orjson.

A brush region's RLE is a list of ints, one per byte of Label Studio's packed run-length code: about 2,000 for
a compact object's mask at 1024×768, up to ~160,000 for a ragged one (a random-weight model's noise mask, hair,
foliage). Python's ``json`` encodes such a list at ~100-170 ns an int, so the noise mask's answer took ~27 ms of
a ~60 ms warm click (in process, Zen 3); orjson encodes the same answer ~10× faster. Answers mean the same
JSON as with Flask's default provider: keys in insertion order instead of sorted, non-ASCII as UTF-8 instead of
``\\u`` escapes, non-string keys as strings, numpy arrays and scalars as their values, NaN and infinities as
``null`` (Python's ``json`` writes ``NaN``, which is not JSON); Flask's own conversions (dates as HTTP dates,
dataclasses, ``__html__``) still apply to what orjson does not know. ``dumps`` with keyword arguments keeps
Python's ``json`` for them: templates' ``tojson`` passes ``sort_keys``.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response
from flask.json.provider import DefaultJSONProvider

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


class OrjsonProvider(DefaultJSONProvider):
    """Flask's JSON provider with orjson for ``dumps`` and ``response``; ``loads`` stays Python's ``json``."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if kwargs:
            return super().dumps(obj, **kwargs)
        return self._encode(obj, indent=False).decode()

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        indent = self.compact is False or (self.compact is None and self._app.debug)
        return self._app.response_class(self._encode(obj, indent=indent) + b"\n", mimetype=self.mimetype)

    def _encode(self, obj: Any, *, indent: bool) -> bytes:
        """UTF-8 JSON of ``obj``; two-space indented when ``indent`` (debug mode, as Flask's own provider)."""
        options = (_OPTIONS | orjson.OPT_INDENT_2) if indent else _OPTIONS
        return orjson.dumps(obj, default=self.default, option=options)
