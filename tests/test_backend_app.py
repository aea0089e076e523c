"""The Flask app through its test client, with a tiny random-weight checkpoint, a real Redis (own db, flushed)
and a real HTTP server playing Label Studio: every route, every prompt shape, the embedding cache, bad input,
basic auth, and secrets kept out of responses and logs."""

import hashlib
import io
import json
import logging
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from label_studio_ml.model import LabelStudioMLBase

from backend.app import create_app
from backend.logs import RedactingFilter, configure_logging
from backend.model import LiteSamBackend
from backend.services import build_services
from backend.settings import Secret, Settings
from backend.store import embedding_key
from litesam.predictor import LiteSamPredictor
from tests.backend_support import (
    FakeLabelStudio,
    closed_port,
    decode_brush,
    exif_rotated_jpeg,
    keypoint,
    png_bytes,
    rectangle,
    settings_for,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = (REPO / "label_config.xml").read_text()
ODD_PNG = png_bytes(333, 517, seed=1)
ROTATED_JPEG = exif_rotated_jpeg(96, 64)  # stored 96×64, shown 64×96
BASIC_PASS = "basic-pass-s3cret"


@pytest.fixture
def ls():
    server = FakeLabelStudio()
    server.add("/data/upload/1/odd.png", ODD_PNG)
    server.add("/data/upload/1/rotated.jpg", ROTATED_JPEG)
    server.add("/data/upload/1/corrupt.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    server.add("/data/upload/1/tiny.png", png_bytes(4, 4))
    yield server
    server.close()


def make_settings(ls, checkpoint, **overrides):
    return settings_for(checkpoint, ls.url, **overrides)


class Backend:
    """A test client plus the services behind it, counting image encodings."""

    def __init__(self, settings):
        self.services = build_services(settings)
        self.encodings = 0
        encode = self.services.model.encode

        def counting_encode(image):
            self.encodings += 1
            return encode(image)

        self.services.model.encode = counting_encode
        self.app = create_app(settings, services=self.services)
        self.client = self.app.test_client()

    def predict(self, uri, regions, task_id=1, label_config=CONFIG, **kwargs):
        body = {
            "tasks": [
                {"id": task_id, "data": {"image": uri}, "annotations": [], "predictions": [], "drafts": []}
            ],
            "project": "1.1764000000",
            "label_config": label_config,
            "params": {"login": None, "password": None, "context": {"result": regions} if regions else None},
        }
        return self.client.post("/predict", json=body, **kwargs)


@pytest.fixture
def backend(ls, checkpoint, redis_db):
    return Backend(make_settings(ls, checkpoint))


def regions_of(response):
    assert response.status_code == 200, response.get_json()
    results = response.get_json()["results"]
    assert len(results) == 1
    return results[0]["result"]


def assert_error(response, status, fragment):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and fragment in body["error"], body
    assert "Traceback" not in response.get_data(as_text=True)


# -- fast routes -------------------------------------------------------------------------------------------


def test_health_and_setup_answer_without_loading_the_model(backend, checkpoint):
    version = f"litesam_tiny-{hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:12]}"
    health = backend.client.get("/health")
    assert health.status_code == 200
    assert health.get_json() == {
        "status": "UP",
        "model_class": "LiteSamBackend",
        "model_loaded": False,
        "model_version": version,
        "variant": "litesam_tiny",
        "engine": "Lite-SAM",
        "redis": "ok",
    }
    assert backend.client.get("/").get_json()["status"] == "UP"
    setup = backend.client.post(
        "/setup",
        json={
            "project": "3.1764000000",
            "schema": CONFIG,
            "hostname": "http://localhost:8080",
            "access_token": "legacy-from-ls",
            "extra_params": {},
        },
    )
    assert setup.status_code == 200 and setup.get_json() == {"model_version": version}
    assert not backend.services.model.loaded


def test_setup_refuses_a_config_without_brush_labels(backend):
    response = backend.client.post(
        "/setup", json={"project": "3.1", "schema": '<View><Image name="i" value="$i"/></View>'}
    )
    assert_error(response, 400, "no <BrushLabels>")


def test_versions_get_and_post(backend):
    version = backend.services.model.model_version
    for response in (
        backend.client.get("/versions"),
        backend.client.post("/versions", json={"project": "1.2"}),
    ):
        assert response.status_code == 200
        assert response.get_json() == {"versions": [version], "model_version": version}


def test_webhook_answers_at_once_without_training(backend):
    started = time.perf_counter()
    response = backend.client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert response.status_code == 200 and response.get_json()["status"] == "ok"
    assert time.perf_counter() - started < 0.5 and not backend.services.model.loaded


class EndlessBody(io.RawIOBase):
    """A request body that never ends (a chunked upload that goes on forever), counting the bytes read."""

    def __init__(self, byte=b" "):
        self.byte = byte
        self.read_bytes = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        buffer[:] = self.byte * len(buffer)
        self.read_bytes += len(buffer)
        return len(buffer)


def post_chunked(client, path, stream):
    """POST a chunked body (no Content-Length) as a server that dechunks (gunicorn, werkzeug) hands it on."""
    from werkzeug.test import Client, EnvironBuilder
    from werkzeug.wrappers import Request

    environ = EnvironBuilder(
        path=path, method="POST", content_type="application/json", headers={"Transfer-Encoding": "chunked"}
    ).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"wsgi.input": stream, "wsgi.input_terminated": True})
    return Client(client.application, client.application.response_class).open(Request(environ))


def test_oversized_bodies_are_413_before_parsing(backend):
    backend.app.config["MAX_CONTENT_LENGTH"] = 1000
    big = json.dumps({"tasks": [], "padding": "x" * 2000})
    assert_error(
        backend.client.post("/predict", data=big, content_type="application/json"), 413, "limit of 1000 bytes"
    )
    endless = EndlessBody()
    assert_error(post_chunked(backend.client, "/predict", endless), 413, "larger than the backend's limit")
    assert endless.read_bytes <= 1001
    small = io.BytesIO(json.dumps({"tasks": []}).encode())
    response = post_chunked(backend.client, "/predict", small)
    assert response.status_code == 200 and response.get_json() == {"results": []}


def test_oversized_chunked_body_over_a_real_socket_is_413(backend):
    from werkzeug.serving import make_server

    backend.app.config["MAX_CONTENT_LENGTH"] = 2000
    server = make_server("127.0.0.1", 0, backend.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        chunk = b"x" * 1000
        request = (
            b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5))
            + b"0\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as sock:
            sock.sendall(request)
            answer = b""
            while data := sock.recv(65536):
                answer += data
    finally:
        server.shutdown()
        thread.join(5)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"413", answer[:200]
    assert "limit of 2000 bytes" in json.loads(payload)["error"]


def test_webhook_never_parses_or_reads_a_big_body(backend):
    import backend.app as app_module

    endless = EndlessBody(b"{")
    response = post_chunked(backend.client, "/webhook", endless)
    assert response.status_code == 200 and response.get_json()["status"] == "ok"
    assert endless.read_bytes <= app_module.WEBHOOK_READ_BYTES
    declared = backend.client.post(
        "/webhook", data=b"{" * (app_module.WEBHOOK_READ_BYTES + 1), content_type="application/json"
    )
    assert declared.status_code == 200 and declared.get_json()["status"] == "ok"


def test_unknown_route_and_method_are_json(backend):
    assert_error(backend.client.get("/nope"), 404, "")
    assert_error(backend.client.get("/predict"), 405, "")


def test_the_adapter_is_a_label_studio_ml_base(backend):
    assert isinstance(LiteSamBackend(backend.services, CONFIG), LabelStudioMLBase)


# -- predictions -------------------------------------------------------------------------------------------


def test_keypoint_click_gives_one_brush_region_at_natural_size(backend):
    response = backend.predict("/data/upload/1/odd.png", [keypoint(40, 60, 333, 517)])
    body = response.get_json()
    assert body["model_version"] == backend.services.model.model_version
    prediction = body["results"][0]
    assert prediction["model_version"] == body["model_version"]
    (region,) = prediction["result"]
    assert region["type"] == "brushlabels" and region["from_name"] == "mask" and region["to_name"] == "image"
    assert (region["original_width"], region["original_height"]) == (333, 517)
    assert region["value"]["format"] == "rle" and region["value"]["brushlabels"] == ["Object"]
    assert all(isinstance(v, int) and 0 <= v <= 255 for v in region["value"]["rle"])
    mask = decode_brush(region)
    assert mask.shape == (517, 333) and set(np.unique(mask)) <= {0, 255}
    assert 0.0 <= region["score"] and prediction["score"] == pytest.approx(region["score"])


def test_the_mask_is_the_predictors_best_mask(backend):
    """The served mask equals a direct predictor call on the stored embedding (best of 3 by IoU)."""
    region = regions_of(backend.predict("/data/upload/1/odd.png", [keypoint(25, 75, 333, 517)]))[0]
    version = backend.services.model.model_version
    stored = backend.services.store.get(version, hashlib.sha256(ODD_PNG).hexdigest())
    predictor = LiteSamPredictor(backend.services.model.model())
    predictor.set_embedding(stored)
    masks, scores, _ = predictor.predict(
        np.array([[0.25 * 333, 0.75 * 517]]), np.array([1]), multimask_output=True
    )
    best = int(np.argmax(scores))
    np.testing.assert_array_equal(decode_brush(region) == 255, masks[best])
    assert region["score"] == pytest.approx(float(scores[best]), abs=1e-6)


def test_positive_and_negative_keypoints(backend):
    regions = regions_of(
        backend.predict(
            "/data/upload/1/odd.png",
            [
                keypoint(30, 30, 333, 517, label="Person"),
                keypoint(60, 60, 333, 517, label="Person", positive=False),
                keypoint(50, 40, 333, 517, label="Person", positive=None),
            ],
        )
    )
    assert len(regions) == 1 and regions[0]["value"]["brushlabels"] == ["Person"]
    assert decode_brush(regions[0]).shape == (517, 333)


def test_several_rectangles_give_one_region_each(backend):
    regions = regions_of(
        backend.predict(
            "/data/upload/1/odd.png",
            [
                rectangle(10, 10, 30, 20, 333, 517, label="Vehicle"),
                rectangle(50, 50, 40, 40, 333, 517, label="Vehicle", rotation=30),
            ],
        )
    )
    assert len(regions) == 2 and len({r["id"] for r in regions}) == 2
    for region in regions:
        assert region["value"]["brushlabels"] == ["Vehicle"] and decode_brush(region).shape == (517, 333)


def test_box_and_points_together(backend):
    regions = regions_of(
        backend.predict(
            "/data/upload/1/odd.png",
            [
                rectangle(10, 10, 60, 60, 333, 517),
                keypoint(30, 30, 333, 517, positive=False),
            ],
        )
    )
    assert len(regions) == 1


def test_exif_rotated_jpeg_masks_have_the_shown_size(backend):
    regions = regions_of(backend.predict("/data/upload/1/rotated.jpg", [keypoint(50, 20, 64, 96)]))
    assert (regions[0]["original_width"], regions[0]["original_height"]) == (64, 96)
    assert decode_brush(regions[0]).shape == (96, 64)


def test_multi_image_task_uses_the_item_index(backend):
    config = (
        '<View><Image name="image" valueList="$images"/>'
        '<BrushLabels name="mask" toName="image"><Label value="Object"/></BrushLabels></View>'
    )
    region = {**keypoint(50, 20, 64, 96), "item_index": 1}
    body = {
        "tasks": [{"id": 1, "data": {"images": ["/data/upload/1/odd.png", "/data/upload/1/rotated.jpg"]}}],
        "label_config": config,
        "params": {"context": {"result": [region]}},
    }
    (region_out,) = regions_of(backend.client.post("/predict", json=body))
    assert region_out["item_index"] == 1 and decode_brush(region_out).shape == (96, 64)
    body["params"]["context"]["result"][0]["item_index"] = 2
    assert_error(backend.client.post("/predict", json=body), 400, "item_index 2 is outside")


def test_slightly_outside_prompts_are_clipped(backend):
    regions = regions_of(backend.predict("/data/upload/1/odd.png", [keypoint(100.8, -0.5, 333, 517)]))
    assert decode_brush(regions[0]).shape == (517, 333)


def test_prompts_for_another_size_are_scaled_and_the_mask_has_the_prompted_size(backend, caplog):
    with caplog.at_level(logging.WARNING, logger="backend.model"):
        regions = regions_of(backend.predict("/data/upload/1/odd.png", [keypoint(50, 50, 666, 1034)]))
    assert decode_brush(regions[0]).shape == (1034, 666)
    assert "scaling prompts and masks" in caplog.text


def downloads(ls, path):
    return len([request for request in ls.requests if request[1] == path])


def test_second_click_on_the_same_image_uses_the_cached_embedding(backend, redis_db, ls, checkpoint):
    backend.predict("/data/upload/1/odd.png", [keypoint(40, 60, 333, 517)])
    backend.predict(
        "/data/upload/1/odd.png", [keypoint(40, 60, 333, 517), keypoint(10, 10, 333, 517, positive=False)]
    )
    assert backend.encodings == 1
    assert downloads(ls, "/data/upload/1/odd.png") == 1  # uploads never change: no second download
    key = embedding_key(backend.services.model.model_version, hashlib.sha256(ODD_PNG).hexdigest())
    assert redis_db.exists(key) and 0 < redis_db.ttl(key) <= backend.services.settings.embedding_ttl
    other_process = Backend(make_settings(ls, checkpoint))
    regions_of(other_process.predict("/data/upload/1/odd.png", [keypoint(40, 60, 333, 517)]))
    assert other_process.encodings == 0


def test_images_that_may_change_are_downloaded_on_every_click(backend, ls):
    path = ls.add("/data/local-files/?d=imgs/odd.png", ODD_PNG)
    for _ in range(2):
        regions_of(backend.predict(path, [keypoint(40, 60, 333, 517)]))
    assert downloads(ls, path) == 2 and backend.encodings == 1  # same bytes: same embedding


def test_a_changed_image_behind_the_same_url_gets_a_new_embedding(backend, ls):
    path = ls.add("/data/local-files/?d=imgs/changing.png", ODD_PNG)
    first = regions_of(backend.predict(path, [keypoint(40, 60, 333, 517)]))
    ls.add(path, png_bytes(200, 100, seed=9))
    second = regions_of(backend.predict(path, [keypoint(40, 60, 200, 100)]))
    assert backend.encodings == 2
    assert decode_brush(first[0]).shape == (517, 333) and decode_brush(second[0]).shape == (100, 200)


def test_concurrent_clicks_on_a_new_image_encode_it_once(backend):
    responses = []
    barrier = threading.Barrier(4)

    def click(i):
        client = backend.app.test_client()
        barrier.wait()
        body = {
            "tasks": [{"id": 1, "data": {"image": "/data/upload/1/odd.png"}}],
            "label_config": CONFIG,
            "params": {"context": {"result": [keypoint(10 + 20 * i, 50, 333, 517)]}},
        }
        responses.append(client.post("/predict", json=body))

    threads = [threading.Thread(target=click, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [resp.status_code for resp in responses] == [200] * 4
    assert backend.encodings == 1


def test_batch_call_without_context_returns_no_results(backend, ls):
    response = backend.predict("/data/upload/1/odd.png", None)
    assert response.status_code == 200 and response.get_json() == {"results": []}
    assert not ls.requests and not backend.services.model.loaded


def test_batch_calls_go_to_the_batch_handler_when_one_is_given(ls, checkpoint, redis_db):
    calls = []

    def batch_predict(services, project, tasks, label_config):
        calls.append((project, [t["id"] for t in tasks], label_config == CONFIG))
        return [{"result": [], "model_version": "x"} for _ in tasks] if project == "1.1764000000" else []

    settings = make_settings(ls, checkpoint)
    app = create_app(settings, services=build_services(settings), batch_predict=batch_predict)
    client = app.test_client()
    body = {
        "tasks": [{"id": 5, "data": {}}, {"id": 6, "data": {}}],
        "project": "1.1764000000",
        "label_config": CONFIG,
        "params": {"context": None},
    }
    answer = client.post("/predict", json=body).get_json()
    assert len(answer["results"]) == 2 and calls == [("1.1764000000", [5, 6], True)]
    assert client.post("/predict", json={**body, "project": "2.1"}).get_json() == {"results": []}
    interactive = {
        **body,
        "tasks": [{"id": 5, "data": {"image": "/data/upload/1/odd.png"}}],
        "params": {"context": {"result": [keypoint(40, 60, 333, 517)]}},
    }
    assert client.post("/predict", json=interactive).status_code == 200 and len(calls) == 2


def test_redis_unavailable_still_answers_and_health_says_so(ls, checkpoint, caplog):
    backend = Backend(make_settings(ls, checkpoint, redis_url=Secret(f"redis://127.0.0.1:{closed_port()}/0")))
    with caplog.at_level(logging.WARNING, logger="backend.store"):
        regions_of(backend.predict("/data/upload/1/odd.png", [keypoint(40, 60, 333, 517)]))
        regions_of(backend.predict("/data/upload/1/odd.png", [keypoint(40, 60, 333, 517)]))
    assert backend.encodings == 1  # the process's own LRU still helps
    assert sum("Redis is unreachable" in rec.getMessage() for rec in caplog.records) == 1
    assert backend.client.get("/health").get_json()["redis"] == "unavailable"


# -- bad input ---------------------------------------------------------------------------------------------


def test_malformed_json_and_envelopes(backend):
    assert_error(
        backend.client.post("/predict", data="{not json", content_type="application/json"),
        400,
        "not valid JSON",
    )
    assert_error(
        backend.client.post("/predict", data="[1, 2]", content_type="application/json"),
        400,
        "must be a JSON object",
    )
    assert_error(backend.client.post("/predict", json={"label_config": CONFIG}), 400, "'tasks'")
    assert_error(backend.client.post("/predict", json={"tasks": [], "params": "x"}), 400, "'params'")
    assert_error(
        backend.client.post("/setup", data=b"\xff\xfe", content_type="application/json"), 400, "JSON"
    )


def test_nan_coordinates_are_400(backend):
    body = json.dumps(
        {
            "tasks": [{"id": 1, "data": {"image": "/data/upload/1/odd.png"}}],
            "label_config": CONFIG,
            "params": {"context": {"result": [keypoint(40, 60, 333, 517)]}},
        }
    )
    body = body.replace('"x": 40', '"x": NaN')
    response = backend.client.post("/predict", data=body, content_type="application/json")
    assert_error(response, 400, "value.x must be a finite number")


@pytest.mark.parametrize(
    ("uri", "regions", "status", "fragment"),
    [
        (
            "/data/upload/1/odd.png",
            [keypoint(40, 60, 333, 517, label="Banana")],
            400,
            "label 'Banana' is not a label of <BrushLabels name='mask'>; available labels: 'Object', 'Person', 'Vehicle'",
        ),
        ("/data/upload/1/odd.png", [keypoint(140, 60, 333, 517)], 400, "outside the image"),
        ("/data/upload/1/odd.png", [rectangle(10, 10, -5, 10, 333, 517)], 400, "positive width and height"),
        (
            "/data/upload/1/odd.png",
            [{**keypoint(40, 60, 333, 517), "original_width": None}],
            400,
            "original_width",
        ),
        ("/data/upload/1/corrupt.png", [keypoint(40, 60, 333, 517)], 400, "corrupt or truncated"),
        ("/data/upload/1/tiny.png", [keypoint(40, 60, 4, 4)], 400, "both sides must be at least"),
        ("/data/upload/1/missing.png", [keypoint(40, 60, 333, 517)], 502, "answered 404"),
        ("http://images.example.org/a.png", [keypoint(40, 60, 333, 517)], 403, "LITESAM_ALLOWED_HOSTS"),
        ("file:///etc/passwd", [keypoint(40, 60, 333, 517)], 400, "unsupported image URL"),
    ],
)
def test_bad_requests_are_clear_4xx_or_502(backend, uri, regions, status, fragment):
    assert_error(backend.predict(uri, regions), status, fragment)


def test_bad_label_configs_and_tasks(backend):
    click = [keypoint(40, 60, 333, 517)]
    assert_error(backend.predict("/data/upload/1/odd.png", click, label_config=None), 400, "label_config")
    no_brush = '<View><Image name="image" value="$image"/></View>'
    assert_error(
        backend.predict("/data/upload/1/odd.png", click, label_config=no_brush), 400, "no <BrushLabels>"
    )
    body = {
        "tasks": [{"id": 1, "data": {"picture": "/x.png"}}],
        "label_config": CONFIG,
        "params": {"context": {"result": click}},
    }
    assert_error(backend.client.post("/predict", json=body), 400, "no data field 'image'")
    body["tasks"] = [{"id": 1, "data": {"image": "/a"}}, {"id": 2, "data": {"image": "/b"}}]
    assert_error(backend.client.post("/predict", json=body), 400, "exactly one task")


def test_huge_images_are_413(ls, checkpoint, redis_db):
    big = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (3000, 2000)).save(big, "PNG")
    ls.add("/data/upload/1/big.png", big.getvalue())
    pixels_limited = Backend(make_settings(ls, checkpoint, max_image_pixels=1_000_000))
    assert_error(
        # prompts within the limit (a too-large prompt size is a 400 of its own), the image over it
        pixels_limited.predict("/data/upload/1/big.png", [keypoint(50, 50, 1200, 800)]),
        413,
        "LITESAM_MAX_IMAGE_PIXELS",
    )
    bytes_limited = Backend(make_settings(ls, checkpoint, max_image_bytes=10_000))
    assert_error(
        bytes_limited.predict("/data/upload/1/odd.png", [keypoint(50, 50, 333, 517)]),
        413,
        "LITESAM_MAX_IMAGE_BYTES",
    )


def test_a_prompt_size_over_the_pixel_limit_is_400_without_downloading(ls, checkpoint, redis_db):
    limited = Backend(make_settings(ls, checkpoint, max_image_pixels=1_000_000))
    response = limited.predict("/data/upload/1/odd.png", [keypoint(50, 50, 30000, 30000)])
    assert_error(response, 400, "original_width × original_height is 30000×30000")
    assert downloads(ls, "/data/upload/1/odd.png") == 0 and limited.encodings == 0
    regions = regions_of(limited.predict("/data/upload/1/odd.png", [keypoint(50, 50, 1000, 1000)]))
    assert decode_brush(regions[0]).shape == (1000, 1000)  # up to the limit, masks are still scaled


def test_unexpected_errors_are_500_without_details(backend, caplog):
    def broken(embedding):
        raise RuntimeError("internal detail that must stay in the log")

    backend.services.model.predictor = broken
    with caplog.at_level(logging.ERROR, logger="backend.app"):
        response = backend.predict("/data/upload/1/odd.png", [keypoint(40, 60, 333, 517)])
    assert_error(response, 500, "internal error")
    assert "internal detail" not in response.get_data(as_text=True)
    assert "internal detail" in caplog.text and "Traceback" in caplog.text


def test_missing_checkpoint_is_a_clear_500_and_health_still_answers(ls, redis_db):
    backend = Backend(make_settings(ls, None))
    assert_error(
        backend.predict("/data/upload/1/odd.png", [keypoint(40, 60, 333, 517)]),
        500,
        "LITESAM_CHECKPOINT is not set",
    )
    health = backend.client.get("/health").get_json()
    assert (
        health["status"] == "UP"
        and health["model_version"] is None
        and "LITESAM_CHECKPOINT" in health["model_error"]
    )


# -- basic auth and secrets --------------------------------------------------------------------------------


def test_basic_auth_on_every_route(ls, checkpoint, redis_db):
    backend = Backend(make_settings(ls, checkpoint, basic_auth_user="ls", basic_auth_pass=Secret(BASIC_PASS)))
    for method, path in (
        ("get", "/health"),
        ("get", "/"),
        ("post", "/setup"),
        ("post", "/predict"),
        ("get", "/versions"),
        ("post", "/versions"),
    ):
        response = getattr(backend.client, method)(path, json={})
        assert_error(response, 401, "basic auth")
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    # Label Studio's event webhooks carry no basic auth; the route does nothing, so it answers them
    assert backend.client.post("/webhook", json={"action": "ANNOTATION_CREATED"}).status_code == 200
    wrong = backend.client.get("/health", headers={"Authorization": _basic("ls", "nope")})
    assert wrong.status_code == 401
    ok_headers = {"Authorization": _basic("ls", BASIC_PASS)}
    assert backend.client.get("/health", headers=ok_headers).status_code == 200
    assert regions_of(
        backend.predict("/data/upload/1/odd.png", [keypoint(40, 60, 333, 517)], headers=ok_headers)
    )


def test_secrets_never_reach_responses_or_logs(ls, checkpoint, redis_db, caplog):
    api_key = "legacy-key-that-is-secret"  # wrong for the fake Label Studio: image downloads get 401
    settings = make_settings(
        ls,
        checkpoint,
        label_studio_api_key=Secret(api_key),
        basic_auth_user="ls",
        basic_auth_pass=Secret(BASIC_PASS),
    )
    backend = Backend(settings)
    auth = {"Authorization": _basic("ls", BASIC_PASS)}
    bodies = []
    with caplog.at_level(logging.DEBUG):
        bodies.append(backend.client.get("/health", headers=auth).get_data(as_text=True))
        bodies.append(
            backend.client.post("/setup", json={"schema": CONFIG}, headers=auth).get_data(as_text=True)
        )
        bodies.append(
            backend.predict("/data/upload/1/odd.png", [keypoint(4, 6, 333, 517)], headers=auth).get_data(
                as_text=True
            )
        )
        bodies.append(
            backend.client.get("/health", headers={"Authorization": _basic("ls", "x")}).get_data(as_text=True)
        )
    assert "answered 401" in bodies[2]
    for text in bodies + [caplog.text, repr(settings), repr(backend.services)]:
        assert api_key not in text and BASIC_PASS not in text


def test_log_redaction_filter_masks_secrets_from_libraries(capsys):
    settings = Settings(
        label_studio_api_key=Secret("tok-123456"), basic_auth_user="u", basic_auth_pass=Secret("pw-987")
    )
    configure_logging(settings)
    try:
        logging.getLogger("some.library").warning("header was Token %s and pw-987", "tok-123456")
        try:
            raise ValueError("failed with tok-123456")
        except ValueError:
            logging.getLogger("some.library").exception("boom")
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_litesam", False)]:
            root.removeHandler(handler)
    err = capsys.readouterr().err
    assert "tok-123456" not in err and "pw-987" not in err and err.count("***") >= 3
    assert RedactingFilter([]).filter(logging.makeLogRecord({"msg": "x"}))


def _basic(user, password):
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
