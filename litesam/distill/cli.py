"""``litesam distill``: the command-line front of :func:`litesam.distill.loop.distill`.

Settings come in three layers: the :class:`~litesam.distill.config.DistillConfig` defaults (shown by
``--help``), a config file (``--config run.toml`` or ``.json``), and the flags given, which win. Only the
standard library and the torch-free config module are imported when the parser is built.

``litesam.cli`` adds the sub-command with :func:`add_distill_command`; its ``main`` turns a
:class:`litesam.errors.LiteSamError` into a one-line message and exit status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from .._cli_options import positive_int
from ..errors import LiteSamError
from .config import DistillConfig, read_config_file

_DEFAULTS = {f.name: f.default for f in fields(DistillConfig)}

#: dest → (flag, type, help); every default is DistillConfig's (argparse keeps None to tell what was given).
_OPTIONS = {
    "teacher": ("--teacher", Path, "teacher checkpoint: an official SAM / MobileSAM file or one of ours"),
    "data": ("--data", str, 'a folder of images, a COCO or SA-1B annotation path (images only), or "synthetic"'),
    "output_dir": ("-o", Path, "folder for logs, checkpoints and the cache"),
    "images": ("--images", Path, "image folder of a COCO annotation file"),
    "variant": ("--variant", str, "student: litesam_r640, litesam_r1024, litesam_tiny_student, …"),
    "cache_dir": ("--cache", Path, "root of the teacher caches (default: OUTPUT/cache); shareable between runs"),
    "shard_size": ("--shard-size", positive_int, "images per cache shard"),
    "synthetic_images": ("--synthetic-images", positive_int, "size of the synthetic set"),
    "synthetic_seed": ("--synthetic-seed", int, "seed of the synthetic set"),
    "epochs": ("--epochs", positive_int, "passes over the data"),
    "max_steps": ("--max-steps", positive_int, "length of the run in optimiser steps (overrides --epochs)"),
    "stop_after": ("--stop-after", positive_int, "end this invocation after this many steps; --resume continues"),
    "batch_size": ("--batch-size", positive_int, "images per micro-batch (per process under torchrun)"),
    "accumulate": ("--accumulate", positive_int, "micro-batches per optimiser step (gradient accumulation)"),
    "lr": ("--lr", float, "peak AdamW LR (default: 2e-3 for the tiny students, else 1e-3)"),
    "weight_decay": ("--weight-decay", float, "AdamW weight decay"),
    "warmup_steps": ("--warmup-steps", int, "linear warm-up steps (default: 5%% of the run, at most 1000)"),
    "grad_clip": ("--grad-clip", float, "max gradient norm; 0: no clipping"),
    "resample": ("--resample", str, "teacher embedding → student grid: bilinear or antialias"),
    "pseudo_prompts": ("--pseudo-prompts", str, "pseudo-masks: grid (SAM's point grid) or auto (the teacher's AutoPPN)"),
    "points_per_side": ("--points-per-side", positive_int, "the teacher's SegEvery grid for pseudo-masks"),
    "pred_iou_thresh": ("--pred-iou-thresh", float, "pseudo-masks: predicted-IoU filter (SAM: 0.88)"),
    "stability_score_thresh": ("--stability-score-thresh", float, "pseudo-masks: stability filter (SAM: 0.95)"),
    "embedding_weight": ("--embedding-weight", float, "weight of the embedding MSE"),
    "autoppn_weight": ("--autoppn-weight", float, "weight of the AutoPPN terms"),
    "decoder_weight": ("--decoder-weight", float, "weight of the decoder fine-tuning term"),
    "max_masks": ("--max-masks", positive_int, "pseudo-masks prompted per image (decoder fine-tuning)"),
    "device": ("--device", str, "auto, cpu, cuda, cuda:N"),
    "num_workers": ("--workers", int, "data loader processes (default: 0 on ≤ 2 CPUs, else half, ≤ 4)"),
    "cache_mb": ("--cache-mb", int, "RAM (MiB) keeping prepared images (0: off; no loader workers)"),
    "seed": ("--seed", int, "student initialisation and data order"),
    "log_every": ("--log-every", positive_int, "steps between log lines"),
    "checkpoint_every": ("--checkpoint-every", int, "steps between checkpoints; 0: only at the end"),
}
_SWITCHES = {
    "autoppn": "learn AutoPPN from the teacher's pseudo-masks",
    "teacher_autoppn": "also learn an AutoPPN head on the teacher's embeddings (teacher_autoppn.pt)",
    "finetune_decoder": "also fine-tune the copied mask decoder on the teacher's pseudo-masks",
    "amp": "bfloat16 autocast on CUDA",
    "resume": "continue the run in the output folder",
    "progress": "tqdm progress bars on stderr",
}


def add_distill_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``distill`` to the ``litesam`` sub-commands; returns its parser."""
    parser = subparsers.add_parser(
        "distill",
        help="distil a Lite-SAM student from a SAM-family teacher on unlabeled images",
        description="Distil a Lite-SAM student from a teacher checkpoint on unlabeled images: the student's image "
        "encoder learns the teacher's embedding (cached once on disk), the teacher's prompt encoder and mask "
        "decoder are copied, AutoPPN learns from the teacher's SegEvery masks. Prints a JSON summary; writes "
        "distill_log.jsonl, last.pt (the student) and last.state.pt into the output folder. Run under torchrun "
        "for DDP.",
    )
    add_distill_options(parser)
    parser.set_defaults(run=run_distill)
    return parser


def add_distill_options(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """Add ``--config`` and every setting of :class:`DistillConfig` as a flag (except the ``exclude`` fields),
    each defaulting to None so that :func:`config_from_args` can tell the flags given."""
    parser.add_argument("--config", type=Path, help="a JSON or TOML file of settings (DistillConfig fields); flags win")
    for dest, (flag, kind, text) in _OPTIONS.items():
        if dest in exclude:
            continue
        default = _DEFAULTS[dest]
        shown = "" if default is None or dest in ("teacher", "data", "output_dir") else f" (default: {default})"
        names = [flag, "--output"] if flag == "-o" else [flag]
        parser.add_argument(*names, dest=dest, type=kind, default=None, help=text + shown)
    for dest, text in _SWITCHES.items():
        parser.add_argument(f"--{dest.replace('_', '-')}", dest=dest, action=argparse.BooleanOptionalAction,
                            default=None, help=f"{text} (default: {_DEFAULTS[dest]})")


def config_from_args(args: argparse.Namespace, **fixed) -> DistillConfig:
    """Defaults ← config file ← given flags ← ``fixed`` (settings the caller decides, e.g. ``data``).

    Raises:
        LiteSamError: an unreadable config file, a missing teacher / data / output, or an invalid value.
    """
    try:
        values = read_config_file(args.config) if args.config is not None else {}
    except ValueError as error:
        raise LiteSamError(str(error)) from None
    for dest in (*_OPTIONS, *_SWITCHES):
        if getattr(args, dest, None) is not None:
            values[dest] = getattr(args, dest)
    values.update(fixed)
    missing = [flag for dest, flag in (("teacher", "--teacher"), ("data", "--data"), ("output_dir", "-o/--output"))
               if values.get(dest) is None]
    if missing:
        raise LiteSamError(f"give {', '.join(missing)} (as flags or in --config)")
    try:
        return DistillConfig(**values)
    except (TypeError, ValueError) as error:
        raise LiteSamError(f"invalid distillation settings: {error}") from None


def run_distill(args: argparse.Namespace) -> int:
    """Run ``litesam distill``; prints the JSON summary and returns the exit status."""
    config = config_from_args(args)
    from .loop import distill

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        summary = distill(config)
    except FloatingPointError as error:
        raise LiteSamError(str(error)) from None
    except ValueError as error:  # e.g. a CUDA device asked for where there is none
        if isinstance(error, LiteSamError):
            raise
        raise LiteSamError(str(error)) from None
    print(json.dumps(summary))
    checkpoint = shlex.quote(summary["checkpoint"])
    images = f" --images {shlex.quote(str(config.images))}" if config.images else ""
    print(f"new weights carry no SegEvery filters (SAM's apply); to calibrate them against the teacher, without "
          f"labels: litesam calibrate --checkpoint {checkpoint} --teacher {shlex.quote(str(config.teacher))} --data "
          f"{shlex.quote(str(config.data))}{images} -o {checkpoint}", file=sys.stderr)
    return 0
