"""``GET /health`` latency during bursts of 50 concurrent clicks: the health lane against plain gthread.

Two ``litesam-backend serve`` processes run side by side on one RANDOM-WEIGHT litesam_r640 checkpoint (latency
does not depend on the weight values), each 1 worker × ``--threads`` threads with ``--torch-threads`` torch
threads: the *candidate* with backend/gunicorn_config.py's HealthLaneWorker (what ``serve`` runs), the
*reference* with gunicorn's plain gthread worker (``GUNICORN_CMD_ARGS=--worker-class gthread``). Rounds
alternate between them: a burst of ``--clicks`` concurrent ``POST /predict`` (one keypoint each on a cached
1024×768 image) while a prober sends ``GET /health`` on a new connection every ``--probe-interval`` seconds
until the burst has been answered. Reports /health p50/p99/max and the burst's duration per server, and the
reference/candidate ratio of the p99. Usage::

    .venv/bin/python bench/health_under_load.py [--rounds 3] [--clicks 50] [--threads 4] [--torch-threads 2]
        [--redis-url redis://127.0.0.1:6379/12]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the backend-serving helper lives in tests/, the click helpers in bench/

import redis  # noqa: E402
import requests  # noqa: E402
import torch  # noqa: E402

from bench.predict_latency import ImageServer, click_body, make_image  # noqa: E402
from tests.backend_support import serve_backend  # noqa: E402

IMAGE = "/data/upload/1/0.jpg"


def burst(url: str, clicks: int, probe_interval: float) -> tuple[list[float], float]:
    """Send ``clicks`` concurrent clicks and probe /health until all are answered: (health ms, burst s)."""
    finished = threading.Event()
    health_ms: list[float] = []

    def probe() -> None:
        while not finished.is_set():
            started = time.perf_counter()
            answer = requests.get(f"{url}/health", timeout=30)
            health_ms.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200:
                raise RuntimeError(f"/health answered {answer.status_code}")
            time.sleep(probe_interval)

    def click(i: int) -> None:
        body = click_body(IMAGE, 10 + i % 80, 20 + i % 70)
        answer = requests.post(f"{url}/predict", json=body, timeout=300)
        if answer.status_code != 200:
            raise RuntimeError(f"/predict answered {answer.status_code}: {answer.text[:200]}")

    with ThreadPoolExecutor(clicks + 1) as pool:
        prober = pool.submit(probe)
        started = time.perf_counter()
        list(pool.map(click, range(clicks)))
        elapsed = time.perf_counter() - started
        finished.set()
        prober.result()
    return health_ms, elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=50)
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads (1 worker)")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--probe-interval", type=float, default=0.05)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12", help="flushed before and after")
    args = parser.parse_args()
    from litesam.build import build_model, save_checkpoint

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})")
    print(f"load average before: {os.getloadavg()}")
    redis.Redis.from_url(args.redis_url).flushdb()
    server = ImageServer({IMAGE: make_image(0)})
    results = {name: {"health": [], "bursts": []} for name in ("candidate", "reference")}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        torch.manual_seed(0)
        checkpoint = workdir / "litesam_r640-random.pt"
        save_checkpoint(build_model("litesam_r640"), checkpoint, "litesam_r640")
        urls = {}
        plain_gthread = {"GUNICORN_CMD_ARGS": "--worker-class gthread"}
        for name, extra in (("candidate", {}), ("reference", plain_gthread)):
            env = {
                **os.environ,
                **extra,
                "LITESAM_CHECKPOINT": str(checkpoint),
                "LITESAM_VARIANT": "litesam_r640",
                "REDIS_URL": args.redis_url,
                "LABEL_STUDIO_URL": server.url,
                "LABEL_STUDIO_API_KEY": "bench-legacy-token",
                "LITESAM_TORCH_THREADS": str(args.torch_threads),
                "LOG_LEVEL": "WARNING",
                "LITESAM_CACHE_DIR": str(workdir / "cache"),
            }
            served = serve_backend(workdir, env, threads=args.threads, name=name, timeout=120)
            urls[name], _ = stack.enter_context(served)
            requests.post(f"{urls[name]}/predict", json=click_body(IMAGE, 50, 50), timeout=120)  # load, cache
        for _ in range(args.rounds):
            for name in ("reference", "candidate"):
                health, elapsed = burst(urls[name], args.clicks, args.probe_interval)
                results[name]["health"] += health
                results[name]["bursts"].append(elapsed)
    server.close()
    redis.Redis.from_url(args.redis_url).flushdb()
    print(f"load average after: {os.getloadavg()}")
    print(f"{args.rounds} rounds × {args.clicks} concurrent clicks, 1 worker × {args.threads} threads, "
          f"torch {args.torch_threads} threads, litesam_r640 random weights")
    print(f"{'server':<34} {'probes':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'burst s':>8}")
    labels = {"candidate": "health lane (serve's worker)", "reference": "plain gthread"}
    for name in ("candidate", "reference"):
        health = results[name]["health"]
        burst_s = statistics.median(results[name]["bursts"])
        print(f"{labels[name]:<34} {len(health):>6} {statistics.median(health):>8.1f} "
              f"{percentile(health, 0.99):>8.1f} {max(health):>8.1f} {burst_s:>8.2f}")
    p99 = {name: percentile(results[name]["health"], 0.99) for name in results}
    ratio = p99["reference"] / p99["candidate"]
    print(f"p99 ratio reference / candidate: {ratio:.1f}x")


if __name__ == "__main__":
    main()
