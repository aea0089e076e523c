"""Choose a checkpoint's SegEvery mask filters (predicted IoU, stability score) by measurement.

SAM's automatic-mask-generator thresholds (predicted IoU ≥ 0.88, stability ≥ 0.95) were set for SAM ViT-H.
A small model's masks can be right (IoU ≥ 0.5 with an instance) far below that bar, and its IoU head predicts
lower values for them, so the thresholds are a property of the weights. The rule used here:

    on calibration scenes (never the held-out scenes that are reported), among the pairs of a grid, take the
    pair with the highest instance recall at mask IoU 0.5 whose kept masks are at least ``--min-precision``
    correct (the share of SegEvery's masks that match an instance at IoU 0.5, after box NMS).

SegEvery runs once per image with the filters open; each pair of the grid is then applied to those
candidates (the same filters and box NMS as SegEvery's: :func:`apply_filters`), so the whole grid costs one
SegEvery pass. Prints the table and the chosen pair; the pair goes into the variant's ``VariantConfig``
(``pred_iou_thresh``, ``stability_score_thresh``) when the checkpoint is the one the variant is used with.

    python bench/calibrate_filters.py [--checkpoint litesam/weights/litesam_tiny_synthetic.pt]
                                      [--data synthetic --synthetic-seed 2 --synthetic-images 60]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform

import numpy as np
import torch

from litesam.build import build_model
from litesam.cli import DEMO_CHECKPOINT
from litesam.eval.recall import instance_matches
from litesam.eval.segany import load_eval_records
from litesam.everything import SegEvery
from litesam.masks import box_nms

PRED_IOU = (0.88, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)
STABILITY = (0.95, 0.9, 0.85, 0.8, 0.7)


def apply_filters(candidates: list[dict], pred_iou: float, stability: float, nms: float) -> list[dict]:
    """SegEvery's filters and box NMS (ranked by predicted IoU × proposal score) on open-filter records."""
    kept = [c for c in candidates if c["predicted_iou"] >= pred_iou and c["stability_score"] >= stability]
    if not kept:
        return []
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (c["bbox"] for c in kept)], dtype=torch.float32)
    scores = torch.tensor([c["predicted_iou"] * (c["proposal_score"] or 1.0) for c in kept])
    return [kept[i] for i in box_nms(boxes, scores, nms).tolist()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(DEMO_CHECKPOINT))
    parser.add_argument("--data", default="synthetic", help="as litesam eval --data")
    parser.add_argument("--images", help="image folder (COCO)")
    parser.add_argument("--synthetic-images", type=int, default=60)
    parser.add_argument("--synthetic-seed", type=int, default=2, help="2: neither training (0) nor held-out (1)")
    parser.add_argument("--min-precision", type=float, default=0.95)
    parser.add_argument("--box-nms-thresh", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} threads; load average {os.getloadavg()}")

    model = build_model(checkpoint=args.checkpoint)
    records = load_eval_records(args.data, args.images, args.synthetic_images, args.synthetic_seed)
    # Filters open and NMS off: every candidate, so each pair of the grid can be applied afterwards.
    generator = SegEvery(model, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    scenes = []
    for record in records:
        truths = [gt.reshape(-1) for gt in record.instance_masks() if gt.any()]
        scenes.append((generator.generate(record.image()), truths))

    rows = []
    for pred_iou, stability in itertools.product(PRED_IOU, STABILITY):
        instances = recovered = masks = correct = 0
        for candidates, truths in scenes:
            kept = apply_filters(candidates, pred_iou, stability, args.box_nms_thresh)
            instances += len(truths)
            masks += len(kept)
            if kept and truths:
                matched = instance_matches(np.stack([k["segmentation"].reshape(-1) for k in kept]), truths)
                recovered += int(matched.any(axis=0).sum())
                correct += int(matched.any(axis=1).sum())
        rows.append({
            "pred_iou_thresh": pred_iou,
            "stability_score_thresh": stability,
            "recall": recovered / instances if instances else 0.0,
            "precision": correct / masks if masks else 1.0,
            "masks": masks,
        })
        r = rows[-1]
        print(f"pred IoU ≥ {pred_iou:.2f}, stability ≥ {stability:.2f}: recall {r['recall']:.3f}, "
              f"precision {r['precision']:.3f}, {masks} masks for {instances} instances")

    eligible = [r for r in rows if r["precision"] >= args.min_precision]
    if not eligible:
        print(f"no pair keeps precision ≥ {args.min_precision}")
        return 1
    best = max(eligible, key=lambda r: (r["recall"], r["pred_iou_thresh"], r["stability_score_thresh"]))
    print("chosen:", json.dumps(best))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
