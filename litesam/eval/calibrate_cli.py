"""``litesam calibrate``: choose a checkpoint's SegEvery filters (:mod:`litesam.eval.calibration`) and write
them into the checkpoint, so that ``litesam everything``, the backend's SegEvery jobs and pre-annotation use
them whenever no filter is given.

The instances come from annotations (``--data``: synthetic scenes of seed 2 by default, which are neither the
training seed 0 nor the held-out seed 1; COCO, SA-1B or a Label Studio project) or, label-free, from a
teacher's SegEvery masks on the images of ``--data`` (``--teacher``; ``--data`` may then also be a plain image
folder). Without ``-o`` nothing is written. Prints a JSON report: every pair's recall and precision, the
chosen pair and the file written.

Only the standard library is imported at module level (torch is loaded when the command runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .._cli_options import DefaultsHelpFormatter, add_data_options, positive_int, unit_float

#: litesam.train.synthetic.CALIBRATION_SEED, spelled out so that building the parser does not import numpy.
_CALIBRATION_SEED = 2


def add_calibrate_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``calibrate`` to the ``litesam`` sub-commands; returns its parser."""
    parser = subparsers.add_parser(
        "calibrate",
        help="choose a checkpoint's SegEvery filters (predicted IoU, stability, AutoPPN's proposal score) and "
        "store them in it",
        description="Run SegEvery with the filters open on calibration scenes, score every (predicted-IoU, "
        "stability, proposal-score) setting of a grid (the proposal score for AutoPPN prompts only) by instance "
        "recall and precision at mask IoU 0.5, choose the setting with the highest recall whose precision is at "
        "least --min-precision, and write it into the checkpoint (-o).",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="one of ours, or an official SAM-family file")
    parser.add_argument(
        "-o", "--output", type=Path, help="checkpoint to write with the chosen filters (may be --checkpoint)"
    )
    parser.add_argument(
        "--teacher", type=Path, help="label-free: a checkpoint whose SegEvery masks are the instances"
    )
    add_data_options(parser, required=False, ls_split="train")  # never the tasks litesam eval reports
    parser.set_defaults(data=Path("synthetic"))
    parser.add_argument("--synthetic-images", type=positive_int, default=60, help="size of the synthetic set")
    parser.add_argument(
        "--synthetic-seed", type=int, default=_CALIBRATION_SEED, help="seed of the synthetic set"
    )
    parser.add_argument("--max-images", type=positive_int, help="use only the first N images")
    parser.add_argument("--min-precision", type=unit_float, default=0.95, help="share of kept masks that must be right")
    parser.add_argument("--box-nms-thresh", type=unit_float, default=0.7, help="SegEvery's box NMS")
    parser.add_argument(
        "--points-per-side", type=positive_int,
        help="n×n point grid of a model without an AutoPPN head (official SAM-family files; default SAM's 32)",
    )
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.set_defaults(run=run_calibrate)
    return parser


def run_calibrate(args: argparse.Namespace) -> int:
    """Run ``litesam calibrate`` with parsed arguments; prints the JSON report and returns the exit status."""
    from ..build import build_model, checkpoint_sha256, write_calibrated_filters
    from ..errors import LiteSamError
    from .calibration import annotated_scenes, calibrate, teacher_scenes

    if args.output is not None and args.output.is_dir():  # refused before minutes of calibration, not after
        raise LiteSamError(f"-o {args.output} is a folder: give the checkpoint file to write")
    model = build_model(checkpoint=args.checkpoint, device=args.device)
    if args.teacher is not None:
        if str(args.data) == "labelstudio":
            raise LiteSamError(
                "--teacher reads images from a folder, synthetic scenes, COCO or SA-1B; calibrate on a Label Studio "
                "project against its annotations (--data labelstudio without --teacher)"
            )
        from ..distill.sources import open_source

        teacher = build_model(checkpoint=args.teacher, device=args.device)
        items = open_source(args.data, args.images, args.synthetic_images, args.synthetic_seed)
        scenes = teacher_scenes(teacher, (item.load() for item in items[: args.max_images]))
        truth = f"SegEvery masks of teacher {args.teacher.name} (sha256 {checkpoint_sha256(args.teacher)[:12]})"
    else:
        from .segany import load_eval_records

        records = load_eval_records(
            args.data, args.images, args.synthetic_images, args.synthetic_seed,
            label_studio=(args.ls_url, args.ls_project, args.ls_split),
        )
        scenes = annotated_scenes(records[: args.max_images])
        truth = "annotations"
    truth += f" of {args.data}"
    if str(args.data) == "synthetic":
        truth += f" (seed {args.synthetic_seed})"
    elif str(args.data) == "labelstudio":
        truth += f" (project {args.ls_project}, {args.ls_split} tasks)"
    result = calibrate(model, scenes, args.min_precision, args.box_nms_thresh, args.points_per_side)
    record = result.record(truth)
    report = {
        "checkpoint": str(args.checkpoint),
        "variant": model.variant,
        "chosen": result.chosen.filters,
        "calibration": record,
        "table": [vars(row) for row in result.table],
    }
    if args.output is not None:
        report["written"] = str(write_calibrated_filters(args.checkpoint, args.output, result.chosen.filters, record))
    print(json.dumps(report, indent=2))
    chosen = result.chosen
    print(
        f"chosen: {chosen.describe()}: recall "
        f"{chosen.recall:.3f}, precision {chosen.precision:.3f} ({chosen.masks} masks, {chosen.instances} "
        f"instances, {result.scenes} scenes)" + (f"; written to {args.output}" if args.output else "; not written (-o)"),
        file=sys.stderr,
    )
    return 0
