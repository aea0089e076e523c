"""Settings from environment variables: defaults, parsing, errors that name the variable, no leaked secrets."""

from pathlib import Path

import pytest

from backend.errors import ConfigurationError
from backend.settings import Secret, Settings


def test_defaults_from_an_empty_environment():
    settings = Settings.from_env({})
    assert settings.label_studio_url is None
    assert settings.label_studio_api_key is None
    assert settings.redis_url.reveal() == "redis://127.0.0.1:6379/0"
    assert settings.variant is None  # found in the checkpoint
    assert settings.device == "cpu"
    assert settings.bind == "0.0.0.0:9090"
    assert (settings.workers, settings.threads) == (1, 4)
    assert settings.embedding_ttl == 7 * 24 * 3600
    assert settings.max_image_bytes == 50 * 1024 * 1024
    assert settings.max_image_pixels == 50_000_000
    assert settings.allowed_hosts == ()
    assert settings.basic_auth_enabled is False
    assert settings.cache_dir == Path.home() / ".cache" / "litesam"
    assert (settings.torch_threads, settings.inference_slots, settings.precision) == (1, None, "fp32")
    assert settings == Settings()


def test_every_variable_is_read():
    env = {
        "LABEL_STUDIO_URL": "http://label-studio:8080/",
        "LABEL_STUDIO_API_KEY": "key-123",
        "REDIS_URL": "redis://:redispw@redis:6379/2",
        "LITESAM_CACHE_REDIS_URL": "redis://:cachepw@redis-cache:6379/0",
        "LITESAM_CHECKPOINT": "/models/r1024.pt",
        "LITESAM_CHECKPOINT_SHA256": "AB" * 32,
        "LITESAM_CACHE_DIR": "/tmp/cache",
        "LITESAM_VARIANT": "litesam_r1024",
        "LITESAM_DEVICE": "cuda:1",
        "LITESAM_TORCH_THREADS": "2",
        "LITESAM_INFERENCE_SLOTS": "3",
        "LITESAM_PRECISION": "bf16",
        "BASIC_AUTH_USER": "ls",
        "BASIC_AUTH_PASS": "pw",
        "LITESAM_EMBEDDING_TTL": "60",
        "LITESAM_EMBEDDING_LRU": "0",
        "LITESAM_MAX_IMAGE_BYTES": "1000",
        "LITESAM_MAX_IMAGE_PIXELS": "2000",
        "LITESAM_ALLOWED_HOSTS": " CDN.example.org, *.images.example.com ,",
        "LITESAM_FETCH_TIMEOUT": "2.5",
        "LITESAM_BIND": "127.0.0.1:9999",
        "LITESAM_WORKERS": "3",
        "LITESAM_THREADS": "8",
        "LOG_LEVEL": "debug",
    }
    s = Settings.from_env(env)
    assert s.label_studio_url == "http://label-studio:8080"
    assert s.label_studio_api_key.reveal() == "key-123"
    assert s.checkpoint == "/models/r1024.pt" and s.checkpoint_sha256 == "ab" * 32
    assert s.cache_dir == Path("/tmp/cache")
    assert (s.variant, s.device, s.torch_threads) == ("litesam_r1024", "cuda:1", 2)
    assert (s.inference_slots, s.inference_concurrency, s.precision) == (3, 3, "bf16")
    assert s.basic_auth_enabled and s.basic_auth_user == "ls" and s.basic_auth_pass.reveal() == "pw"
    assert (s.embedding_ttl, s.embedding_lru, s.max_image_bytes, s.max_image_pixels) == (60, 0, 1000, 2000)
    assert s.allowed_hosts == ("cdn.example.org", "*.images.example.com")
    assert s.fetch_timeout == 2.5
    assert (s.bind, s.workers, s.threads, s.log_level) == ("127.0.0.1:9999", 3, 8, "DEBUG")
    assert s.embedding_redis_url.reveal() == "redis://:cachepw@redis-cache:6379/0"
    assert sorted(s.secret_values()) == ["cachepw", "key-123", "pw", "redispw"]


def test_secrets_do_not_show_in_repr_or_str():
    s = Settings.from_env(
        {
            "LABEL_STUDIO_API_KEY": "topsecret-key",
            "BASIC_AUTH_USER": "u",
            "BASIC_AUTH_PASS": "topsecret-pass",
            "REDIS_URL": "redis://:topsecret-redis@r/0",
        }
    )
    for text in (repr(s), str(s), f"{s.label_studio_api_key}", repr(s.basic_auth_pass)):
        assert "topsecret" not in text
    assert repr(Secret("x")) == "Secret('***')"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"LITESAM_WORKERS": "two"}, "LITESAM_WORKERS"),
        ({"LITESAM_THREADS": "0"}, "LITESAM_THREADS"),
        ({"LITESAM_EMBEDDING_TTL": "-5"}, "LITESAM_EMBEDDING_TTL"),
        ({"LITESAM_FETCH_TIMEOUT": "nan"}, "LITESAM_FETCH_TIMEOUT"),
        ({"LITESAM_CHECKPOINT_SHA256": "abc"}, "LITESAM_CHECKPOINT_SHA256"),
        ({"LABEL_STUDIO_URL": "label-studio:8080"}, "LABEL_STUDIO_URL"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        ({"BASIC_AUTH_USER": "only-user"}, "BASIC_AUTH_PASS"),
        ({"LITESAM_JOB_DEFAULTS": "{not json"}, "LITESAM_JOB_DEFAULTS"),
        ({"LITESAM_JOB_DEFAULTS": "[1, 2]"}, "LITESAM_JOB_DEFAULTS"),
        ({"LITESAM_SYNC_PREDICT_LIMIT": "-1"}, "LITESAM_SYNC_PREDICT_LIMIT"),
    ],
)
def test_malformed_values_name_the_variable(env, names):
    with pytest.raises(ConfigurationError, match=names):
        Settings.from_env(env)


def test_the_cache_uses_the_job_redis_unless_told_otherwise():
    s = Settings.from_env({"REDIS_URL": "redis://queue:6379/1"})
    assert s.embedding_redis_url.reveal() == "redis://queue:6379/1"


def test_job_defaults_underlie_every_job_and_a_job_can_override_them():
    from backend.errors import BadRequestError
    from backend.jobs.options import JobOptions

    settings = Settings.from_env(
        {"LITESAM_JOB_DEFAULTS": '{"pred_iou_thresh": 0.5, "chunk_size": 3}', "LITESAM_SYNC_PREDICT_LIMIT": "7"}
    )
    assert settings.sync_predict_limit == 7
    options = JobOptions.from_json({"chunk_size": 4}, settings.job_defaults)
    assert (options.pred_iou_thresh, options.chunk_size) == (0.5, 4)
    assert JobOptions.from_json(None, settings.job_defaults).chunk_size == 3
    unknown = Settings.from_env({"LITESAM_JOB_DEFAULTS": '{"speed": "max"}'})
    with pytest.raises(BadRequestError, match="speed"):
        JobOptions.from_json(None, unknown.job_defaults)


def test_basic_auth_password_is_not_in_the_error():
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"BASIC_AUTH_PASS": "hunter2"})
    assert "hunter2" not in str(info.value)


def test_empty_values_count_as_unset():
    s = Settings.from_env({"LABEL_STUDIO_API_KEY": "  ", "LITESAM_VARIANT": "", "LITESAM_WORKERS": ""})
    assert s.label_studio_api_key is None and s.variant is None and s.workers == 1


def test_inference_concurrency_shares_the_cores_out(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert Settings().inference_concurrency == 8  # 1 worker × 1 torch thread
    assert Settings(workers=2, torch_threads=2).inference_concurrency == 2
    assert Settings(workers=3, torch_threads=4).inference_concurrency == 1  # at least one
    assert Settings(workers=3, inference_slots=5).inference_concurrency == 5  # set: taken as is


def test_precision_must_be_known():
    with pytest.raises(ConfigurationError, match="LITESAM_PRECISION must be one of fp32, bf16, auto"):
        Settings.from_env({"LITESAM_PRECISION": "fp16"})


def test_precision_choices_are_the_librarys():
    from backend.settings import _PRECISIONS
    from litesam.inference import PRECISIONS

    assert _PRECISIONS == PRECISIONS


def test_fp32_kernel_is_checked_when_settings_are_read():
    assert Settings.from_env({}).fp32_kernel == "auto"
    assert Settings.from_env({"LITESAM_FP32_KERNEL": "oneDNN"}).fp32_kernel == "onednn"
    with pytest.raises(ConfigurationError, match="LITESAM_FP32_KERNEL must be one of mkl, onednn, auto, got 'avx512'"):
        Settings.from_env({"LITESAM_FP32_KERNEL": "avx512"})


def test_fp32_kernel_choices_are_the_librarys():
    from backend.settings import _KERNELS
    from litesam.kernels import KERNELS

    assert _KERNELS == KERNELS


def test_encoder_runtime_is_checked_when_settings_are_read():
    from backend.settings import _RUNTIMES
    from litesam.inference import RUNTIMES

    assert _RUNTIMES == RUNTIMES
    assert Settings.from_env({}).encoder_runtime == "auto"
    assert Settings.from_env({"LITESAM_ENCODER_RUNTIME": "OpenVINO"}).encoder_runtime == "openvino"
    with pytest.raises(ConfigurationError, match="LITESAM_ENCODER_RUNTIME must be one of torch, openvino, a"):
        Settings.from_env({"LITESAM_ENCODER_RUNTIME": "onnx"})
