"""End to end: a whole-project SegEvery job run by a real worker (``litesam-backend worker``) whose only model
setting is ``LITESAM_CHECKPOINT`` naming an official SAM-family file, against a real Label Studio 1.23.2 and
a real Redis.

The files are state dicts of the reference code's own models, saved as those projects publish theirs (a bare
``torch.save``): Meta's ``Sam`` in the two-block ``sam_vit_tiny`` layout (input 256) and MobileSAM's ``vit_t``
(TinyViT-5M, input 1024). Their weights are seeded and RANDOM: no official weights exist here, so the masks are
meaningless and the test checks the plumbing only. The worker recognises the engine from the keys (no
``LITESAM_VARIANT``); the engines carry no AutoPPN head, so SegEvery prompts them with SAM's point grid, here
4×4 (the ``points_per_side`` job option; SAM's default 32×32 would only make the test slower).

Random weights: SAM's two mask filters (predicted IoU ≥ 0.88, stability score ≥ 0.95) keep no mask of these
models, and either one alone still drops every mask (checked on both files), so the job sets both to 0;
nothing else is opened (the grid has no proposal threshold).
"""

from __future__ import annotations

import hashlib

import pytest

from backend.jobs.board import JobBoard
from backend.jobs.options import JobOptions
from backend.store import decode_embedding, embedding_key
from tests.e2e.preannotate_support import (
    Workers,
    check_prediction,
    images,
    new_project,
    predictions_by_task,
    wait_job,
)
from tests.engine_support import mobile_sam, save_official, tiny_vit_sam
from tests.jobs_support import worker_env

#: The two filters that random weights fail, opened; the 4×4 grid keeps the job fast.
GRID_JOB = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "points_per_side": 4}

#: variant → (the reference model, the official file name, the engine's input size S).
ENGINES = {
    "sam_vit_tiny": (lambda: tiny_vit_sam(seed=11), "sam_vit_tiny.pth", 256),
    "mobile_sam": (lambda: mobile_sam(seed=12), "mobile_sam.pt", 1024),
}


@pytest.mark.e2e
@pytest.mark.parametrize("variant", ["sam_vit_tiny", pytest.param("mobile_sam", marks=pytest.mark.slow)])
def test_an_official_checkpoint_alone_preannotates_a_project_with_grid_prompts(
    label_studio, tmp_path, redis_db, variant
):
    reference, file_name, input_size = ENGINES[variant]
    checkpoint = save_official(reference(), tmp_path / file_name)
    version = f"{variant}-{hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:12]}"
    env = worker_env(
        tmp_path,
        checkpoint=checkpoint,
        label_studio_url=label_studio.url,
        api_key=label_studio.pat,
        variant=None,
    )
    assert "LITESAM_VARIANT" not in env
    files = images(4, seed=7)  # three PNGs of different sizes and an EXIF-rotated JPEG
    project, sizes = new_project(label_studio, files)
    pool = Workers(tmp_path, env)
    try:
        worker = pool.start("engine")
        board = JobBoard(redis_db)
        status, _ = board.start(project, options=JobOptions.from_json(GRID_JOB))
        status = wait_job(board, status["id"], pool, timeout=300)
    finally:
        pool.stop()

    assert (status["state"], status["total"], status["done"], status["skipped"], status["failed"]) == (
        "finished",
        4,
        4,
        0,
        0,
    ), (status, pool.logs())
    assert status["model_version"] == version
    for task, predictions in predictions_by_task(label_studio, sizes).items():
        (prediction,) = predictions  # exactly one per task, and it is the engine's
        assert prediction["model_version"] == version
        check_prediction(prediction, sizes[task])  # masks at the image's natural size

    # each image's embedding is stored for later clicks: the engine's 256 × S/16 × S/16 (decode_embedding
    # checks the stored float16 values fill exactly that shape)
    side = input_size // 16
    assert len(redis_db.keys(embedding_key(version, "*"))) == len(files)
    for _, data, natural in files:
        blob = redis_db.get(embedding_key(version, hashlib.sha256(data).hexdigest()))
        assert blob is not None
        stored = decode_embedding(blob)
        assert tuple(stored.features.shape) == (1, 256, side, side)
        assert stored.original_size == natural and max(stored.input_size) == input_size

    log = worker.log_text()
    assert f"model {version} loaded" in log
    assert "SegEvery prompted by a 4×4 point grid" in log
    assert "Traceback" not in log and label_studio.pat not in log
