"""The one Label Studio client: its REST calls (label-studio-sdk) carry the same Authorization header as the
image downloads, a personal access token is exchanged and re-exchanged after a 401, prediction writes send
the SDK's JSON values (encoded by orjson), and errors become backend errors (backend.labelstudio.client)."""

import json
import typing

import numpy as np
import pytest
from label_studio_sdk.core.jsonable_encoder import jsonable_encoder
from label_studio_sdk.core.serialization import convert_and_respect_annotation_metadata
from label_studio_sdk.types import PredictionRequest

from backend.errors import ConfigurationError, LabelStudioUnavailable, UpstreamError
from backend.labelstudio.client import LabelStudioClient
from backend.settings import Secret, Settings
from tests.backend_support import LEGACY_TOKEN, FakeLabelStudio, closed_port, fake_jwt

PAT = fake_jwt({"token_type": "refresh", "exp": 4102444800})
PREDICTIONS = [
    {"id": 7, "model_version": "v1", "result": [{}, {}]},
    {"id": 8, "model_version": "v0", "result": []},
]


def client_for(url, key):
    return LabelStudioClient(
        Settings(label_studio_url=url, label_studio_api_key=Secret(key) if key else None)
    )


def test_rest_calls_with_a_legacy_token_send_it_as_is():
    server = FakeLabelStudio()
    try:
        server.add("/api/predictions/?task=3", json.dumps(PREDICTIONS).encode())
        assert client_for(server.url, LEGACY_TOKEN).our_predictions(3, "v1") == [(7, 2)]
        assert [r[2] for r in server.requests] == [f"Token {LEGACY_TOKEN}"]
    finally:
        server.close()


def test_rest_calls_with_a_personal_access_token_exchange_it_once_and_again_after_a_401():
    server = FakeLabelStudio(pat=PAT)
    try:
        server.add("/api/predictions/?task=3", json.dumps(PREDICTIONS).encode())
        client = client_for(server.url, PAT)
        assert client.our_predictions(3, "v1") == [(7, 2)]
        assert client.our_predictions(3, "v0") == [(8, 0)]
        calls = [r[1] for r in server.requests]
        assert calls == ["/api/token/refresh/", "/api/predictions/?task=3", "/api/predictions/?task=3"]
        assert client.auth.header() == f"Bearer {server.issued_access[0]}"  # the download path's header

        server.issued_access.clear()  # Label Studio no longer knows the access token (it expired early)
        assert client.our_predictions(3, "v1") == [(7, 2)]
        calls = [r[1] for r in server.requests[3:]]
        assert calls == ["/api/predictions/?task=3", "/api/token/refresh/", "/api/predictions/?task=3"]
        assert server.requests[-1][2] == f"Bearer {server.issued_access[0]}"
    finally:
        server.close()


def test_errors_become_backend_errors():
    server = FakeLabelStudio()
    try:
        server.add("/api/predictions/?task=4", b'{"detail": "boom"}', status=500)
        server.add("/api/predictions/?task=5", b'{"detail": "no such task"}', status=404)
        client = client_for(server.url, LEGACY_TOKEN)
        with pytest.raises(LabelStudioUnavailable, match="answered 500"):
            client.our_predictions(4, "v1")
        with pytest.raises(UpstreamError, match="answered 404") as refused:
            client.our_predictions(5, "v1")
        assert not isinstance(refused.value, LabelStudioUnavailable)  # not retried: it will not get better
    finally:
        server.close()
    down = client_for(f"http://127.0.0.1:{closed_port()}", LEGACY_TOKEN)
    with pytest.raises(LabelStudioUnavailable, match="could not be reached"):
        down.our_predictions(1, "v1")
    assert not down.reachable()
    with pytest.raises(LabelStudioUnavailable, match="could not be reached to exchange the access token"):
        client_for(down.url, PAT).our_predictions(1, "v1")  # a job retries: Label Studio may come back
    with pytest.raises(ConfigurationError, match="LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"):
        client_for(server.url, None).our_predictions(1, "v1")


def brush_prediction(seed: int, masks: int = 3) -> dict:
    """A prediction as a pre-annotation job writes it: brush regions with long RLEs."""
    rng = np.random.default_rng(seed)
    result = [
        {
            "id": f"r{seed}-{i}",
            "from_name": "tag",
            "to_name": "image",
            "type": "brushlabels",
            "original_width": 1024,
            "original_height": 768,
            "image_rotation": 0,
            "value": {"format": "rle", "rle": rng.integers(0, 256, 5000).tolist(), "brushlabels": ["Object"]},
            "score": 0.5 + i / 10,
        }
        for i in range(masks)
    ]
    return {"result": result, "score": 0.75, "model_version": "litesam-v1"}


def sdk_body(predictions) -> list:
    """The JSON values label-studio-sdk's projects.import_predictions sends for the same predictions."""
    request = [
        PredictionRequest(task=task, result=p["result"], score=p["score"], model_version=p["model_version"])
        for task, p in predictions
    ]
    return jsonable_encoder(
        convert_and_respect_annotation_metadata(
            object_=request, annotation=typing.Sequence[PredictionRequest], direction="write"
        )
    )


def test_prediction_writes_post_the_sdks_json_values_with_the_same_auth():
    server = FakeLabelStudio(pat=PAT)
    try:
        route = server.add("/api/projects/12/import/predictions", b'{"created": 2}', status=201)
        client = client_for(server.url, PAT)
        predictions = [(5, brush_prediction(0)), (6, brush_prediction(1, masks=1))]
        assert client.import_predictions(12, predictions) == 2
        (path, body), = [item for item in server.posted if item[0] == route]
        assert json.loads(body) == sdk_body(predictions)
        assert server.requests[-1][2] == f"Bearer {server.issued_access[0]}"

        server.issued_access.clear()  # a 401 to the access token: exchanged again, the same body sent again
        assert client.import_predictions(12, predictions[:1]) == 2
        writes = [body for path, body in server.posted if path == route]
        assert len(writes) == 3 and writes[1] == writes[2]
        assert json.loads(writes[2]) == sdk_body(predictions[:1])
        assert server.requests[-1][2] == f"Bearer {server.issued_access[0]}"
    finally:
        server.close()


def test_refused_prediction_writes_become_backend_errors():
    server = FakeLabelStudio()
    try:
        server.add("/api/projects/1/import/predictions", b'{"detail": "database locked"}', status=503)
        server.add("/api/projects/2/import/predictions", b'{"task": ["no task 99 in project 2"]}', status=400)
        server.add("/api/projects/3/import/predictions", b"<html>proxy</html>")
        client = client_for(server.url, LEGACY_TOKEN)
        with pytest.raises(LabelStudioUnavailable, match="answered 503 to import 1 prediction.*locked"):
            client.import_predictions(1, [(1, brush_prediction(0))])
        with pytest.raises(UpstreamError, match="answered 400 to import 1 prediction.*no task 99") as refused:
            client.import_predictions(2, [(99, brush_prediction(0))])
        assert not isinstance(refused.value, LabelStudioUnavailable)
        with pytest.raises(UpstreamError, match="with no count: <html>proxy"):
            client.import_predictions(3, [(1, brush_prediction(0))])
    finally:
        server.close()
    down = client_for(f"http://127.0.0.1:{closed_port()}", LEGACY_TOKEN)
    with pytest.raises(LabelStudioUnavailable, match="could not be reached to import 1 prediction"):
        down.import_predictions(1, [(1, brush_prediction(0))])
    with pytest.raises(ConfigurationError, match="LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"):
        client_for(server.url, None).import_predictions(1, [(1, brush_prediction(0))])
