"""SegEvery benchmark: Lite-SAM r640 / r1024 against Meta's SAM ViT-B automatic mask generator.

One run, one 1024×1024 image, one thread count, RANDOM WEIGHTS for every model (no pretrained Lite-SAM
weights exist; arithmetic cost does not depend on weight values). Measured:

* encoder time (image → embedding),
* one-prompt decode time with the embedding set (one point, best of 3 masks, upscaled to 1024×1024),
* SegEvery time per image: AutoPPN proposals → batched decode → filters → NMS → upscale survivors.
  Random weights propose nothing above AutoPPN's confidence threshold, so the benchmark forces the
  variant's full top-K (100 at r640, 200 at r1024) by setting the threshold to 0, and reports two
  filter settings: SAM's defaults (few masks survive random weights) and filters and NMS off (every
  mask is upscaled: the worst case),
* SAM ViT-B's ``SamAutomaticMaskGenerator`` with its defaults (32×32 grid), the reference.

SAM's package imports torchvision, which does not import beside this torch build. Its four calls are
served here by small stand-ins (PIL resize, a box NMS from ``litesam.masks``); they take a negligible
share of its time.

    python bench/segevery.py [--threads 2] [--repeats 5] [--skip-sam]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types

import numpy as np
import torch

from litesam.build import VARIANTS, build_model
from litesam.everything import SegEvery
from litesam.masks import box_nms
from litesam.proposals import ProposalConfig
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


def timed(fn, repeats: int) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_litesam(variant: str, image: np.ndarray, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(variant, fuse=True)
    top_k = VARIANTS[variant].proposals.top_k
    proposals = ProposalConfig(score_threshold=0.0, top_k=top_k)
    predictor = LiteSamPredictor(model)
    predictor.set_image(image)
    point = (np.array([[512.0, 384.0]]), np.array([1]))
    sam_filters = SegEvery(model, proposals=proposals)
    no_filters = SegEvery(
        model, proposals=proposals, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    )
    masks_kept = len(no_filters.generate(image))
    return {
        "encoder_s": timed(lambda: encode_image(model, image), repeats),
        "decode_1_prompt_s": timed(lambda: predictor.predict(*point), repeats * 4),
        "segevery_s": timed(lambda: sam_filters.generate(image), repeats),
        "segevery_no_filters_s": timed(lambda: no_filters.generate(image), max(1, repeats // 2)),
        "prompts": top_k,
        "masks_no_filters": masks_kept,
    }


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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-sam", action="store_true", help="skip the ~2-minute SAM ViT-B reference")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = synthetic_image()
    print(f"RANDOM WEIGHTS. 1024×1024 synthetic image, torch {torch.__version__}, {args.threads} threads")
    results = {}
    with torch.inference_mode():
        for variant in ("litesam_r640", "litesam_r1024"):
            results[variant] = bench_litesam(variant, image, args.repeats)
            r = results[variant]
            print(
                f"{variant:<14} encoder {r['encoder_s'] * 1e3:7.1f} ms | 1-prompt decode "
                f"{r['decode_1_prompt_s'] * 1e3:6.1f} ms | SegEvery {r['prompts']} prompts: "
                f"{r['segevery_s'] * 1e3:7.1f} ms (SAM filters), {r['segevery_no_filters_s'] * 1e3:7.1f} ms "
                f"(filters off, {r['masks_no_filters']} masks)"
            )
        if not args.skip_sam:
            sam = bench_sam_vit_b(image)
            print(
                f"{'SAM ViT-B':<14} encoder {sam['encoder_s'] * 1e3:7.1f} ms | SegEvery 32×32 grid: "
                f"{sam['segevery_s']:.1f} s ({sam['masks']} masks)"
            )
            for variant, r in results.items():
                print(
                    f"speed-up {variant}: {sam['segevery_s'] / r['segevery_s']:.0f}× (SAM filters), "
                    f"{sam['segevery_s'] / r['segevery_no_filters_s']:.0f}× (filters off)"
                )


if __name__ == "__main__":
    main()
