"""Throughput of project pre-annotation: tasks per minute with 1 and 2 workers, and embedding bytes per image.

The weights are RANDOM (a seeded ``litesam_r640`` checkpoint written by this script): no Lite-SAM weights are
published, and speed does not depend on the weight values. The masks are meaningless. SegEvery's default
filters keep no mask of an untrained model, so the filters are opened (predicted IoU ≥ 0, stability ≥ 0,
AutoPPN proposals ≥ 0): every task then gets the masks that survive NMS, and they are encoded and written
like real ones. Random-weight masks all look alike, so NMS leaves about one per task; ``--masks 50`` (the
realistic mode: trained weights keep ~50 masks per image) also turns NMS off and keeps exactly 50 masks
per task, so upscaling, brush RLE and the writes to Label Studio carry a trained model's load — except that
random-weight masks are pixel noise, whose RLE is ~100× a real mask's. ``--output polygon`` writes
polygon regions instead of brush RLE (the project's config gains a ``<PolygonLabels>`` with the same labels);
noise masks make pathological polygons, so that mode is meant for trained weights. ``--checkpoint`` runs trained
weights instead (e.g. the demo checkpoint, trained on synthetic shapes) with their checkpoint's calibrated filters
(``--masks N`` still forces N): real, smooth masks, so the Label Studio side carries a real mask's load.

What runs is the real thing: a real Label Studio 1.23.2 (the test harness's, started from its template), a
50-task project of 1024×768 JPEG uploads, ``litesam-backend worker`` processes, Redis. For each worker count the script uploads a fresh project, flushes its Redis
database (so every embedding is computed), starts the workers, queues the job and times it from queueing to
its end (listing, downloads, encoder, SegEvery, RLE, writes). The machine's cores are shared out evenly
(``LITESAM_TORCH_THREADS`` = cores ÷ workers). Usage::

    .venv/bin/python bench/preannotate.py [--tasks 50] [--workers 1 2] [--masks 50] [--variant litesam_r640]
        [--checkpoint litesam/weights/litesam_tiny_synthetic.pt] [--precision fp32] [--output brush|polygon]
        [--redis-url redis://127.0.0.1:6379/14] [--json results.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the Label Studio harness lives in tests/e2e

import numpy as np  # noqa: E402
import redis  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from backend.jobs.board import JobBoard  # noqa: E402
from backend.jobs.options import JobOptions  # noqa: E402
from backend.store import embedding_key  # noqa: E402
from litesam.build import build_model, save_checkpoint  # noqa: E402
from tests.e2e.labelstudio import LabelStudioServer  # noqa: E402
from tests.e2e.processes import ManagedProcess, base_env  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from benchlib import header  # noqa: E402
from litesam.inference import load_average  # noqa: E402

WIDTH, HEIGHT = 1024, 768
CONFIG = (REPO / "label_config.xml").read_text()
#: The recommended config with polygon output beside the brush (``--output polygon``).
POLYGON_CONFIG = CONFIG.replace(
    '  <KeyPointLabels name="point"',
    '  <PolygonLabels name="polygon" toName="image">\n    <Label value="Object"/>\n    <Label value="Person"/>\n'
    '    <Label value="Vehicle"/>\n  </PolygonLabels>\n  <KeyPointLabels name="point"',
    1,
)
OPEN_FILTERS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "proposal_score_thresh": 0.0}


def photo(seed: int) -> bytes:
    """A 1024×768 JPEG: smooth colour gradients, sensor-like noise and a few filled shapes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    tint = rng.uniform(0.3, 1.0, size=3)
    pixels = np.stack([x / WIDTH, y / HEIGHT, 1 - x / WIDTH], axis=2) * tint * 220
    pixels += rng.normal(0, 5, size=pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        left, top = int(rng.integers(0, WIDTH - 240)), int(rng.integers(0, HEIGHT - 240))
        box = [left, top, left + int(rng.integers(50, 240)), top + int(rng.integers(50, 240))]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def run_once(
    ls: LabelStudioServer, images: list[bytes], workers: int, args, checkpoint: Path, workdir: Path
) -> dict:
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    config = POLYGON_CONFIG if args.output == "polygon" else CONFIG
    project = ls.create_project(config, title=f"bench {workers} worker(s)")
    ls.upload_images(project, [(f"photo{i:03d}.jpg", data) for i, data in enumerate(images)])
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = base_env(
        workdir / f"home{workers}",
        LABEL_STUDIO_URL=ls.url,
        LABEL_STUDIO_API_KEY=ls.pat,
        REDIS_URL=args.redis_url,
        LITESAM_CHECKPOINT=str(checkpoint),
        LITESAM_VARIANT="" if args.checkpoint else args.variant,
        LITESAM_TORCH_THREADS=str(threads),
        LITESAM_PRECISION=args.precision,
        OMP_NUM_THREADS=str(threads),
        LOG_LEVEL="WARNING",
    )
    processes = []
    try:
        for i in range(workers):
            argv = [sys.executable, "-m", "backend.cli", "worker", "--name", f"bench{workers}-{i}"]
            process = ManagedProcess(
                f"worker {i}",
                argv,
                env={**env, "LOG_LEVEL": "INFO"},
                cwd=REPO,
                log_path=workdir / f"worker{workers}-{i}.log",
            )
            processes.append(process.start())
        for process in processes:
            process.wait_log(r"model \S+ loaded", timeout=180)
        board = JobBoard(client)
        forced = {"box_nms_thresh": 1.0, "max_masks": args.masks} if args.masks else {}
        # Random weights need the filters opened; trained weights keep their checkpoint's unless N masks are forced.
        opened = OPEN_FILTERS if args.checkpoint is None or args.masks else {}
        options = JobOptions.from_json({**opened, **forced, "chunk_size": args.chunk_size, "output": args.output})
        started = time.perf_counter()
        status, _ = board.start(project, options=options, source="bench")
        while status["state"] not in ("finished", "failed"):
            time.sleep(0.2)
            status = board.status(status["id"])
        seconds = time.perf_counter() - started
    finally:
        for process in processes:
            process.stop()
    if status["state"] != "finished" or status["done"] != len(images):
        raise SystemExit(f"the job did not pre-annotate every task: {json.dumps(status)[:2000]}")
    keys = client.keys(embedding_key(status["model_version"], "*"))
    stored = [client.strlen(k) for k in keys]
    in_memory = [client.memory_usage(k) or 0 for k in keys]
    client.flushdb()
    return {
        "workers": workers,
        "torch_threads_per_worker": threads,
        "tasks": len(images),
        "seconds": round(seconds, 2),
        "tasks_per_minute": round(len(images) / seconds * 60, 1),
        "output": args.output,
        "regions_per_task": round(status["regions"] / len(images), 1),
        "embeddings_stored": len(keys),
        "embedding_bytes_per_image": int(statistics.mean(stored)) if stored else 0,
        "redis_memory_bytes_per_embedding": int(statistics.mean(in_memory)) if in_memory else 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--variant", default="litesam_r640", help="of the random-weight checkpoint")
    parser.add_argument("--checkpoint", type=Path, help="trained weights to run instead of random ones")
    parser.add_argument("--masks", type=int, default=0, help="keep exactly this many masks per task (NMS off)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                        help="LITESAM_PRECISION of the workers")
    parser.add_argument("--output", default="brush", choices=("brush", "polygon"), help="regions written")
    parser.add_argument("--chunk-size", type=int, default=5, help="tasks per chunk job (default 5)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help="flushed before and after")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    kept = f"exactly {args.masks} masks per task (NMS off)" if args.masks else "the masks NMS leaves"
    if args.checkpoint is None:
        weights = f"{args.variant} with RANDOM weights (masks are meaningless), SegEvery filters opened"
    else:
        filters = "filters opened" if args.masks else "the checkpoint's calibrated filters (else SAM's)"
        weights = f"trained weights {args.checkpoint}, {filters}"
    print(header(
        f"Pre-annotation benchmark: {weights}, {args.tasks} tasks of {WIDTH}×{HEIGHT} JPEG, {kept}, "
        f"{args.output} regions, LITESAM_PRECISION={args.precision}"
    ))
    images = [photo(seed) for seed in range(args.tasks)]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-preannotate-") as tmp:
        workdir = Path(tmp)
        torch.manual_seed(0)
        checkpoint = args.checkpoint or save_checkpoint(
            build_model(args.variant), workdir / "random.pt", args.variant
        )
        ls = LabelStudioServer.start(workdir / "label-studio")
        try:
            for workers in args.workers:
                result = run_once(ls, images, workers, args, checkpoint, workdir)
                results.append(result)
                print(
                    f"  {workers} worker(s) × {result['torch_threads_per_worker']} torch thread(s): "
                    f"{result['tasks_per_minute']:.1f} tasks/min ({result['seconds']:.1f} s for {args.tasks} tasks, "
                    f"{result['regions_per_task']:.1f} {args.output} regions/task); embedding in Redis "
                    f"{result['embedding_bytes_per_image']} B/image "
                    f"({result['redis_memory_bytes_per_embedding']} B with Redis overhead)"
                )
        finally:
            ls.stop()
    print(f"{load_average()} (at the end)")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"variant": args.variant, "weights": "random", "results": results}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
