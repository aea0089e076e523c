"""SegEvery benchmark: Lite-SAM r640 / r1024 against Meta's SAM ViT-B automatic mask generator.

One process, one 1024×1024 synthetic image, one thread count, RANDOM WEIGHTS for every model (no pretrained
Lite-SAM weights exist; arithmetic cost does not depend on weight values, mask shapes and counts do).
Candidates and references run interleaved (``bench/benchlib.py``) and are reported as ratios:

* inference paths, each against ``fp32 mkl`` (the fused fp32 model on torch's default MKL kernel): the same
  model on oneDNN's float32 kernel (``litesam/kernels.py``) and the ``bf16`` path (``litesam/inference.py``)
  where this CPU has bf16 kernels, with torch's encoder and, where ``openvino`` is installed, OpenVINO's
  (``bf16 openvino``: what ``auto`` serves there); and the fused encoder against the library's own
  ``fuse=False`` build;
* one click: one point, best of 3 masks, upscaled to 1024×1024 (what the backend does);
* SegEvery with N kept masks (``--kept 0 50 100``): random weights propose nothing above AutoPPN's threshold
  and keep almost nothing through SAM's filters, while trained weights keep ~50 masks per image. So the
  variant's full top-K of prompts is forced (threshold 0), the filters and NMS are opened and
  ``max_masks = N`` keeps exactly N: the decoder does the same work as with trained weights and N masks go
  through upscaling, area and box. "+ RLE" adds the Label Studio brush encoding of every kept mask;
* kept-mask post-processing per mask: ``litesam.postprocess`` against SAM's two bilinear passes on the
  chunks the library used before (64 masks at a time), with the same area and box;
* SAM ViT-B's ``SamAutomaticMaskGenerator`` with its defaults (32×32 grid), run once, between two rounds of
  Lite-SAM r640 (the ratio uses Lite-SAM's median over both).

SAM's package imports torchvision, which does not import beside this torch build; its four calls are served
by small stand-ins (PIL resize, a box NMS from ``litesam.masks``), a negligible share of its time.

    python bench/segevery.py [--threads 2] [--rounds 5] [--kept 0 50] [--skip-sam] [--variants litesam_r640]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import types
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from benchlib import header, interleaved, ms, set_threads
from litesam import kernels
from litesam.build import build_model
from litesam.variants import VARIANTS
from litesam.everything import SegEvery
from litesam.inference import apply_precision, cpu_report, load_average
from litesam.openvino_encoder import openvino_version
from backend.labelstudio.brush_rle import mask_to_brush_rle
from litesam.masks import batched_mask_to_box, box_nms
from litesam.postprocess import mask_area_and_box, mask_upscaler
from litesam.predictor import LiteSamPredictor, encode_image


def synthetic_image(side: int = 1024, seed: int = 0) -> np.ndarray:
    """side×side×3 uint8: smooth colour gradients plus 40 random discs (so masks have structure)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:side, :side].astype(np.float32)
    image = np.stack([rows / side * 200, cols / side * 200, (1 - rows / side) * 120 + 40], axis=-1)
    for _ in range(40):
        cy, cx = rng.uniform(0, side, 2)
        radius = rng.uniform(side / 40, side / 8)
        image[(rows - cy) ** 2 + (cols - cx) ** 2 < radius**2] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)


def forced_segevery(model, kept: int) -> SegEvery:
    """SegEvery that decodes the variant's full top-K of prompts and keeps exactly ``kept`` masks."""
    return SegEvery(
        model,
        proposal_score_thresh=0.0,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        max_masks=kept,
    )


def with_rle(segment: SegEvery, image: np.ndarray) -> int:
    """SegEvery on ``image``, then every kept mask in Label Studio's brush RLE; returns the RLE bytes."""
    return sum(len(mask_to_brush_rle(r["segmentation"])) for r in segment.generate(image))


def bench_variant(variant: str, image: np.ndarray, kept: list[int], rounds: int, bf16: bool) -> dict[str, float]:
    torch.manual_seed(0)
    fused = build_model(variant, fuse=True)
    torch.manual_seed(0)
    plain = build_model(variant, fuse=False)  # the same random weights, unfused
    # Inference paths: (model, float32 kernel). "fp32 mkl" is torch's default, the reference.
    paths = {"fp32 mkl": (fused, "mkl")}
    if kernels.onednn_linear_available():
        paths["fp32 onednn"] = (fused, "onednn")
    if bf16:
        bf16_model = copy.deepcopy(fused)
        apply_precision(bf16_model, "bf16")
        paths["bf16"] = (bf16_model, kernels.fp32_kernel())  # its float32 parts on this CPU's kernel
        if openvino_version() is not None:
            torch.manual_seed(0)
            openvino_model = build_model(variant)  # OpenVINO converts the unfused encoder
            apply_precision(openvino_model, "bf16", "openvino")
            paths["bf16 openvino"] = (openvino_model, kernels.fp32_kernel())
    point = (np.array([[512.0, 384.0]]), np.array([1]))

    def on(kernel: str, run: Callable[[], object]) -> Callable[[], object]:
        def job() -> object:
            with kernels.forced(kernel):
                return run()

        return job

    jobs = {"encoder fuse=False, mkl": on("mkl", lambda: encode_image(plain, image))}
    for name, (model, kernel) in paths.items():
        predictor = LiteSamPredictor(model)
        predictor.set_image(image)
        jobs[f"encoder {name}"] = on(kernel, lambda m=model: encode_image(m, image))
        jobs[f"click {name}"] = on(kernel, lambda p=predictor: p.predict(*point, best_only=True))
        for n in kept:
            segment = forced_segevery(model, n)
            jobs[f"SegEvery {name}, {n} kept"] = on(kernel, lambda s=segment: s.generate(image))
            if n:
                jobs[f"SegEvery {name}, {n} kept + RLE"] = on(kernel, lambda s=segment: with_rle(s, image))
    top_k = VARIANTS[variant].proposals.top_k
    times = interleaved(jobs, rounds)
    print(f"\n{variant} ({top_k} prompts), medians of {rounds} interleaved rounds; {load_average()}")
    for name, seconds in times.items():
        print(f"  {name:<34} {ms(seconds):>11}")
    print(f"  fused encoder vs fuse=False (both mkl): {times['encoder fuse=False, mkl'] / times['encoder fp32 mkl']:.2f}×")
    for name in paths:
        if name == "fp32 mkl":
            continue
        for what in ("encoder", "click", *(f"SegEvery, {n} kept" for n in kept)):
            ref, candidate = (what.replace(",", f" {p},") if "," in what else f"{what} {p}" for p in ("fp32 mkl", name))
            print(f"  {name} vs fp32 mkl, {what}: {times[ref] / times[candidate]:.2f}×")
    return times


def bench_postprocess(variant: str, rounds: int, masks: int = 32) -> None:
    """Per-mask cost of upscaling, thresholding, area and box at 1024×1024: ours vs the previous path."""
    side = VARIANTS[variant].image_size
    low_res = torch.randn(masks, side // 4, side // 4, generator=torch.Generator().manual_seed(0)) * 4
    geometry = ((side // 4, side // 4), side, (side, side), (1024, 1024))
    upscaler = mask_upscaler(*geometry)

    def ours() -> None:
        for logits in low_res:
            mask_area_and_box(upscaler.binary(logits))

    def two_passes_in_chunks() -> None:  # SegEvery's previous _records: 64 masks per chunk, torch bool sums
        upscaled = F.interpolate(low_res[:, None], (side, side), mode="bilinear", align_corners=False)
        upscaled = F.interpolate(upscaled, (1024, 1024), mode="bilinear", align_corners=False)[:, 0] > 0
        batched_mask_to_box(upscaled), upscaled.flatten(1).sum(dim=1)

    times = interleaved({"litesam.postprocess": ours, "two passes, chunked": two_passes_in_chunks}, rounds)
    a, b = times["litesam.postprocess"] / masks, times["two passes, chunked"] / masks
    print(
        f"\nkept-mask post-processing at 1024×1024 from {variant}'s {side // 4}² logits, per mask: "
        f"{ms(a)} (litesam.postprocess) vs {ms(b)} (two bilinear passes, chunked): {b / a:.1f}×"
    )


def bench_sam_vit_b(image: np.ndarray) -> dict[str, float]:
    _install_torchvision_stand_in()
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]().eval()
    predictor = SamPredictor(sam)
    start = time.perf_counter()
    predictor.set_image(image)
    encoder = time.perf_counter() - start
    generator = SamAutomaticMaskGenerator(sam)
    start = time.perf_counter()
    masks = generator.generate(image)
    return {"encoder_s": encoder, "segevery_s": time.perf_counter() - start, "masks": len(masks)}


def _install_torchvision_stand_in() -> None:
    """Serve the four torchvision functions SAM calls, without torchvision."""
    from PIL import Image

    def resize(image, size):
        return image.resize((size[1], size[0]), Image.BILINEAR)

    def batched_nms(boxes, scores, idxs, iou_threshold):
        if boxes.numel() == 0:
            return torch.zeros(0, dtype=torch.int64)
        offsets = idxs.to(boxes) * (boxes.max() + 1)
        return box_nms(boxes + offsets[:, None], scores, iou_threshold)

    def box_area(boxes):
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    functions = {
        "torchvision.transforms.functional": {"resize": resize, "to_pil_image": Image.fromarray},
        "torchvision.ops.boxes": {"batched_nms": batched_nms, "box_area": box_area},
    }
    for name in ("torchvision", "torchvision.transforms", "torchvision.ops", *functions):
        module = types.ModuleType(name)
        module.__dict__.update(functions.get(name, {}))
        sys.modules[name] = module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kept", type=int, nargs="+", default=[0, 50, 100], help="kept masks to force")
    parser.add_argument("--variants", nargs="+", default=["litesam_r640", "litesam_r1024"])
    parser.add_argument("--skip-sam", action="store_true", help="skip the ~2-minute SAM ViT-B reference")
    parser.add_argument("--fp32-only", action="store_true", help="skip the bf16 inference path")
    args = parser.parse_args()
    set_threads(args.threads)
    bf16 = not args.fp32_only and cpu_report().bf16_gflops is not None
    image = synthetic_image()
    print(header(f"bench/segevery.py: RANDOM WEIGHTS, 1024×1024 synthetic image, {args.threads} threads"))
    with torch.inference_mode():
        for variant in args.variants:
            bench_postprocess(variant, args.rounds)
        results = {v: bench_variant(v, image, args.kept, args.rounds, bf16) for v in args.variants}
        if args.skip_sam:
            return
        sam = bench_sam_vit_b(image)
        print(
            f"\nSAM ViT-B: encoder {sam['encoder_s']:.1f} s, SegEvery 32×32 grid {sam['segevery_s']:.1f} s "
            f"({sam['masks']} masks); {load_average()}"
        )
        after = bench_variant(args.variants[0], image, args.kept, max(1, args.rounds // 2), bf16)
        for variant, times in results.items():
            for name, seconds in times.items():
                if name.startswith("SegEvery") and "RLE" not in name:
                    if variant == args.variants[0]:
                        seconds = (seconds + after[name]) / 2
                    print(f"speed-up over SAM ViT-B, {variant} {name}: {sam['segevery_s'] / seconds:.0f}×")


if __name__ == "__main__":
    main()
