"""``litesam eval``: SegAny mIoU (1 box, 1 centre point per ground-truth mask) of a checkpoint.

Only the standard library is imported at module level (torch is loaded when the command runs).

``litesam.cli`` adds the sub-command with :func:`add_eval_command`; its ``main`` calls ``args.run(args)``
and turns a :class:`litesam.errors.LiteSamError` into a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .._cli_options import add_data_options, positive_int


def add_eval_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``eval`` to the ``litesam`` sub-commands; returns its parser."""
    parser = subparsers.add_parser(
        "eval",
        help="mIoU with one box / one centre point per ground-truth mask (COCO-format or SA-1B data)",
        description="Evaluate a Lite-SAM checkpoint with the SegAny protocol: every non-crowd ground-truth "
        "mask is prompted once with its tight box and once with its innermost point. Prints a JSON report.",
    )
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="a Lite-SAM checkpoint (records its variant)"
    )
    add_data_options(parser)
    parser.add_argument("--variant", help="check that the checkpoint is of this variant")
    # The kinds of segany.PROMPT_KINDS, spelled out so that building the parser does not import torch.
    parser.add_argument("--prompts", nargs="+", choices=("box", "point"), default=["box", "point"])
    parser.add_argument("--max-images", type=positive_int, help="evaluate only the first N images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-o", "--output", type=Path, help="also write the JSON report to this file")
    parser.set_defaults(run=run_eval)
    return parser


def run_eval(args: argparse.Namespace) -> int:
    """Run ``litesam eval`` with parsed arguments; prints the JSON report and returns the exit status."""
    from ..build import build_model
    from .segany import evaluate_dataset

    model = build_model(args.variant, checkpoint=args.checkpoint, device=args.device)
    report = evaluate_dataset(
        model,
        args.data,
        args.images,
        prompts=tuple(dict.fromkeys(args.prompts)),
        max_images=args.max_images,
        progress=_report_progress,
    )
    report = {"checkpoint": str(args.checkpoint), **report}
    text = json.dumps(report, indent=2)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)
    return 0


def _report_progress(done: int, record) -> None:
    if done % 100 == 0:
        print(f"eval: {done} images done", file=sys.stderr)
