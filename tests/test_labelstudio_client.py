"""The one Label Studio client: its REST calls (label-studio-sdk) carry the same Authorization header as the
image downloads, a personal access token is exchanged and re-exchanged after a 401, and errors become backend
errors (backend.labelstudio.client)."""

import json

import pytest

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
