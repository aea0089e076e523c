"""``litesam train``: the command-line front of :func:`litesam.train.loop.train`.

Only the standard library is imported at module level (torch is loaded when the command runs).

``litesam.cli`` adds the sub-command with :func:`add_train_command`; its ``main`` calls ``args.run(args)``
and turns a :class:`litesam.errors.LiteSamError` into a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .._cli_options import add_data_options, positive_int
from ..errors import LiteSamError


def add_train_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``train`` to the ``litesam`` sub-commands; returns its parser."""
    parser = subparsers.add_parser(
        "train",
        help="train Lite-SAM end to end on COCO-format or SA-1B annotations",
        description="Train a Lite-SAM variant (encoder, AutoPPN, prompt encoder, mask decoder) end to end. "
        "Prints a JSON summary; writes train_log.jsonl and checkpoints into the output folder.",
    )
    add_data_options(parser)
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for logs and checkpoints")
    parser.add_argument(
        "--variant", default="litesam_r640", help="litesam_r640, litesam_r1024 or litesam_tiny"
    )
    parser.add_argument("--epochs", type=positive_int, default=4)
    parser.add_argument("--max-steps", type=positive_int, help="stop after this many optimiser steps")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup-steps", type=int, default=1000)
    parser.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm; 0 disables clipping")
    parser.add_argument("--max-masks", type=positive_int, default=64, help="masks with prompts per image")
    parser.add_argument("--mask-scale", choices=("low_res", "input"), default="low_res")
    parser.add_argument(
        "--point-fraction", type=float, default=0.5, help="share of masks prompted by a point"
    )
    parser.add_argument(
        "--proposals-per-image",
        type=int,
        default=0,
        help="AutoPPN proposals matched to GT and trained on (0: off)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    parser.add_argument("--workers", type=int, default=4, help="data loader processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=positive_int, default=20)
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="steps; 0: only at epoch ends")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--init-checkpoint", type=Path, help="start from one of our checkpoints")
    start.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    parser.add_argument(
        "--sam-checkpoint", type=Path, help="official SAM weights for prompt encoder + decoder"
    )
    parser.set_defaults(run=run_train)
    return parser


def run_train(args: argparse.Namespace) -> int:
    """Run ``litesam train`` with parsed arguments; prints the JSON summary and returns the exit status."""
    from .loop import TrainConfig, train
    from .losses import LossWeights
    from .prompts import PromptConfig

    try:
        config = TrainConfig(
            data=args.data,
            images=args.images,
            output_dir=args.output,
            variant=args.variant,
            epochs=args.epochs,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps,
            grad_clip=args.grad_clip,
            max_masks=args.max_masks,
            mask_scale=args.mask_scale,
            prompts=PromptConfig(
                point_fraction=args.point_fraction, proposals_per_image=args.proposals_per_image
            ),
            losses=LossWeights(),
            device=args.device,
            amp=args.amp,
            num_workers=args.workers,
            seed=args.seed,
            log_every=args.log_every,
            checkpoint_every=args.checkpoint_every,
            init_checkpoint=args.init_checkpoint,
            sam_checkpoint=args.sam_checkpoint,
            resume=args.resume,
        )
    except LiteSamError:
        raise
    except ValueError as error:
        raise LiteSamError(f"invalid training settings: {error}") from None
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        summary = train(config)
    except FloatingPointError as error:
        raise LiteSamError(str(error)) from None
    print(json.dumps(summary))
    return 0
