"""Checkpoint resolution (path, URL downloaded once and verified), model version, lazy thread-safe loading."""

import hashlib
import threading
import time
from pathlib import Path

import pytest
import torch

import backend.model_service as model_module
from backend.checkpoint import resolve_checkpoint
from backend.errors import BadRequestError, ConfigurationError
from backend.model import LiteSamBackend
from backend.model_service import ModelService, model_version_string
from backend.services import build_services
from backend.settings import Settings
from tests.backend_support import FakeLabelStudio, keypoint


@pytest.fixture(scope="module")
def sha(checkpoint):
    return hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()


@pytest.fixture
def server():
    s = FakeLabelStudio()
    yield s
    s.close()


def test_model_version_string():
    assert model_version_string("litesam_r640", "0123456789abcdef" * 4) == "litesam_r640-0123456789ab"


def test_local_checkpoint(checkpoint, sha, tmp_path):
    resolved = resolve_checkpoint(checkpoint, None, tmp_path)
    assert resolved.path == Path(checkpoint) and resolved.sha256 == sha
    assert resolve_checkpoint(checkpoint, sha, tmp_path).sha256 == sha
    with pytest.raises(ConfigurationError, match="LITESAM_CHECKPOINT_SHA256 says"):
        resolve_checkpoint(checkpoint, "0" * 64, tmp_path)
    with pytest.raises(ConfigurationError, match="is not a file"):
        resolve_checkpoint(str(tmp_path / "missing.pt"), None, tmp_path)
    with pytest.raises(ConfigurationError, match="LITESAM_CHECKPOINT is not set"):
        resolve_checkpoint(None, None, tmp_path)


def test_url_checkpoint_is_downloaded_once_and_verified(checkpoint, sha, server, tmp_path):
    server.add("/weights/tiny.pt?sig=abc", Path(checkpoint).read_bytes(), auth=False)
    url = f"{server.url}/weights/tiny.pt?sig=abc"
    first = resolve_checkpoint(url, sha, tmp_path)
    assert (
        first.sha256 == sha
        and first.path.parent == tmp_path / "checkpoints"
        and first.path.name.endswith("tiny.pt")
    )
    second = resolve_checkpoint(url, sha, tmp_path)
    assert second == first
    assert len([r for r in server.requests if r[1].startswith("/weights/")]) == 1


def test_url_checkpoint_with_the_wrong_sha_is_not_kept(checkpoint, server, tmp_path):
    server.add("/weights/tiny.pt", Path(checkpoint).read_bytes(), auth=False)
    with pytest.raises(ConfigurationError, match="it was not kept") as info:
        resolve_checkpoint(f"{server.url}/weights/tiny.pt", "1" * 64, tmp_path)
    assert "?" not in str(info.value)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if not p.name.endswith(".lock")]
    with pytest.raises(ConfigurationError, match="HTTP 404"):
        resolve_checkpoint(f"{server.url}/weights/missing.pt", None, tmp_path)


def test_model_version_from_the_configured_sha_needs_no_file():
    service = ModelService(
        Settings(checkpoint="/nowhere.pt", checkpoint_sha256="ab" * 32, variant="litesam_r1024")
    )
    assert service.model_version == "litesam_r1024-abababababab"
    assert not service.loaded


def test_model_is_loaded_once_for_concurrent_first_requests(checkpoint, sha, monkeypatch):
    builds = []
    real_build = model_module.build_model

    def counting_build(*args, **kwargs):
        builds.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(model_module, "build_model", counting_build)
    threads_set = []
    monkeypatch.setattr(model_module.torch, "set_num_threads", threads_set.append)
    service = ModelService(Settings(checkpoint=checkpoint, variant="litesam_tiny", torch_threads=1))
    assert service.model_version == f"litesam_tiny-{sha[:12]}"
    models = []
    threads = [threading.Thread(target=lambda: models.append(service.model())) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(builds) == 1 and len({id(m) for m in models}) == 1 and service.loaded
    assert threads_set[-1] == 1  # the configured count is the last one set (the CPU probe restores its own)
    assert not models[0].training


def test_a_checkpoint_of_another_variant_is_a_clear_error(checkpoint):
    service = ModelService(Settings(checkpoint=checkpoint, variant="litesam_r640"))
    with pytest.raises(ConfigurationError, match="cannot load the checkpoint"):
        service.model()


def test_a_prompt_image_size_over_the_pixel_limit_is_400_before_any_work():
    """original_width/original_height come from the request and size the mask: 30000×30000 would be GBs."""
    config = (
        '<View><Image name="image" value="$image"/>'
        '<BrushLabels name="mask" toName="image"><Label value="Object"/></BrushLabels></View>'
    )
    services = build_services(
        Settings(
            checkpoint="/nowhere.pt",
            checkpoint_sha256="ab" * 32,
            variant="litesam_tiny",
            max_image_pixels=1_000_000,
        )
    )
    model = services.model
    backend = LiteSamBackend(services, label_config=config)
    tasks = [{"id": 1, "data": {"image": "/data/upload/1/a.png"}}]
    with pytest.raises(BadRequestError, match=r"30000×30000 = 900000000 pixels.*limit of 1000000"):
        backend.predict(tasks, context={"result": [keypoint(50, 50, 30000, 30000)]})
    with pytest.raises(BadRequestError, match="LITESAM_MAX_IMAGE_PIXELS"):
        backend.predict(tasks, context={"result": [keypoint(50, 50, 1001, 1000)]})
    assert not model.loaded


def test_inference_slots_bound_concurrent_inferences(checkpoint):
    service = ModelService(Settings(checkpoint=checkpoint, variant="litesam_tiny", inference_slots=2))
    inside, peak, lock = [0], [0], threading.Lock()
    release = threading.Event()

    def infer():
        with service.inference():
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            release.wait(10)
            with lock:
                inside[0] -= 1

    workers = [threading.Thread(target=infer) for _ in range(5)]
    for t in workers:
        t.start()
    deadline = time.monotonic() + 10
    while inside[0] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # a third thread, were it let in, would be counted by now
    assert inside[0] == 2
    release.set()
    for t in workers:
        t.join(10)
    assert peak[0] == 2 and inside[0] == 0


def test_the_model_is_put_on_the_configured_inference_path(checkpoint):
    service = ModelService(Settings(checkpoint=checkpoint, variant="litesam_tiny", precision="fp32"))
    assert service.model().inference_precision == "fp32"
    assert service.model().encoder_runtime == "torch" and service.model().image_encoder.backbone.fused
    auto = ModelService(Settings(checkpoint=checkpoint, variant="litesam_tiny", precision="auto"))
    assert auto.model().inference_precision in ("fp32", "bf16")
    # On the bf16 path (where this CPU has it) auto's encoder is OpenVINO's, else torch's fused one.
    expected = "openvino" if auto.model().inference_precision == "bf16" else "torch"
    assert auto.model().encoder_runtime == expected


def test_the_encoder_runtime_setting_is_served_and_logged(checkpoint, tmp_path, caplog):
    with caplog.at_level("INFO", logger=model_module.__name__):
        model = ModelService(Settings(checkpoint=checkpoint, variant="litesam_tiny", precision="fp32",
                                      encoder_runtime="openvino", cache_dir=tmp_path)).model()
    assert model.encoder_runtime == "openvino" and list((tmp_path / "openvino").glob("*.xml"))
    assert "fp32 path, openvino encoder" in caplog.text
    with pytest.raises(ConfigurationError, match="LITESAM_ENCODER_RUNTIME: runtime openvino: .*engine"):
        ModelService(Settings(checkpoint=_engine_checkpoint(tmp_path), encoder_runtime="openvino")).model()


@pytest.mark.parametrize("slots", [1, 2])
def test_openvino_runs_as_many_encodes_at_once_as_there_are_inference_slots(checkpoint, tmp_path, slots):
    settings = Settings(checkpoint=checkpoint, variant="litesam_tiny", precision="fp32",
                        encoder_runtime="openvino", cache_dir=tmp_path, inference_slots=slots)
    assert settings.inference_concurrency == slots
    assert ModelService(settings).model().image_encoder.streams == slots


def test_the_served_model_carries_the_checkpoints_filters_and_the_load_log_names_them(checkpoint, caplog):
    from litesam.cli import DEMO_CHECKPOINT

    with caplog.at_level("INFO", logger=model_module.__name__):
        calibrated = ModelService(Settings(checkpoint=str(DEMO_CHECKPOINT), torch_threads=1)).model()
        uncalibrated = ModelService(Settings(checkpoint=checkpoint, variant="litesam_tiny", torch_threads=1)).model()
    assert calibrated.segevery_filters == {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.7,
                                           "proposal_score_thresh": 0.5}
    assert uncalibrated.segevery_filters is None
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")]
    assert ("SegEvery filters calibrated pred_iou_thresh 0.7, stability_score_thresh 0.7, proposal_score_thresh 0.5"
            in lines[0])
    assert "SegEvery filters SAM's (none calibrated: litesam calibrate)" in lines[1]


def _engine_checkpoint(folder: Path) -> str:
    """A random-weight ``sam_vit_tiny`` checkpoint (an engine: no Lite-SAM encoder for OpenVINO)."""
    from litesam.build import build_model, save_checkpoint

    torch.manual_seed(0)
    return str(save_checkpoint(build_model("sam_vit_tiny"), folder / "engine.pt", "sam_vit_tiny"))
