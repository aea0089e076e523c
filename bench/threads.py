"""Thread-policy benchmark: torch threads per process, quiet and beside one other busy process.

Each configuration runs in a fresh child process (OpenMP reads ``OMP_WAIT_POLICY`` at start-up), RANDOM
WEIGHTS, one 1024×1024 synthetic image: the encoder, one click (one point, best mask, embedding set) and
SegEvery with N kept masks forced (as in ``bench/segevery.py``). Configurations alternate round by round,
so drift in the machine's load hits all of them alike; the table gives medians over rounds. "co-load" runs
a second process beside the child that keeps one core busy with float32 matrix products (another worker's
SegEvery, another gunicorn process's encoder).

    python bench/threads.py [--variant litesam_r640] [--kept 50] [--rounds 3] [--precision fp32]
                            [--encoder-runtime torch]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "1 thread": {"threads": 1, "env": {}},
    "2 threads": {"threads": 2, "env": {}},
    "2 threads, OMP_WAIT_POLICY=PASSIVE": {"threads": 2, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
}

BUSY = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a @ a\n"


def child(variant: str, kept: int, threads: int, precision: str, runtime: str) -> None:
    """Measure once in this process and print one JSON line (seconds)."""
    import numpy as np
    import torch

    from benchlib import interleaved
    from litesam.build import build_model
    from litesam.inference import apply_precision
    from litesam.predictor import LiteSamPredictor, encode_image
    from segevery import forced_segevery, synthetic_image

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(variant)
    apply_precision(model, precision, runtime, fuse=True)
    image = synthetic_image()
    predictor = LiteSamPredictor(model)
    predictor.set_image(image)
    segment = forced_segevery(model, kept)
    with torch.inference_mode():
        times = interleaved({"encoder": lambda: encode_image(model, image), "segevery": lambda: segment.generate(image)}, 1)
        clicks = []
        for x in np.linspace(100, 900, 21):
            start = time.perf_counter()
            predictor.predict(np.array([[x, 500.0]]), np.array([1]), best_only=True)
            clicks.append(time.perf_counter() - start)
    clicks = sorted(clicks[1:])
    times.update(click_p50=statistics.median(clicks), click_p95=clicks[int(0.95 * (len(clicks) - 1))])
    print(json.dumps(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="litesam_r640")
    parser.add_argument("--kept", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"))
    parser.add_argument("--encoder-runtime", default="torch", choices=("torch", "openvino", "auto"))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # internal: threads of a child run
    args = parser.parse_args()
    if args.child is not None:
        child(args.variant, args.kept, args.child, args.precision, args.encoder_runtime)
        return
    from benchlib import header
    from litesam.inference import load_average

    print(header(f"bench/threads.py: RANDOM WEIGHTS, {args.variant}, SegEvery with {args.kept} kept masks, "
                 f"{args.precision}, {args.encoder_runtime} encoder"))
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for load in ("quiet", "co-load"):
            busy = subprocess.Popen([sys.executable, "-c", BUSY]) if load == "co-load" else None
            try:
                for name, config in CONFIGS.items():
                    command = [sys.executable, __file__, "--child", str(config["threads"]), "--variant", args.variant,
                               "--kept", str(args.kept), "--precision", args.precision,
                               "--encoder-runtime", args.encoder_runtime]
                    env = {**os.environ, **config["env"]}
                    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
                    results.setdefault((load, name), []).append(json.loads(out.strip().splitlines()[-1]))
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
        print(f"round done; {load_average()}", flush=True)
    print(f"\nmedians of {args.rounds} rounds; {load_average()} (at end; includes this benchmark's own load)")
    print(f"{'load':<8} {'configuration':<36} {'encoder':>9} {'SegEvery':>9} {'click p50':>10} {'click p95':>10}")
    for (load, name), runs in results.items():
        med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        print(
            f"{load:<8} {name:<36} {med['encoder'] * 1e3:7.0f}ms {med['segevery'] * 1e3:7.0f}ms "
            f"{med['click_p50'] * 1e3:8.1f}ms {med['click_p95'] * 1e3:8.1f}ms"
        )


if __name__ == "__main__":
    main()
