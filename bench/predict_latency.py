"""Latency of one interactive click: ``POST /predict`` over HTTP on a 1024×768 image, end to end.

For each variant this script writes a RANDOM-WEIGHT checkpoint (latency does not depend on the weight values;
the masks are meaningless), starts ``litesam-backend serve`` with the backend's defaults (gunicorn 1 worker ×
4 threads, 1 torch thread per inference, inference slots = cores, LITESAM_PRECISION=fp32), serves the images from a local HTTP server that plays Label Studio's ``/data/upload/``, and
measures:

* cold: the first click on an image never seen (download, decode, encoder, Redis store, decoder, RLE);
* warm: further clicks on an image whose embedding is cached (download + hash, decoder, RLE), one after the
  other;
* burst: ``--burst`` warm clicks sent at once from as many clients (several annotators, or a fast one).

Each request is timed by the client from send to full answer. The first click after start-up (model loading)
is not counted. ``--checkpoint`` serves trained weights instead (e.g. the demo checkpoint), so the answers
carry a real mask's RLE (a few KB) instead of a random-weight noise mask's (hundreds of KB). Usage::

    .venv/bin/python bench/predict_latency.py [--variants litesam_r640 litesam_r1024]
        [--checkpoint litesam/weights/litesam_tiny_synthetic.pt]
        [--cold 10] [--warm 30] [--burst 10] [--torch-threads 1] [--precision fp32]
        [--redis-url redis://127.0.0.1:6379/12]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the backend-serving helper lives in tests/

import numpy as np  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from tests.backend_support import serve_backend  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from benchlib import header  # noqa: E402
from litesam.inference import load_average  # noqa: E402

WIDTH, HEIGHT = 1024, 768
CONFIG = (REPO / "label_config.xml").read_text()


def make_image(seed: int) -> bytes:
    """A 1024×768 JPEG with smooth gradients and a few shapes (photo-like size on disk)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    base = np.stack([x / WIDTH * 255, y / HEIGHT * 255, (x + y) / (WIDTH + HEIGHT) * 255], axis=2)
    base += rng.normal(0, 6, size=base.shape)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.integers(0, WIDTH - 200), rng.integers(0, HEIGHT - 200)
        draw.ellipse(
            [x0, y0, x0 + rng.integers(60, 200), y0 + rng.integers(60, 200)],
            fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
        )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


class ImageServer:
    """Serves ``/data/upload/1/<i>.jpg`` from memory on 127.0.0.1 (plays Label Studio's upload route)."""

    def __init__(self, images: dict[str, bytes]) -> None:
        files = images

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                body = files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def click_body(path: str, x: float, y: float) -> dict:
    region = {
        "original_width": WIDTH,
        "original_height": HEIGHT,
        "image_rotation": 0,
        "is_positive": True,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": ["Object"], "labels": ["Object"]},
        "from_name": "point",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }
    return {
        "tasks": [{"id": 1, "data": {"image": path}}],
        "project": "1.0",
        "label_config": CONFIG,
        "params": {"context": {"result": [region]}},
    }


def timed_click(
    session: requests.Session, url: str, path: str, x: float, y: float, sizes: list[int] | None = None
) -> float:
    """Milliseconds from sending one click to having its whole answer; appends the answer's size to ``sizes``."""
    started = time.perf_counter()
    response = session.post(f"{url}/predict", json=click_body(path, x, y), timeout=120)
    elapsed = time.perf_counter() - started
    if response.status_code != 200 or not response.json()["results"][0]["result"]:
        raise RuntimeError(f"/predict failed: {response.status_code} {response.text[:300]}")
    if sizes is not None:
        sizes.append(len(response.content))
    return elapsed * 1000


def burst_clicks(url: str, path: str, count: int, rng: np.random.Generator) -> list[float]:
    """``count`` warm clicks sent at once, each from its own client; their latencies in milliseconds."""
    points = rng.uniform(5, 95, (count, 2))
    sessions = [requests.Session() for _ in range(count)]
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(timed_click, sessions[i], url, path, *points[i]) for i in range(count)]
        return [f.result() for f in futures]


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    p95_index = min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(ordered[p95_index], 1),
        "mean_ms": round(statistics.fmean(ordered), 1),
    }


def random_checkpoint(variant: str, workdir: Path) -> Path:
    """A seeded random-weight checkpoint of ``variant`` in ``workdir``."""
    from litesam.build import build_model, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(build_model(variant), workdir / f"{variant}-random.pt", variant)


def bench_variant(name: str, checkpoint: Path, variant: str, args: argparse.Namespace, workdir: Path) -> dict:
    """Cold, warm and burst clicks on a backend serving ``checkpoint``; ``variant`` is LITESAM_VARIANT
    ("": the checkpoint's own)."""
    images = {f"/data/upload/1/{i}.jpg": make_image(i) for i in range(args.cold + 2)}
    server = ImageServer(images)
    redis.Redis.from_url(args.redis_url).flushdb()
    env = {
        **os.environ,
        "LITESAM_CHECKPOINT": str(checkpoint),
        "LITESAM_VARIANT": variant,
        "REDIS_URL": args.redis_url,
        "LABEL_STUDIO_URL": server.url,
        "LABEL_STUDIO_API_KEY": "bench-legacy-token",
        "LITESAM_TORCH_THREADS": str(args.torch_threads),
        "LITESAM_PRECISION": args.precision,
        "LITESAM_ENCODER_RUNTIME": args.encoder_runtime,
        "LOG_LEVEL": "WARNING",
        "LITESAM_CACHE_DIR": str(workdir / "cache"),
    }
    try:
        served = serve_backend(workdir, env, threads=args.threads, name=f"{name}-backend", timeout=120)
        with served as (url, _):
            session = requests.Session()
            rng = np.random.default_rng(0)
            timed_click(session, url, "/data/upload/1/0.jpg", 50, 50)  # model load: not counted
            sizes: list[int] = []
            cold = [
                timed_click(session, url, f"/data/upload/1/{i}.jpg", 40, 60, sizes)
                for i in range(1, args.cold + 1)
            ]
            warm_path = f"/data/upload/1/{args.cold + 1}.jpg"
            timed_click(session, url, warm_path, 50, 50)  # computes this image's embedding
            warm = [
                timed_click(session, url, warm_path, *rng.uniform(5, 95, 2), sizes) for _ in range(args.warm)
            ]
            burst = burst_clicks(url, warm_path, args.burst, rng)
    finally:
        server.close()
        redis.Redis.from_url(args.redis_url).flushdb()
    image_kb = statistics.fmean(len(b) for b in images.values()) / 1024
    return {
        "variant": name,
        "cold": summary(cold),
        "warm": summary(warm),
        "burst": summary(burst),
        "image_kb": round(image_kb),
        "answer_kb": round(statistics.fmean(sizes) / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["litesam_r640", "litesam_r1024"])
    parser.add_argument("--checkpoint", type=Path, help="serve these trained weights instead (real masks)")
    parser.add_argument("--cold", type=int, default=10, help="clicks on new images per variant")
    parser.add_argument("--warm", type=int, default=30, help="clicks on a cached image per variant")
    parser.add_argument("--burst", type=int, default=10, help="warm clicks sent at once per variant")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads (1 worker)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads in the backend")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"), help="LITESAM_PRECISION")
    parser.add_argument("--encoder-runtime", default="auto", choices=("torch", "openvino", "auto"),
                        help="LITESAM_ENCODER_RUNTIME")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12", help="flushed before and after")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint is not None:
            results = [bench_variant(args.checkpoint.stem, args.checkpoint, "", args, Path(tmp))]
        else:
            results = [
                bench_variant(v, random_checkpoint(v, Path(tmp)), v, args, Path(tmp)) for v in args.variants
            ]
    load_after = os.getloadavg()[0]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    weights = (
        f"trained weights {args.checkpoint} (real masks)" if args.checkpoint is not None else
        "RANDOM WEIGHTS (checkpoints written by this script; latency does not depend on the weight values, "
        "the masks are meaningless)"
    )
    print(header(f"bench/predict_latency.py: {weights}"))
    print(
        f"backend: 1 gunicorn worker × {args.threads} threads, {args.torch_threads} torch thread(s) per inference, "
        f"LITESAM_PRECISION={args.precision}, LITESAM_ENCODER_RUNTIME={args.encoder_runtime}; "
        f"one click = POST /predict over HTTP, {WIDTH}×{HEIGHT} JPEG, "
        "keypoint → brush RLE; a warm click on a Label Studio upload needs no download"
    )
    print(f"1-minute load average before / after the run: {load_before:.2f} / {load_after:.2f}; {load_average()}")
    width = max(15, *(len(r["variant"]) + 2 for r in results))
    print(f"{'variant':<{width}}{'click':<7}{'n':>4}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}")
    for result in results:
        for kind in ("warm", "burst", "cold"):
            s = result[kind]
            print(
                f"{result['variant']:<{width}}{kind:<7}{s['n']:>4}"
                f"{s['p50_ms']:>10}{s['p95_ms']:>10}{s['mean_ms']:>10}"
            )
    print(
        "mean image size: "
        + ", ".join(f"{r['variant']} {r['image_kb']} KB" for r in results)
        + "; mean answer size"
        + ("" if args.checkpoint else " (random-weight masks are noisy: their RLE is far longer than a real mask's)")
        + ": "
        + ", ".join(f"{r['variant']} {r['answer_kb']} KB" for r in results)
    )


if __name__ == "__main__":
    main()
