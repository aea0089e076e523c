"""``litesam train``: the command-line front of :func:`litesam.train.loop.train`.

Only the standard library (and the torch-free :mod:`.config`) is imported at module level; torch is loaded
when the command runs. Every default shown by ``--help`` is the :class:`~litesam.train.config.TrainConfig`
default.

Settings come in layers (:mod:`.config_file`): the defaults, then ``--config FILE`` (every
:class:`TrainConfig` field, nested ``prompts`` / ``losses`` tables included), then the flags typed on the
command line, which win even when they repeat a default. ``--data`` and ``-o`` may come from the file.

``litesam.cli`` adds the sub-command with :func:`add_train_command`; its ``main`` calls ``args.run(args)``
and turns a :class:`litesam.errors.LiteSamError` into a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from .._cli_options import DefaultsHelpFormatter, add_data_options, positive_int
from ..errors import LiteSamError
from .config import LossWeights, PromptConfig, TrainConfig
from .config_file import build_config, flag_values, load_config_file, track_given_flags

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def add_train_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``train`` to the ``litesam`` sub-commands; returns its parser."""
    parser = subparsers.add_parser(
        "train",
        help="train Lite-SAM end to end on COCO-format, SA-1B, Label Studio or synthetic data",
        description="Train a Lite-SAM variant (encoder, AutoPPN, prompt encoder, mask decoder) end to end. "
        "Prints a JSON summary; writes train_log.jsonl and checkpoints into the output folder.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="settings file (.json, .yaml, .toml) with TrainConfig's field names; flags given here win over it",
    )
    add_data_options(parser, required=False)
    d = _DEFAULTS
    parser.add_argument("-o", "--output", type=Path, help="folder for logs and checkpoints (required here or in --config)")
    parser.add_argument("--variant", default=d["variant"], help="litesam_r640, litesam_r1024 or litesam_tiny")
    parser.add_argument(
        "--synthetic-images", type=positive_int, default=d["synthetic_images"], help="size of the synthetic set"
    )
    parser.add_argument("--synthetic-seed", type=int, default=d["synthetic_seed"], help="seed of the synthetic set")
    parser.add_argument("--epochs", type=positive_int, default=d["epochs"], help="passes over the data")
    parser.add_argument(
        "--max-steps",
        type=positive_int,
        help="length of the run in optimiser steps (overrides --epochs; the LR schedule spans them)",
    )
    parser.add_argument(
        "--stop-after",
        type=positive_int,
        help="end this invocation after this many steps in total; --resume continues the same schedule",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=d["batch_size"], help="images per micro-batch and process"
    )
    parser.add_argument(
        "--accumulate-steps",
        type=positive_int,
        default=d["accumulate_steps"],
        help="micro-batches per optimiser step (loss scaled 1/N; steps and the LR schedule count optimiser steps)",
    )
    parser.add_argument(
        "--lr", type=float, help="peak AdamW learning rate (default: 2e-3 for litesam_tiny, else 4e-4)"
    )
    parser.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="AdamW weight decay")
    parser.add_argument(
        "--warmup-steps", type=int, help="linear warm-up steps (default: 5%% of the run, at most 1000)"
    )
    parser.add_argument("--grad-clip", type=float, default=d["grad_clip"], help="max gradient norm; 0: no clipping")
    parser.add_argument("--max-masks", type=positive_int, default=d["max_masks"], help="masks with prompts per image")
    parser.add_argument(
        "--progressive-side",
        type=int,
        help="progressive resizing: train the first --progressive-fraction of the steps at this smaller "
        "input side, then at the variant's; 0: off (default: 128 for litesam_tiny, off for the others)",
    )
    parser.add_argument(
        "--progressive-fraction",
        type=float,
        help="share of the steps at --progressive-side (default: 0.5)",
    )
    parser.add_argument(
        "--mask-scale", choices=("low_res", "input"), default=d["mask_scale"], help="frame of the mask loss"
    )
    prompts = PromptConfig()
    parser.add_argument(
        "--point-fraction", type=float, default=prompts.point_fraction, help="share of masks prompted by a point"
    )
    parser.add_argument(
        "--proposals-per-image",
        type=int,
        default=prompts.proposals_per_image,
        help="AutoPPN proposals matched to ground truth and trained on (0: off)",
    )
    weights = parser.add_argument_group("loss weights (litesam.train.config.LossWeights)")
    for weight in fields(LossWeights):
        weights.add_argument(
            f"--loss-{weight.name.replace('_', '-')}",
            dest=f"loss_{weight.name}",
            type=float,
            default=weight.default,
            help=_LOSS_HELP[weight.name],
        )
    parser.add_argument("--device", default=d["device"], help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA (ignored on the CPU)")
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", default=None, help="no tqdm bar on stderr"
    )
    parser.add_argument(
        "--workers", type=int, help="data loader processes (default: 0 on ≤ 2 CPUs, else half the CPUs, ≤ 4)"
    )
    parser.add_argument(
        "--cache-mb",
        type=int,
        default=d["cache_mb"],
        help="RAM (MiB) keeping prepared images from their first read (0: off; only without loader workers)",
    )
    parser.add_argument("--seed", type=int, default=d["seed"], help="data order, prompts and initialisation")
    parser.add_argument("--log-every", type=positive_int, default=d["log_every"], help="steps between log lines")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=d["checkpoint_every"],
        help="steps between checkpoints; 0: only at the end",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--init-checkpoint", type=Path, help="start from one of our checkpoints")
    start.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    parser.add_argument("--sam-checkpoint", type=Path, help="official SAM weights for prompt encoder + decoder")
    parser.set_defaults(run=run_train)
    return track_given_flags(parser)


_LOSS_HELP = {
    "focal": "mask focal (BCE with the default gamma 0) weight",
    "dice": "mask dice weight",
    "iou": "IoU-head MSE weight",
    "heat": "AutoPPN heatmap weight (inside the AutoPPN term)",
    "box_l1": "AutoPPN box L1 weight (inside the AutoPPN term)",
    "box_giou": "AutoPPN box GIoU weight (inside the AutoPPN term)",
    "autoppn": "weight of the whole AutoPPN term against the mask loss",
    "focal_alpha": "focal alpha (weight of the positive class); negative: off",
    "focal_gamma": "focal gamma (0: plain BCE)",
    "heat_beta": "exponent of the heatmap's quality-focal modulation",
    "box_min_heat": "target heat above which AutoPPN boxes are trained",
}


#: Flag destinations whose TrainConfig field has another name ("a.b": field b of the nested field a).
_FIELD_OF_FLAG = {
    "output": "output_dir",
    "workers": "num_workers",
    "point_fraction": "prompts.point_fraction",
    "proposals_per_image": "prompts.proposals_per_image",
    **{f"loss_{f.name}": f"losses.{f.name}" for f in fields(LossWeights)},
    "ls_url": "label_studio_url",
    "ls_project": "label_studio_project",
    "ls_split": "label_studio_split",
}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's :class:`TrainConfig`: defaults, then ``args.config``'s values, then the flags given.

    Raises:
        LiteSamError: unreadable or invalid config file, missing data or output folder, invalid settings.
    """
    file_values = load_config_file(args.config, TrainConfig) if args.config is not None else {}
    flags = flag_values(args, _FIELD_OF_FLAG, ignore={"config"})
    for field_name, flag in (("data", "--data"), ("output_dir", "-o/--output")):
        if field_name not in flags and field_name not in file_values:
            raise LiteSamError(f"{flag} is required (on the command line or as {field_name} in --config)")
    try:
        return build_config(TrainConfig, file_values, flags)
    except (TypeError, ValueError) as error:
        raise LiteSamError(f"invalid training settings: {error}") from None


def run_train(args: argparse.Namespace) -> int:
    """Run ``litesam train`` with parsed arguments; prints the JSON summary (rank 0) and returns the exit status."""
    from .loop import train

    config = config_from_args(args)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        summary = train(config)
    except FloatingPointError as error:
        raise LiteSamError(str(error)) from None
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(summary))
        checkpoint = shlex.quote(summary["checkpoint"])
        print(f"new weights carry no SegEvery filters (SAM's apply); to calibrate them: litesam calibrate "
              f"--checkpoint {checkpoint} -o {checkpoint} [--data …]", file=sys.stderr)
    return 0
