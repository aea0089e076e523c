"""A real ``litesam-backend serve`` on an official SAM-family checkpoint: ``LITESAM_CHECKPOINT`` alone.

The file is the state dict of Meta's ``Sam`` (the two-block ``sam_vit_tiny`` layout, random weights), saved as
Meta publishes theirs. No ``LITESAM_VARIANT`` is set: the backend recognises the engine, names it in
``/health`` and the model version, stores embeddings of the engine's size, and answers a click with the mask
our library gives for the same weights. A file that fits no engine stops ``serve`` with the reason.
"""

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from backend.store import decode_embedding, embedding_key
from litesam.build import build_model
from litesam.predictor import LiteSamPredictor
from tests.backend_support import (
    FakeLabelStudio,
    backend_env,
    decode_brush,
    keypoint,
    png_bytes,
    serve_backend,
)
from tests.engine_support import save_official, tiny_vit_sam
from tests.test_backend_gunicorn import CONFIG

IMAGE = png_bytes(160, 230, seed=8)  # 230 rows × 160 columns


@pytest.fixture
def fake_ls():
    server = FakeLabelStudio()
    server.add("/data/upload/1/photo.png", IMAGE)
    yield server
    server.close()


def _env(tmp_path, checkpoint, fake_ls):
    return backend_env(tmp_path, fake_ls.url, checkpoint, LOG_LEVEL="INFO", OMP_NUM_THREADS="1")


@pytest.mark.slow
def test_an_official_checkpoint_alone_serves_clicks_and_segevery(tmp_path, fake_ls, redis_db):
    checkpoint = save_official(tiny_vit_sam(seed=9), tmp_path / "sam_vit_tiny.pth")
    version = f"sam_vit_tiny-{hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:12]}"
    with serve_backend(tmp_path, _env(tmp_path, checkpoint, fake_ls)) as (url, backend):
        health = requests.get(f"{url}/health", timeout=10).json()
        assert (health["variant"], health["model_version"]) == ("sam_vit_tiny", version)
        assert "SAM ViT" in health["engine"]
        click = {
            "tasks": [{"id": 1, "data": {"image": "/data/upload/1/photo.png"}}],
            "project": "1.1764000000",
            "label_config": CONFIG,
            "params": {"context": {"result": [keypoint(60, 90, 160, 230)]}},
        }
        answer = requests.post(f"{url}/predict", json=click, timeout=120)
        assert answer.status_code == 200, answer.text
        prediction = answer.json()["results"][0]
        assert prediction["model_version"] == version
        mask = decode_brush(prediction["result"][0]) > 0
        stored = decode_embedding(redis_db.get(embedding_key(version, hashlib.sha256(IMAGE).hexdigest())))
        assert tuple(stored.features.shape) == (1, 256, 16, 16)  # fp16, S/16 = 256/16
        # the library on the same weights: the stored embedding equals a fresh one to fp16 rounding, and the
        # same click on it gives the backend's mask (the backend keeps the best of three)
        model = build_model(checkpoint=checkpoint)
        fresh = LiteSamPredictor(model).set_image(np.asarray(Image.open(io.BytesIO(IMAGE)).convert("RGB")))
        torch.testing.assert_close(stored.features, fresh.features, rtol=2e-3, atol=2e-3)
        predictor = LiteSamPredictor(model)
        predictor.set_embedding(stored)
        expected, _, _ = predictor.predict(np.array([[96.0, 207.0]]), np.array([1]), best_only=True)  # 60 %, 90 %
        assert mask.shape == (230, 160) and (mask == expected[0]).mean() >= 0.99
        batch = dict(click, params={})  # "Retrieve predictions" on one task: SegEvery in the call
        everything = requests.post(f"{url}/predict", json=batch, timeout=300)
        assert everything.status_code == 200, everything.text
        assert "Traceback" not in backend.log_text()
        assert "sam_vit_tiny" in backend.log_text()


def test_a_file_that_fits_no_engine_stops_serve_with_the_reason(tmp_path, fake_ls, redis_db):
    state = tiny_vit_sam(seed=9).state_dict()
    state.pop("mask_decoder.iou_token.weight")
    checkpoint = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(state, checkpoint)
    completed = subprocess.run(
        [sys.executable, "-m", "backend.cli", "serve", "--bind", "127.0.0.1:0"],
        env=_env(tmp_path, checkpoint, fake_ls),
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert "cannot load the checkpoint" in completed.stderr and "fits no engine" in completed.stderr
    assert "missing keys [mask_decoder.iou_token.weight]" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not redis_db.keys("litesam:emb:*")
