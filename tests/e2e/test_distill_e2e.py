"""End to end: ``litesam-backend distill --project N`` on the task images of a real Label Studio 1.23.2 project.

The project holds synthetic scenes (:mod:`tests.e2e.finetune_support`) stored as Label Studio stores a team's
images: uploaded files (``/data/upload/…``), one an EXIF-rotated JPEG, and files of a Local Storage
(``/data/local-files/?d=…``), one EXIF-rotated too; no annotation (distillation needs none). The command runs
as a user runs it: the ``litesam-backend`` console script in a subprocess, ``LABEL_STUDIO_URL`` and a personal
access token in ``LABEL_STUDIO_API_KEY``, the package's demo checkpoint as the teacher, a few steps.

Checked: every task's image was read, in task-id order, at its natural, EXIF-transposed size, and the teacher's
cached embedding of it is the teacher's embedding of that very image; the cache's shards are sealed; a second
run on the same cache computes no teacher output; the student checkpoint loads with ``build_model`` and
predicts; the token appears in no output and no file written. Refused: a task whose image points at a
non-public address (the SSRF guard, with every host allowed), named by its task id, before anything is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.images import decode_image
from litesam.build import build_model
from litesam.cli import DEMO_CHECKPOINT
from litesam.distill.student import check_student_fits
from litesam.distill.teacher import load_teacher
from litesam.errors import CheckpointError
from litesam.predictor import LiteSamPredictor, encode_image
from tests.e2e.finetune_support import CONFIG, project_scene, scene_files
from tests.e2e.processes import base_env

#: Uploaded scenes (scene 1 as an EXIF-rotated JPEG) and Local Storage scenes (the second EXIF-rotated).
UPLOADED, LOCAL = 4, 2
#: Cache shard size: the project's 6 images make two shards.
SHARD = 4
STEPS, BATCH = 2, 2
#: Seconds one distillation subprocess may take (start-up, the teacher pass over 6 images, a few steps).
RUN_TIMEOUT = 600
#: Every JSON web token (a personal access token, the access tokens made from it) starts with this.
JWT_PREFIX = b"eyJhbGciOi"
#: The cloud metadata address, the classic SSRF target.
PRIVATE_IMAGE = "http://169.254.169.254/latest/meta-data/image.png"


def student_variant(teacher) -> str:
    """The smallest student the teacher's embedding width fits (the demo checkpoint's layout may change)."""
    for variant in ("litesam_tiny_student", "litesam_r640"):
        try:
            check_student_fits(variant, teacher.model)
            return variant
        except CheckpointError:
            continue
    raise AssertionError(f"no student variant fits the teacher {teacher.variant}")


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(DEMO_CHECKPOINT)


@pytest.fixture(scope="module")
def project(label_studio):
    """(project id, task id → (image URI, the file's bytes)), over uploaded and Local Storage files."""
    project = label_studio.create_project(CONFIG, title="litesam distill e2e")
    images = [project_scene(i)[0] for i in range(UPLOADED + LOCAL)]
    uploads = scene_files(images[:UPLOADED], exif_index=1)
    local = scene_files(images[UPLOADED:], exif_index=1, prefix="local")
    task_ids = label_studio.upload_images(project, uploads)
    task_ids += label_studio.import_local_files(project, local, subdir="distill")
    files = {}
    for task_id, (_, data) in zip(task_ids, uploads + local, strict=True):
        files[task_id] = (label_studio.task(task_id)["data"]["image"], data)
    assert sum(uri.startswith("/data/upload/") for uri, _ in files.values()) == UPLOADED
    assert sum(uri.startswith("/data/local-files/") for uri, _ in files.values()) == LOCAL
    return project, files


def run_distill(label_studio, project: int, workdir: Path, out: str, *args: str, **env: str):
    """``litesam-backend distill --project N`` in a subprocess (cwd ``workdir``, a hermetic environment)."""
    exe = Path(sys.executable).parent / "litesam-backend"
    environment = base_env(
        workdir / "home",
        LABEL_STUDIO_URL=label_studio.url,
        LABEL_STUDIO_API_KEY=label_studio.pat,
        LITESAM_CACHE_DIR=str(workdir / "backend-cache"),
        OMP_NUM_THREADS="1",
        LITESAM_TORCH_THREADS="1",
        **env,
    )
    argv = [str(exe), "distill", "--project", str(project), "--teacher", str(DEMO_CHECKPOINT), "-o", out, *args]
    return subprocess.run(argv, cwd=workdir, env=environment, capture_output=True, text=True, timeout=RUN_TIMEOUT)


def shard_payloads(directory: Path) -> list[dict]:
    """The shards of one cache directory in order, each checked against its seal (sha256, size, no leftovers)."""
    assert not list(directory.glob("*.partial"))
    payloads = []
    for path in sorted(directory.glob("shard_*.pt")):
        seal = json.loads(path.with_suffix(".json").read_text())
        assert seal["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and seal["bytes"] == path.stat().st_size
        payloads.append(torch.load(path, weights_only=True))
    return payloads


def assert_no_secret(label_studio, texts: list[str], folder: Path) -> None:
    """Neither the token nor any JWT is in ``texts`` or in any file under ``folder``."""
    pat = label_studio.pat.encode()
    for text in texts:
        assert pat not in text.encode() and JWT_PREFIX not in text.encode()
    for path in (p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert pat not in data and JWT_PREFIX not in data, path


@pytest.mark.e2e
def test_distill_reads_every_task_image_caches_the_teacher_and_writes_a_student(
    label_studio, project, teacher, tmp_path
):
    project_id, files = project
    variant = student_variant(teacher)
    args = ["--variant", variant, "--cache", str(tmp_path / "cache"), "--shard-size", str(SHARD),
            "--batch-size", str(BATCH), "--workers", "0", "--no-progress",
            # pseudo-masks from the teacher's own AutoPPN, filters off: this teacher's IoU head is uncalibrated
            "--pseudo-prompts", "auto", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    first = run_distill(label_studio, project_id, tmp_path, "run1", *args, "--max-steps", str(STEPS))
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    count = len(files)
    assert summary["step"] == STEPS and np.isfinite(summary["losses"]["loss"])
    assert summary["cache"]["embedding_shards"] == summary["cache"]["mask_shards"] == -(-count // SHARD)
    assert f"on {count} images" in first.stderr

    # Every task image read, in task-id order, at its natural size; the cache holds the teacher's embedding of it.
    embeddings = shard_payloads(Path(summary["cache"]["embeddings"]))
    masks = shard_payloads(Path(summary["cache"]["masks"]))
    assert len(embeddings) == len(masks) == -(-count // SHARD)
    keys = [key for shard in embeddings for key in shard["keys"]]
    assert keys == [key for shard in masks for key in shard["keys"]] and len(set(keys)) == count
    sizes = torch.cat([shard["original_sizes"] for shard in embeddings]).tolist()
    cached = torch.cat([shard["embeddings"] for shard in embeddings])
    pseudo = [rles for shard in masks for rles in shard["masks"]]
    turned = 0
    for row, task_id in enumerate(sorted(files)):
        uri, data = files[task_id]
        assert keys[row].endswith(uri)  # this task's image, in task-id order
        image = decode_image(data, 1 << 30)
        assert tuple(sizes[row]) == image.shape[:2]
        if data[:2] == b"\xff\xd8":  # the EXIF-rotated JPEGs: stored turned, read upright
            with Image.open(io.BytesIO(data)) as stored:
                assert (stored.height, stored.width) == image.shape[1::-1] != image.shape[:2]
            turned += 1
        expected = encode_image(teacher.model, image).features[0].to(torch.float16).float()
        assert torch.allclose(cached[row].float(), expected, atol=1e-2 * float(expected.abs().max()))
        assert pseudo[row] and all(list(rle["size"]) == list(image.shape[:2]) for rle in pseudo[row])
    assert turned == 2
    log = [json.loads(line) for line in (tmp_path / "run1" / "distill_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == STEPS

    # A second run on the same cache runs the student only: no shard computed, the sealed shards untouched.
    seals = {p: p.read_bytes() for p in (tmp_path / "cache").rglob("shard_*.json")}
    second = run_distill(label_studio, project_id, tmp_path, "run2", *args, "--max-steps", "1")
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout.strip().splitlines()[-1])
    assert again["cache"] == {**summary["cache"], "embedding_shards": 0, "mask_shards": 0}
    assert again["step"] == 1 and "corrupt" not in second.stderr
    assert {p: p.read_bytes() for p in (tmp_path / "cache").rglob("shard_*.json")} == seals

    # The student is one of our checkpoints: build_model loads it and it segments a task's image.
    student = build_model(checkpoint=tmp_path / "run1" / "last.pt")
    assert student.variant == variant
    predictor = LiteSamPredictor(student)
    image, truth = project_scene(0)
    predictor.set_image(image)
    rows, cols = np.flatnonzero(truth[0].any(axis=1)), np.flatnonzero(truth[0].any(axis=0))
    predicted, scores, _ = predictor.predict(box=np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]),
                                             multimask_output=False)
    assert predicted.shape == (1, *image.shape[:2]) and np.isfinite(scores).all()

    assert_no_secret(label_studio, [first.stdout, first.stderr, second.stdout, second.stderr], tmp_path)


@pytest.mark.e2e
def test_distill_refuses_a_task_image_at_a_private_address(label_studio, teacher, tmp_path):
    refused = label_studio.create_project(CONFIG, title="litesam distill e2e: SSRF")
    label_studio.upload_images(refused, scene_files([project_scene(0)[0]], exif_index=None))
    (bad,) = label_studio.import_tasks(refused, [{"image": PRIVATE_IMAGE}])
    result = run_distill(label_studio, refused, tmp_path, "run", "--variant", student_variant(teacher),
                         "--no-progress", "--max-steps", "1", LITESAM_ALLOWED_HOSTS="*")
    assert result.returncode == 2
    assert f"task {bad}: refusing to fetch an image from 169.254.169.254" in result.stderr
    assert "non-public address" in result.stderr and "Traceback" not in result.stderr
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # refused while listing: no output, no cache
    assert_no_secret(label_studio, [result.stdout, result.stderr], tmp_path)
