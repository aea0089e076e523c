"""Tests of a whole ``litesam distill`` run: exact resume, the checkpoints served, the CLI and its errors,
DDP under torchrun (two CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from litesam.build import build_model
from litesam.cli import main
from litesam.distill.config import DistillConfig
from litesam.distill.loop import LOG_FILE, distill
from litesam.everything import SegEvery, SegEveryConfig
from litesam.predictor import LiteSamPredictor
from litesam.train.synthetic import render_scene

DEMO = "litesam/weights/litesam_tiny_synthetic.pt"


def _config(tmp_path: Path, name: str, **overrides) -> DistillConfig:
    values = dict(teacher=DEMO, data="synthetic", synthetic_images=6, synthetic_seed=2, output_dir=tmp_path / name,
                  cache_dir=tmp_path / "cache", variant="litesam_tiny_student", shard_size=4, batch_size=2,
                  max_steps=4, points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                  log_every=1, checkpoint_every=0, progress=False)
    return DistillConfig(**{**values, **overrides})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_resumed_run_gives_the_weights_of_an_uninterrupted_one(tmp_path):
    options = dict(accumulate=2, teacher_autoppn=True, finetune_decoder=True)
    whole = distill(_config(tmp_path, "whole", **options))
    assert whole["step"] == 4 and whole["cache"]["embedding_shards"] == 2 and whole["cache"]["mask_shards"] == 2
    first = distill(_config(tmp_path, "split", stop_after=1, **options))
    assert first["step"] == 1 and first["cache"]["embedding_shards"] == 0  # the shared cache is reused
    second = distill(_config(tmp_path, "split", resume=True, **options))
    assert second["step"] == 4
    a, b = _weights(tmp_path / "whole" / "last.pt"), _weights(tmp_path / "split" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ta, tb = _weights(tmp_path / "whole" / "teacher_autoppn.pt"), _weights(tmp_path / "split" / "teacher_autoppn.pt")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    # The prepared-image cache (on by default; 4 steps of 2 reach the second epoch of 6 images) changes nothing.
    distill(_config(tmp_path, "uncached", cache_mb=0, **options))
    c = _weights(tmp_path / "uncached" / "last.pt")
    assert all(torch.equal(a[k], c[k]) for k in a)
    # Something was learnt: the weights moved from the initial student, every term was logged.
    lines = [json.loads(line) for line in (tmp_path / "whole" / LOG_FILE).read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    assert {"embedding", "autoppn", "teacher_autoppn", "decoder", "loss", "lr"} <= set(lines[-1])
    assert lines[-1]["embedding"] < lines[0]["embedding"]


def test_student_checkpoint_is_served_with_the_teachers_decoder_and_a_trained_head(tmp_path):
    summary = distill(_config(tmp_path, "run", teacher_autoppn=True))
    student = build_model(checkpoint=summary["checkpoint"])
    teacher = build_model(checkpoint=DEMO)
    assert student.variant == "litesam_tiny_student"
    decoder, original = student.mask_decoder.state_dict(), teacher.mask_decoder.state_dict()
    assert all(torch.equal(decoder[k], original[k]) for k in decoder)  # not fine-tuned: still the teacher's
    image = render_scene(1, 0)[0]
    predictor = LiteSamPredictor(student)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(box=np.array([20, 20, 120, 120]), multimask_output=False)
    assert masks.shape == (1, *image.shape[:2]) and 0.0 <= float(scores[0]) <= 1.0
    records = SegEvery(student, SegEveryConfig(pred_iou_thresh=0.0, stability_score_thresh=0.0)).generate(image)
    assert all(r["segmentation"].shape == image.shape[:2] for r in records)

    # The teacher with the head learnt on its own embeddings: same variant, AutoPPN proposals.
    with_head = build_model(checkpoint=summary["teacher_autoppn"])
    assert with_head.variant == "litesam_tiny" and with_head.image_encoder.autoppn is not None
    learnt = {k: v for k, v in _weights(Path(summary["teacher_autoppn"])).items() if ".autoppn." in k}
    assert any(not torch.equal(v, teacher.state_dict()[k]) for k, v in learnt.items())
    SegEvery(with_head, SegEveryConfig(prompt_mode="autoppn")).generate(image)

    # The backend loads it as it loads any checkpoint (fused for serving).
    from tests.backend_support import settings_for
    from backend.model_service import ModelService

    service = ModelService(settings_for(summary["checkpoint"], variant=None))
    assert service.variant == "litesam_tiny_student"
    embedding = service.encode(image)
    masks, _, _ = service.predictor(embedding).predict(box=np.array([20, 20, 120, 120]), multimask_output=False)
    assert masks.shape == (1, *image.shape[:2])


def test_an_engine_teacher_gets_an_autoppn_head_that_build_model_serves(tmp_path):
    from litesam.build import save_checkpoint

    torch.manual_seed(0)
    engine = tmp_path / "sam_vit_tiny.pt"
    save_checkpoint(build_model("sam_vit_tiny"), engine, "sam_vit_tiny")
    summary = distill(_config(tmp_path, "engine", teacher=engine, variant="litesam_r640", synthetic_images=2,
                              batch_size=1, max_steps=1, autoppn=False, teacher_autoppn=True, points_per_side=2))
    with_head = build_model(checkpoint=summary["teacher_autoppn"])
    assert with_head.variant == "sam_vit_tiny" and with_head.image_encoder.autoppn is not None
    SegEvery(with_head).generate(render_scene(1, 0)[0])  # "auto" mode now uses the head
    assert SegEvery(with_head).config.prompt_mode == "autoppn"


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["distill", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_runs_with_a_config_file_whose_settings_flags_override(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(
        f'teacher = "{DEMO}"\ndata = "synthetic"\nsynthetic_images = 4\nvariant = "litesam_tiny_student"\n'
        'batch_size = 2\nmax_steps = 5\nautoppn = false\nprogress = false\n'
    )
    code, out, err = _cli(capsys, "--config", str(config), "-o", str(tmp_path / "out"), "--max-steps", "2")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["step"] == 2 and summary["total_steps"] == 2  # the flag won over the file
    assert summary["cache"]["masks"] is None  # autoppn = false in the file: no pseudo-masks computed
    assert build_model(checkpoint=summary["checkpoint"]).variant == "litesam_tiny_student"
    hint = f"litesam calibrate --checkpoint {summary['checkpoint']} --teacher {DEMO} --data synthetic"
    assert hint in err  # the student's filters are calibrated against the teacher, without labels


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--teacher", "missing.pt", "--data", "synthetic", "-o", "OUT"], "missing.pt does not exist"),
        (["--teacher", DEMO, "--data", "synthetic", "-o", "OUT", "--variant", "litesam_r640"], "cannot be copied"),
        (["--teacher", DEMO, "--data", "no/such/folder", "-o", "OUT"], "does not exist"),
        (["--teacher", DEMO, "-o", "OUT"], "give --data"),
        (["--teacher", DEMO, "--data", "synthetic", "-o", "OUT", "--variant", "litesam_tiny_student", "--resume"],
         "cannot resume"),
        (["--teacher", DEMO, "--data", "synthetic", "-o", "OUT", "--resample", "area"], "resample"),
        (["--config", "CONFIG", "--teacher", DEMO, "--data", "synthetic", "-o", "OUT"], "unknown setting(s) batch"),
        (["--teacher", DEMO, "--data", "synthetic", "-o", "OUT", "--variant", "nope"], "unknown variant"),
    ],
)
def test_cli_errors_are_one_clear_line(tmp_path, capsys, argv, message):
    (tmp_path / "bad.json").write_text('{"batch": 3}')
    argv = [str(tmp_path / "out") if a == "OUT" else str(tmp_path / "bad.json") if a == "CONFIG" else a for a in argv]
    code, out, err = _cli(capsys, *argv, "--no-progress", "--synthetic-images", "2")
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err and err.startswith("litesam: error:")


def test_ddp_under_torchrun_with_two_cpu_processes(tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
        "-m", "litesam.cli", "distill", "--teacher", DEMO, "--data", "synthetic", "--synthetic-images", "4",
        "--variant", "litesam_tiny_student", "--batch-size", "1", "--max-steps", "2", "--no-autoppn", "--log-every", "1",
        "--device", "cpu", "--no-progress", "-o", str(tmp_path / "ddp"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 2 and all(s["step"] == 2 for s in summaries)  # both ranks ran both steps
    assert sum(s["cache"]["embedding_shards"] for s in summaries) == 1  # one shard, filled by one rank
    lines = (tmp_path / "ddp" / LOG_FILE).read_text().splitlines()
    assert len(lines) == 2  # rank 0 alone writes the log
    assert build_model(checkpoint=tmp_path / "ddp" / "last.pt").variant == "litesam_tiny_student"
