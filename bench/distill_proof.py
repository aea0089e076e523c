"""Distillation proof: a Lite-SAM student of another layout distilled from a trained ``litesam_tiny`` on
unlabeled synthetic images, scored on held-out scenes with the teacher's decoder.

One run on the CPU:

1. the teacher (``--teacher``, default the shipped demo checkpoint, trained by bench/train_proof.py's recipe)
   on the held-out set (60 scenes of seed 1, never seen by either model): 1-box mIoU with the box-fill
   baseline (litesam/eval/segany.py), and its SegEvery instance recall at mask IoU 0.5 with the very SegEvery
   settings that make the pseudo-masks (litesam/eval/recall.py);
2. the untrained student (random encoder, the teacher's decoder) on the same set: the floor;
3. ``litesam distill`` in a subprocess, timed (wall, CPU seconds, load average): student
   ``litesam_tiny_student`` (three LiteViT stages against the teacher's four), ``--data synthetic`` (train
   scenes of seed 0, pixels only), AutoPPN learnt from the teacher's pseudo-masks;
4. the student on the held-out set: 1-box mIoU (its encoder, the teacher's copied decoder) and SegEvery recall
   with its own AutoPPN and the same filters;
5. the targets of issue 10, PASS or FAIL with their figures: 1-box mIoU ≥ 0.9 × the teacher's, SegEvery recall
   ≥ 0.8 × the teacher's;
6. the student as it would be served: its SegEvery filters calibrated label-free against the teacher
   (``litesam calibrate --teacher``'s rule on 60 unlabeled synthetic scenes of seed 2, neither trained on nor
   held out; written to ``calibrated.pt`` in the run folder), then its held-out recall and precision with
   those filters beside the teacher's with its own (the filters in its checkpoint, else SAM's) and the
   student's with SAM's (what it gets served uncalibrated). Reported, not a target.

    python bench/distill_proof.py --teacher litesam/weights/litesam_tiny_synthetic.pt [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from litesam.build import build_model, write_calibrated_filters
from litesam.distill.sources import synthetic_source
from litesam.distill.student import build_student
from litesam.eval.calibration import calibrate, teacher_scenes
from litesam.everything import SegEveryConfig
from litesam.eval.recall import segevery_recall
from litesam.eval.segany import evaluate_segany, load_eval_records
from litesam.train.synthetic import CALIBRATION_SEED

DEMO = Path(__file__).resolve().parent.parent / "litesam" / "weights" / "litesam_tiny_synthetic.pt"
TARGETS = {"box_ratio": 0.9, "recall_ratio": 0.8}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=DEMO, help="teacher checkpoint (a trained litesam_tiny)")
    parser.add_argument("--student", default="litesam_tiny_student", help="student variant (embed_dim 64)")
    parser.add_argument("--images", type=int, default=600, help="unlabeled synthetic training scenes (seed 0)")
    parser.add_argument("--steps", type=int, default=600, help="--max-steps of the distillation")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pseudo-prompts", default="auto", choices=("auto", "grid"),
                        help="prompts of the teacher's SegEvery for pseudo-masks (auto: its AutoPPN)")
    parser.add_argument("--points-per-side", type=int, default=8, help="grid pseudo-masks only")
    parser.add_argument("--pred-iou-thresh", type=float, default=0.0, help="SegEvery filter (pseudo-masks, recall)")
    parser.add_argument("--stability-score-thresh", type=float, default=0.0, help="SegEvery filter (same)")
    parser.add_argument("--held-out", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("runs/distill_proof"))
    parser.add_argument("--skip-distill", action="store_true", help="score the run already in --output")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} threads; load average {os.getloadavg()}")

    held_out = load_eval_records("synthetic", synthetic_images=args.held_out)
    teacher = build_model(checkpoint=args.teacher)
    filters = dict(pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh)
    pseudo = SegEveryConfig.for_variant(teacher.variant, prompt_mode=args.pseudo_prompts,
                                        points_per_side=args.points_per_side, **filters)
    t_report = evaluate_segany(teacher, held_out, prompts=("box",))
    t_recall = segevery_recall(teacher, held_out, config=pseudo)
    print("teacher:  ", _figures(t_report, t_recall))
    floor = evaluate_segany(build_student(args.student, teacher, seed=0).eval(), held_out, prompts=("box",))
    print(f"untrained student (teacher's decoder): 1-box mIoU {floor['box']['miou']:.3f}")

    run = {}
    if not args.skip_distill:
        run = _distill(args)
        print(f"distillation: {run['wall_s']:.0f} s wall, {run['cpu_s']:.0f} s CPU; load average "
              f"{run['load_before']} → {run['load_after']}\n  {run['command']}")
    student = build_model(checkpoint=args.output / "last.pt")
    s_report = evaluate_segany(student, held_out, prompts=("box",))
    own = SegEveryConfig.for_variant(student.variant, prompt_mode="autoppn", **filters)
    s_recall = segevery_recall(student, held_out, config=own)
    print("student:  ", _figures(s_report, s_recall))

    box_ratio = s_report["box"]["miou"] / t_report["box"]["miou"]
    recall_ratio = s_recall["recall"] / t_recall["recall"] if t_recall["recall"] else float("nan")
    checks = {
        f"student 1-box mIoU ≥ 0.9 × teacher's ({s_report['box']['miou']:.3f} vs {t_report['box']['miou']:.3f}: "
        f"{box_ratio:.3f}×; box-fill {t_report['box_fill']['miou']:.3f})": box_ratio >= TARGETS["box_ratio"],
        f"student AutoPPN SegEvery recall ≥ 0.8 × teacher's ({s_recall['recall']:.3f} vs {t_recall['recall']:.3f}: "
        f"{recall_ratio:.3f}×)": recall_ratio >= TARGETS["recall_ratio"],
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")

    served = _served(args, teacher, student, held_out)
    args.output.mkdir(parents=True, exist_ok=True)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "teacher": t_report, "teacher_recall": t_recall,
              "untrained_student": floor, "student": s_report, "student_recall": s_recall, "distill": run,
              "checks": checks, "served": served}
    (args.output / "proof.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


def _distill(args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "litesam.cli", "distill", "--teacher", str(args.teacher), "--data", "synthetic",
               "--synthetic-images", str(args.images), "--variant", args.student, "--max-steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--pseudo-prompts", args.pseudo_prompts,
               "--points-per-side", str(args.points_per_side), "--pred-iou-thresh", str(args.pred_iou_thresh),
               "--stability-score-thresh", str(args.stability_score_thresh), "--device", "cpu",
               "--no-progress", "-o", str(args.output)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    before = os.getloadavg()
    start = time.perf_counter()
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"command": " ".join(command[1:]), "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "load_before": before, "load_after": os.getloadavg()}


def _served(args: argparse.Namespace, teacher, student, held_out) -> dict:
    """Calibrate the student's filters against the teacher without labels; held-out recall of both as served."""
    images = [item.load() for item in synthetic_source(60, CALIBRATION_SEED)]  # pixels only
    start = time.perf_counter()
    calibration = calibrate(student, teacher_scenes(teacher, images))
    seconds = time.perf_counter() - start
    record = calibration.record(f"SegEvery masks of teacher {args.teacher.name} on synthetic (seed {CALIBRATION_SEED})")
    calibrated = build_model(checkpoint=write_calibrated_filters(
        args.output / "last.pt", args.output / "calibrated.pt", calibration.chosen.filters, record))
    served = {"student_filters": calibration.chosen.filters, "calibration": record, "calibration_s": seconds,
              "teacher_filters": teacher.segevery_filters, "teacher_recall": segevery_recall(teacher, held_out),
              "student_recall": segevery_recall(calibrated, held_out),
              "student_sam_filters_recall": segevery_recall(student, held_out, config=SegEveryConfig.for_model(student))}
    print(f"label-free calibration against the teacher ({len(images)} unlabeled scenes, {seconds:.0f} s): "
          f"predicted IoU ≥ {calibration.chosen.pred_iou_thresh}, stability ≥ "
          f"{calibration.chosen.stability_score_thresh} (agreement with the teacher: recall "
          f"{calibration.chosen.recall:.3f}, precision {calibration.chosen.precision:.3f})")
    for name in ("teacher", "student", "student_sam_filters"):
        recall = served[f"{name}_recall"]
        print(f"as served, {name.replace('_', ' ')}: held-out SegEvery recall {recall['recall']:.3f} ({recall['masks']} masks, "
              f"precision {recall['precision']:.3f})")
    return served


def _figures(report: dict, recall: dict) -> str:
    box, fill = report["box"], report["box_fill"]
    return (f"1-box mIoU {box['miou']:.3f} AP {box['ap']:.3f} | box-fill mIoU {fill['miou']:.3f} | SegEvery recall "
            f"{recall['recall']:.3f} ({recall['recovered']}/{recall['instances']}, {recall['masks']} masks)")


if __name__ == "__main__":
    raise SystemExit(main())
