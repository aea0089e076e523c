"""``litesam eval``: SegAny mIoU and 1-box mask AP of a checkpoint (or of random weights), with the box-fill
baseline, and optionally SegEvery's instance recall.

Only the standard library is imported at module level (torch is loaded when the command runs).

``litesam.cli`` adds the sub-command with :func:`add_eval_command`; its ``main`` calls ``args.run(args)``
and turns a :class:`litesam.errors.LiteSamError` into a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .._cli_options import DefaultsHelpFormatter, add_data_options, positive_int, unit_float

#: The held-out seed of litesam.train.synthetic (spelled out so that building the parser does not import it).
_HELD_OUT_SEED = 1


def add_eval_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``eval`` to the ``litesam`` sub-commands; returns its parser."""
    parser = subparsers.add_parser(
        "eval",
        help="1-box / 1-point mIoU, 1-box mask AP and the box-fill baseline (COCO, SA-1B, Label Studio or "
        "synthetic data)",
        description="Evaluate Lite-SAM with the SegAny protocol: every non-crowd ground-truth mask is prompted "
        "once with its tight box and once with its innermost point. Reports mIoU, the 1-box prompt mask AP "
        "(COCOeval) and the box-fill baseline (the box itself as the mask). Prints a JSON report.",
        formatter_class=DefaultsHelpFormatter,
    )
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", type=Path, help="a Lite-SAM checkpoint (records its variant)")
    weights.add_argument(
        "--random-weights", metavar="VARIANT", help="evaluate an untrained VARIANT (seed --seed): a baseline"
    )
    add_data_options(parser, ls_split="held-out")
    parser.add_argument("--variant", help="check that the checkpoint is of this variant")
    parser.add_argument(
        "--synthetic-images", type=positive_int, default=60, help="size of the synthetic held-out set"
    )
    parser.add_argument(
        "--synthetic-seed", type=int, default=_HELD_OUT_SEED, help="seed of the synthetic set (train uses 0)"
    )
    # The kinds of segany.PROMPT_KINDS, spelled out so that building the parser does not import torch.
    parser.add_argument(
        "--prompts", nargs="+", choices=("box", "point"), default=["box", "point"], help="prompt kinds to score"
    )
    parser.add_argument(
        "--segevery", action="store_true", help="also measure SegEvery's instance recall at mask IoU 0.5"
    )
    parser.add_argument(
        "--pred-iou-thresh", type=unit_float,
        help="--segevery: keep masks with predicted IoU ≥ this (default: the checkpoint's calibrated value, else SAM's 0.88)",
    )
    parser.add_argument(
        "--stability-score-thresh", type=unit_float,
        help="--segevery: keep masks with stability ≥ this (default: the checkpoint's calibrated value, else SAM's 0.95)",
    )
    parser.add_argument(
        "--proposal-score-thresh", type=unit_float,
        help="--segevery: AutoPPN's minimum proposal confidence (default: the checkpoint's calibrated value, else "
        "the variant's 0.3)",
    )
    parser.add_argument("--max-images", type=positive_int, help="evaluate only the first N images")
    parser.add_argument("--seed", type=int, default=0, help="initialisation of --random-weights")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("-o", "--output", type=Path, help="also write the JSON report to this file")
    parser.set_defaults(run=run_eval)
    return parser


def run_eval(args: argparse.Namespace) -> int:
    """Run ``litesam eval`` with parsed arguments; prints the JSON report and returns the exit status."""
    import torch

    from ..build import build_model
    from ..errors import LiteSamError
    from ..everything import SegEveryConfig
    from .recall import segevery_recall
    from .segany import evaluate_segany, load_eval_records

    filter_flags = (args.pred_iou_thresh, args.stability_score_thresh, args.proposal_score_thresh)
    if not args.segevery and filter_flags != (None, None, None):
        raise LiteSamError(
            "--pred-iou-thresh, --stability-score-thresh and --proposal-score-thresh are SegEvery's filters: add "
            "--segevery"
        )
    if args.random_weights is not None:
        torch.manual_seed(args.seed)
        model = build_model(args.random_weights, device=args.device)
        weights = {"random_weights": args.random_weights, "seed": args.seed}
    else:
        model = build_model(args.variant, checkpoint=args.checkpoint, device=args.device)
        weights = {"checkpoint": str(args.checkpoint)}
    records = load_eval_records(
        args.data,
        args.images,
        args.synthetic_images,
        args.synthetic_seed,
        label_studio=(args.ls_url, args.ls_project, args.ls_split),
    )
    if args.max_images is not None:
        records = records[: args.max_images]
    report = evaluate_segany(model, records, prompts=tuple(dict.fromkeys(args.prompts)), progress=_report_progress)
    report = {**weights, "variant": model.variant, "data": str(args.data), **report}
    if args.segevery:
        config = SegEveryConfig.for_model(
            model, pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
            proposal_score_thresh=args.proposal_score_thresh,
        )
        report["segevery"] = segevery_recall(model, records, config=config)
        report["segevery"]["filters"] = {
            "pred_iou_thresh": config.pred_iou_thresh, "stability_score_thresh": config.stability_score_thresh
        }
        if model.image_encoder.autoppn is not None:  # the grid's prompts have no proposal score
            report["segevery"]["filters"]["proposal_score_thresh"] = config.proposals.score_threshold
    text = json.dumps(report, indent=2)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)
    print(summary_line(report), file=sys.stderr)
    return 0


def summary_line(report: dict) -> str:
    """One human line: each figure with the box-fill floor beside it."""
    fill = report["box_fill"]
    parts = []
    if "box" in report:
        parts.append(f"1-box mIoU {report['box']['miou']:.3f} AP {report['box']['ap']:.3f}")
    if "point" in report:
        parts.append(f"1-point mIoU {report['point']['miou']:.3f}")
    parts.append(f"box-fill baseline mIoU {fill['miou']:.3f} AP {fill['ap']:.3f}")
    if "segevery" in report:
        segevery = report["segevery"]
        precision = "n/a" if segevery["precision"] is None else f"{segevery['precision']:.3f}"
        ignored = f", {segevery['ignored']} in ignored areas" if segevery["ignored"] else ""
        parts.append(f"SegEvery recall@0.5 {segevery['recall']:.3f} ({segevery['masks']} masks{ignored}, precision {precision})")
    return f"eval: {report['masks']} masks in {report['images']} images: " + "; ".join(parts)


def _report_progress(done: int, record) -> None:
    if done % 100 == 0:
        print(f"eval: {done} images done", file=sys.stderr)
