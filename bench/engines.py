"""Engines benchmark: SAM ViT-B/L/H and MobileSAM beside Lite-SAM r640, in one process, on this CPU.

RANDOM WEIGHTS for every model (no official weights exist here; arithmetic cost does not depend on weight
values), each built as the backend builds it (``build_model(..., fuse=True)``). Per variant, measured in
interleaved rounds (variant A, B, C, A, B, C, …) so that a change of machine load hits all alike:

* encoder: image → embedding (resize, normalise, encoder) on a 1024×768 image, at the variant's input size;
* click: one point on the cached embedding → best mask at 1024×768 (prompt encoder, decoder, upscale);
* SegEvery from the cached embedding, once per input size (its cost depends on the embedding's grid, not on
  the encoder): engines use SAM's 32×32 grid with the automatic mask generator's defaults (three masks per
  point, filtered at low resolution); r640 its AutoPPN top-100 (threshold 0, as random weights propose
  nothing above it) and, for comparison, the same grid;
* Redis bytes per embedding (the backend's float16 format), parameters and fp32 weight memory, and the growth
  of the process's peak RSS during the variant's first encoder pass (variants run smallest first).

Then the preprocessing question (SAM resizes with PIL's bilinear filter; Lite-SAM with OpenCV's area filter):
time of each on a 1920×1080 image and how far their pixels are apart; and the fast paths: our ViT-B
encoder (attention through ``scaled_dot_product_attention``) against Meta's ``ImageEncoderViT``, our
TinyViT fused (BatchNorm folded) and plain against MobileSAM's, same weights, interleaved.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/engines.py
        [--variants litesam_r640 mobile_sam sam_vit_b] [--rounds 3] [--threads 2] [--points-per-side 32]
        [--skip-references]

The load average and CPU are printed: other processes on this machine (other helpers' test runs) share the
cores, so wall times are noisy; the process CPU time of each step is printed beside it (it counts the work
done, not the waiting; ``OMP_WAIT_POLICY=PASSIVE`` keeps OpenMP's spin-waiting out of it).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the reference packages' import shim lives in tests/

import numpy as np  # noqa: E402
import torch  # noqa: E402

from litesam.build import build_model  # noqa: E402
from litesam.variants import get_variant  # noqa: E402
from litesam.everything import SegEvery  # noqa: E402
from litesam.predictor import LiteSamPredictor  # noqa: E402


def synthetic_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """H×W×3 uint8: colour gradients, 40 discs and fine noise (so resizing filters differ as on photos)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width].astype(np.float32)
    image = np.stack([rows / height * 200, cols / width * 200, (1 - rows / height) * 120 + 40], axis=-1)
    for _ in range(40):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(min(height, width) / 40, min(height, width) / 8)
        image[(rows - cy) ** 2 + (cols - cx) ** 2 < radius**2] = rng.integers(0, 256, 3)
    image += rng.normal(0, 12, image.shape)
    return image.clip(0, 255).astype(np.uint8)


#: CPU seconds (this process, all threads) of every call timed by :func:`seconds`, in call order.
CPU_SECONDS: list[float] = []


def seconds(fn) -> float:
    """Wall-clock seconds of ``fn()``; its process CPU time is appended to :data:`CPU_SECONDS`."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    CPU_SECONDS.append(time.process_time() - cpu)
    return time.perf_counter() - start


def cpu_seconds(fn) -> float:
    """Process CPU seconds of ``fn()`` (robust to other processes taking the cores; spin-waits included)."""
    seconds(fn)
    return CPU_SECONDS[-1]


def machine() -> str:
    model_name = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if "model name" in line),
        platform.processor(),
    )
    return (
        f"CPU {model_name}, ISA {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}"
    )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def embedding_bytes(embedding) -> int | None:
    try:
        from backend.store import encode_embedding
    except ImportError:
        return None
    return len(encode_embedding(embedding))


def bench_variants(names: list[str], rounds: int) -> dict:
    """Encoder and click times in interleaved rounds; returns the cached embeddings and models for SegEvery."""
    image = synthetic_photo(768, 1024)
    models = {name: build_model(name, fuse=True) for name in names}
    timings = {name: {"encoder": [], "encoder_cpu": [], "click": [], "click_cpu": []} for name in names}
    facts = {}
    point = (np.array([[400.0, 300.0]]), np.array([1]))
    for round_index in range(rounds):
        for name, model in models.items():
            rss_before = peak_rss_mib()
            predictor = LiteSamPredictor(model)
            timings[name]["encoder"].append(seconds(lambda: predictor.set_image(image)))
            timings[name]["encoder_cpu"].append(CPU_SECONDS[-1])
            predictor.predict(*point, best_only=True)  # warm the decoder once
            clicks = [seconds(lambda: predictor.predict(*point, best_only=True)) for _ in range(5)]
            timings[name]["click"].append(statistics.median(clicks))
            timings[name]["click_cpu"].append(statistics.median(CPU_SECONDS[-5:]))
            if round_index == 0:
                embedding = predictor.get_embedding()
                facts[name] = {
                    "params": sum(p.numel() for p in model.parameters()),
                    "rss_growth": peak_rss_mib() - rss_before,
                    "redis": embedding_bytes(embedding),
                    "embedding": embedding,
                }
        print(f"round {round_index + 1}/{rounds} done, load average {os.getloadavg()}", flush=True)
    base = "litesam_r640" if "litesam_r640" in names else names[0]
    median = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in timings.items()}
    print(f"\n(wall ms, and process CPU ms in brackets; parameters after fusing; ratios of wall times to {base})")
    print(f"{'variant':<13}{'input':>6}{'params':>13}{'weights':>9}{'RSS+':>8}{'encoder':>18}{'ratio':>7}"
          f"{'click':>16}{'ratio':>7}{'Redis B':>10}")
    for name in names:
        m, f = median[name], facts[name]
        print(
            f"{name:<13}{get_variant(name).image_size:>6}{f['params']:>13,}{f['params'] * 4 / 2**20:>7.0f}Mi"
            f"{f['rss_growth']:>6.0f}Mi{m['encoder'] * 1e3:>9.0f} ({m['encoder_cpu'] * 1e3:>6.0f})"
            f"{m['encoder'] / median[base]['encoder']:>7.1f}{m['click'] * 1e3:>8.1f} ({m['click_cpu'] * 1e3:>5.1f})"
            f"{m['click'] / median[base]['click']:>7.1f}{f['redis'] if f['redis'] is not None else '-':>10}"
        )
    return {name: (models[name], facts[name]["embedding"]) for name in names}


def bench_segevery(cached: dict, points_per_side: int) -> None:
    """SegEvery from a cached embedding, once per input size: the decoder work depends only on the embedding's
    grid (all 1024-input engines share it), not on the encoder that made it."""
    done = set()
    for name, (model, embedding) in cached.items():
        cfg = get_variant(name)
        if cfg.image_size in done and cfg.is_engine:
            continue
        done.add(cfg.image_size)
        if cfg.is_engine:
            # SAM's grid and AMG thresholds, but the predicted-IoU filter open: random weights fail it, and
            # SegEvery skips the masks of prompts it drops, so with it the decoding trained weights need
            # would not be timed.
            grid = SegEvery(model, points_per_side=points_per_side, pred_iou_thresh=0.0)
            seconds_grid = seconds(lambda: grid.generate_from_embedding(embedding))
            print(f"SegEvery {name} (and every engine at {cfg.image_size}): SAM grid {points_per_side}² ×3 masks, "
                  f"AMG thresholds but the IoU filter open: {seconds_grid:.1f} s, {CPU_SECONDS[-1]:.1f} CPU s  "
                  f"(load {os.getloadavg()[0]:.1f})")
        else:
            autoppn = SegEvery(model, proposal_score_thresh=0.0)
            grid = SegEvery(model, prompt_mode="grid", points_per_side=points_per_side)
            seconds_autoppn = seconds(lambda: autoppn.generate_from_embedding(embedding))
            cpu_autoppn = CPU_SECONDS[-1]
            seconds_grid = seconds(lambda: grid.generate_from_embedding(embedding))
            print(f"SegEvery {name}: AutoPPN top-{cfg.proposals.top_k} {seconds_autoppn:.2f} s ({cpu_autoppn:.2f} "
                  f"CPU s); SAM grid {points_per_side}² ×3 masks {seconds_grid:.1f} s ({CPU_SECONDS[-1]:.1f} CPU s)"
                  f"  (load {os.getloadavg()[0]:.1f})")


def bench_preprocessing(repeats: int = 10) -> None:
    from litesam.transforms import ResizeLongestSide

    image = synthetic_photo(1080, 1920, seed=1)
    pil, opencv = ResizeLongestSide(1024, "pil_bilinear"), ResizeLongestSide(1024, "opencv")
    times = {"pil_bilinear": [], "opencv": []}
    for _ in range(repeats):
        times["pil_bilinear"].append(seconds(lambda: pil.apply_image(image)))
        times["opencv"].append(seconds(lambda: opencv.apply_image(image)))
    difference = np.abs(pil.apply_image(image).astype(np.int16) - opencv.apply_image(image).astype(np.int16))
    print(
        f"\nresize 1920×1080 → 1024×576: PIL bilinear {statistics.median(times['pil_bilinear']) * 1e3:.1f} ms, "
        f"OpenCV area {statistics.median(times['opencv']) * 1e3:.1f} ms; pixels differ by mean "
        f"{difference.mean():.2f}, max {difference.max()} (0–255), {(difference > 2).mean() * 100:.1f} % by more than 2"
    )
    upscale = synthetic_photo(300, 400, seed=2)
    up = np.abs(pil.apply_image(upscale).astype(np.int16) - opencv.apply_image(upscale).astype(np.int16))
    print(f"resize 400×300 → 1024×768: PIL vs OpenCV bilinear differ by mean {up.mean():.2f}, max {up.max()}")


def bench_references(rounds: int) -> None:
    """Our encoders against the reference implementations, same weights, interleaved."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from tests import sam_reference as ref

            mobile = ref.mobile_sam()
        except ImportError as error:
            print(f"\nreferences not installed ({error}); install requirements-dev.txt to compare")
            return
    torch.manual_seed(0)
    x = torch.randn(1, 3, 1024, 1024)
    meta_b = ref.sam_model_registry["vit_b"]().image_encoder.eval()
    ours_b = build_model("sam_vit_b", fuse=True).image_encoder
    ours_b.load_state_dict(meta_b.state_dict())
    meta_t = mobile.sam_model_registry["vit_t"]().image_encoder.eval()
    state = {k: v for k, v in meta_t.state_dict().items() if not k.startswith(("head.", "norm_head."))}
    plain_t = build_model("mobile_sam").image_encoder
    plain_t.load_state_dict(state)
    fused_t = build_model("mobile_sam").image_encoder
    fused_t.load_state_dict(state)
    fused_t.fuse_for_inference()
    contenders = {
        "Meta ImageEncoderViT-B": lambda: meta_b(x),
        "ours sam_vit_b": lambda: ours_b(x),
        "MobileSAM TinyViT": lambda: meta_t(x),
        "ours mobile_sam plain": lambda: plain_t(x),
        "ours mobile_sam fused": lambda: fused_t(x),
    }
    times = {name: [] for name in contenders}
    cpu = {name: [] for name in contenders}
    with torch.inference_mode():
        for fn in contenders.values():
            fn()  # warm-up
        for _ in range(rounds):
            for name, fn in contenders.items():
                times[name].append(seconds(fn))
                cpu[name].append(CPU_SECONDS[-1])
    print(f"\nencoders at 1024, same weights, median of {rounds} interleaved rounds (load {os.getloadavg()}):")
    for name, values in times.items():
        wall, work = statistics.median(values), statistics.median(cpu[name])
        print(f"  {name:<24}{wall * 1e3:8.0f} ms  ({work * 1e3:.0f} CPU ms)")
    vit = statistics.median(times["Meta ImageEncoderViT-B"]) / statistics.median(times["ours sam_vit_b"])
    tiny = statistics.median(times["MobileSAM TinyViT"]) / statistics.median(times["ours mobile_sam fused"])
    plain = statistics.median(times["MobileSAM TinyViT"]) / statistics.median(times["ours mobile_sam plain"])
    print(f"  speed-up over the reference: ViT-B {vit:.2f}×, TinyViT fused {tiny:.2f}× (plain {plain:.2f}×)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["litesam_r640", "mobile_sam", "sam_vit_b"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-references", action="store_true")
    parser.add_argument("--points-per-side", type=int, default=32, help="SegEvery grid side (SAM's default 32)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("RANDOM WEIGHTS (cost only).", machine())
    print("Other processes share this machine: compare ratios, not absolute times.")
    with torch.inference_mode():
        cached = bench_variants(args.variants, args.rounds)
        bench_segevery(cached, args.points_per_side)
    bench_preprocessing()
    if not args.skip_references:
        bench_references(args.rounds)
    print("\nload average at the end", os.getloadavg())


if __name__ == "__main__":
    main()
