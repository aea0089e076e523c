"""Mask-decoder benchmark: what glibc's malloc settings, SegEvery's IoU-filter skip and the kept image side
change.

Random weights (no trained Lite-SAM weights exist at these sizes), one 1×C×h×w embedding of the variant,
``--prompts`` prompts (a random point and box each, as AutoPPN gives), 3 masks a prompt, one thread.

* ``malloc``: the decoder with glibc's default thresholds against :func:`litesam.allocator.keep_freed_memory`
  (what ``serve``, ``worker`` and the ``litesam`` CLI set at start-up). Both are process-wide, so each is
  timed in fresh child processes, the two kinds alternating (``--processes`` of each); a child reports the
  median of ``--rounds`` decodes after one warm-up.
* ``skip``: the decoder with ``min_iou`` (SegEvery passes its predicted-IoU threshold: prompts none of whose
  masks reach it are not upscaled) against the same decode without it, with the threshold set where it
  drops 0 %, 50 % and 90 % of the prompts (by their predicted IoUs), interleaved in one process. The kept
  prompts' masks are checked equal to the full decode's.
* ``click``: a warm click as the backend makes it (``LiteSamPredictor.predict``: one point, three masks, the
  best one upscaled to a 1024×768 image) with the per-image work kept from the previous click on the image
  (the transformer's image side, ``SHARED_IMAGES``, and the prompt encoder's dense positional encoding, as
  every process now does) against both computed afresh for each click, interleaved in one process; the
  answers are checked equal.

    python bench/decoder.py [--variant litesam_r640] [--prompts 32] [--rounds 5] [--processes 5]
                            [--sections malloc skip click]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from benchlib import header, interleaved, set_threads
from litesam.build import build_model
from litesam.inference import load_average
from litesam.modeling.mask_decoder import SHARED_IMAGES
from litesam.predictor import LiteSamPredictor


def decoder_inputs(variant: str, prompts: int) -> tuple[torch.nn.Module, dict[str, object]]:
    """(the variant's random-weight decoder, its keyword arguments for ``prompts`` prompts)."""
    torch.manual_seed(0)
    model = build_model(variant, fuse=True).eval()
    side, grid = model.img_size, model.img_size // 16
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(prompts, 1, 2, generator=generator) * side
    corners = torch.rand(prompts, 2, 2, generator=generator) * side
    boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
    labels = torch.ones(prompts, 1, dtype=torch.int64)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=(points, labels), boxes=boxes, masks=None)
    embedding = torch.randn(1, model.mask_decoder.transformer_dim, grid, grid, generator=generator)
    return model.mask_decoder, {
        "image_embeddings": embedding,
        "image_pe": model.prompt_encoder.get_dense_pe().detach(),
        "sparse_prompt_embeddings": sparse,
        "dense_prompt_embeddings": dense,
        "multimask_output": True,
    }


def child(settings: str, variant: str, prompts: int, rounds: int) -> None:
    """One process of the malloc comparison: prints ``{"ms": median decode}`` as JSON."""
    set_threads(1)
    if settings == "fixed":
        from litesam.allocator import keep_freed_memory

        assert keep_freed_memory(), "glibc refused the settings"
    decoder, inputs = decoder_inputs(variant, prompts)
    with torch.inference_mode():
        decoder(**inputs)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            decoder(**inputs)
            times.append(time.perf_counter() - start)
    print(json.dumps({"ms": statistics.median(times) * 1e3}))


def bench_malloc(variant: str, prompts: int, rounds: int, processes: int) -> None:
    results: dict[str, list[float]] = {"defaults": [], "fixed": []}
    for _ in range(processes):
        for settings in results:
            command = [sys.executable, __file__, "--child", settings, "--variant", variant,
                       "--prompts", str(prompts), "--rounds", str(rounds)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[settings].append(json.loads(out.splitlines()[-1])["ms"])
    default_ms, fixed_ms = (statistics.median(results[k]) for k in ("defaults", "fixed"))
    print(f"\nmalloc: {prompts} prompts through {variant}'s decoder, median of {processes} fresh processes "
          f"each ({rounds} decodes a process)")
    for name, values in results.items():
        print(f"  {name:8s} {statistics.median(values):8.1f} ms   (processes: "
              f"{', '.join(f'{v:.0f}' for v in values)})")
    print(f"  fixed thresholds: {default_ms / fixed_ms:.2f}× the defaults' speed")


def bench_skip(variant: str, prompts: int, rounds: int) -> None:
    decoder, inputs = decoder_inputs(variant, prompts)
    with torch.inference_mode():
        full_masks, iou = decoder(**inputs)
    best = iou.clamp(0.0, 1.0).max(dim=1).values.sort().values  # a prompt is upscaled if its best passes
    thresholds = {"0 %": None, "50 %": float(best[prompts // 2]), "90 %": float(best[-max(1, prompts // 10)])}
    print(f"\nIoU-filter skip: {prompts} prompts through {variant}'s decoder, "
          f"medians of {rounds} interleaved rounds")
    jobs = {}
    for dropped, threshold in thresholds.items():
        def job(threshold=threshold):
            with torch.inference_mode():
                return decoder(**inputs, min_iou=threshold)

        jobs[dropped] = job
        masks, _ = job()
        kept = torch.isfinite(masks).all(dim=(1, 2, 3))
        assert torch.equal(masks[kept], full_masks[kept]), "the skip changed a kept prompt's masks"
        setting = "off" if threshold is None else f"{threshold:.3f}"
        print(f"  min_iou {setting}: {prompts - int(kept.sum())} of {prompts} prompts dropped")
    times = interleaved(jobs, rounds)
    for dropped, seconds in times.items():
        print(f"  {dropped:>4s} of the prompts dropped: {seconds * 1e3:8.1f} ms   "
              f"{times['0 %'] / seconds:.2f}× the full decode")


def bench_click(variant: str, rounds: int) -> None:
    torch.manual_seed(0)
    model = build_model(variant, fuse=True).eval()
    predictor = LiteSamPredictor(model)
    image = np.random.default_rng(0).integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    predictor.set_image(image)
    shared = model.mask_decoder._shared_images
    clicks = iter(np.random.default_rng(1).uniform((0, 0), (1024, 768), (10**6, 2)))

    def click(kept: bool, point: np.ndarray | None = None):
        """One click; ``kept=False`` computes the image side and the positional encoding afresh, leaving
        what the decoder and the prompt encoder keep untouched for the next kept click."""
        point = next(clicks)[None] if point is None else point
        if kept:
            return predictor.predict(point, np.array([1]), best_only=True)
        encoding, shared.size = model.prompt_encoder._dense_pe, 0
        model.prompt_encoder._dense_pe = None
        try:
            return predictor.predict(point, np.array([1]), best_only=True)
        finally:
            model.prompt_encoder._dense_pe, shared.size = encoding, SHARED_IMAGES

    point = np.array([[300.0, 200.0]])
    answers = [click(kept, point) for kept in (False, True, True)]
    for answer in answers[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(answer, answers[0], strict=True)), "answers differ"
    print(f"\nwarm click: {variant}, one point, best of three masks upscaled to 1024×768, "
          f"medians of {rounds} interleaved rounds (answers equal)")
    times = interleaved({"computed each click": lambda: click(False), "kept": lambda: click(True)}, rounds)
    for name, seconds in times.items():
        print(f"  {name:>20s}: {seconds * 1e3:7.2f} ms   {times['computed each click'] / seconds:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="litesam_r640")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=5, help="fresh processes of each malloc setting")
    parser.add_argument("--sections", nargs="+", default=["malloc", "skip", "click"],
                        choices=["malloc", "skip", "click"])
    parser.add_argument("--child", choices=["defaults", "fixed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.variant, args.prompts, args.rounds)
        return
    set_threads(1)
    # header() applies the fixed malloc settings to this process, as serving processes do; the malloc
    # section's children choose their own.
    print(header(f"bench/decoder.py: {args.variant}, {args.prompts} prompts, 1 thread"))
    if "malloc" in args.sections:
        bench_malloc(args.variant, args.prompts, args.rounds, args.processes)
    if "skip" in args.sections:
        bench_skip(args.variant, args.prompts, args.rounds)
    if "click" in args.sections:
        bench_click(args.variant, args.rounds)
    print(f"\n{load_average()} (at end)")


if __name__ == "__main__":
    main()
