"""Checkpoints and resumable training state of a run.

Output folder::

    out/train_log.jsonl         one JSON line per logged step (step, epoch, lr, losses, seconds)
    out/step_0001000.pt         periodic checkpoints (save_checkpoint: weights + variant; build_model loads them)
    out/last.pt                 the latest checkpoint
    out/last.state.pt           optimiser, scheduler, step, planned steps and input sides, RNG state of
                                last.pt, for resuming
    out/config.json             the resolved settings of the latest invocation, ``resume`` left false
                                (``--config`` with it starts the same run afresh)

Resuming continues from ``last.pt`` / ``last.state.pt`` at the same step with the same LR schedule; the data
order of every epoch depends only on the seed and the epoch, the already-seen batches of the interrupted epoch
are skipped, and torch's RNG is restored, so a resumed run computes the same weights as an uninterrupted one
(on the CPU; tested). Under ``torchrun`` rank 0 writes the files, with every process's RNG state; resume with
the same number of processes and ``accumulate_steps`` for the same data order.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..build import save_checkpoint
from ..errors import CheckpointError
from ..modeling.lite_sam import LiteSAM
from .config import TrainConfig

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
LAST_STATE = "last.state.pt"
CONFIG_FILE = "config.json"
STATE_FORMAT = "litesam-train-state/2"


def write_checkpoint(
    model: LiteSAM,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    step: int,
    total_steps: int,
    rng_states: list[torch.Tensor] | None = None,
    progressive: tuple[int, float] = (0, 0.0),
) -> Path:
    """Write ``step_<step>.pt``, ``last.pt`` and ``last.state.pt`` into the output folder; returns last.pt.

    ``rng_states``: torch's RNG state of every process by rank (default: this process's alone).
    ``progressive``: the run's progressive resizing ``(side, fraction)``, which a resumed run keeps.
    """
    out = Path(config.output_dir)
    save_checkpoint(model, out / f"step_{step:07d}.pt", config.variant)
    last = save_checkpoint(model, out / LAST_CHECKPOINT, config.variant)
    state = {
        "format": STATE_FORMAT,
        "variant": config.variant,
        "step": step,
        "total_steps": total_steps,
        "progressive": list(progressive),
        "checkpoint": last.name,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "torch_rng_ranks": rng_states if rng_states is not None else [torch.get_rng_state()],
        "config": config.to_json(),
    }
    # Write-then-rename, so an interruption never leaves a half-written state beside a newer checkpoint.
    partial = out / (LAST_STATE + ".partial")
    torch.save(state, partial)
    partial.replace(out / LAST_STATE)
    logger.info("checkpoint at step %d: %s", step, last)
    return last


def read_state(config: TrainConfig) -> dict:
    """The training state to resume from (``config.resume``: True = the output folder's, or a path).

    Returns:
        The state dict, with ``checkpoint`` made a path beside the state file.
    Raises:
        CheckpointError: missing, unreadable, foreign or other-variant state.
    """
    out = Path(config.output_dir)
    path = out / LAST_STATE if config.resume is True else Path(config.resume)
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} does not exist (no earlier run in {out}?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read training state {path}: {error}") from error
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a training state written by this version of litesam train")
    if state["variant"] != config.variant:
        raise CheckpointError(
            f"{path} belongs to a {state['variant']!r} run, but variant {config.variant!r} was asked for"
        )
    state["checkpoint"] = path.parent / state["checkpoint"]
    return state


def rank_rng_state(state: dict, rank: int, world_size: int) -> torch.Tensor:
    """The RNG state process ``rank`` resumes with: its own when the run had as many processes; else rank 0's
    saved one on rank 0 and a fresh stream seeded by (step, rank) elsewhere (then only stochastic layers, such
    as drop-path, draw differently from an uninterrupted run)."""
    ranks = state.get("torch_rng_ranks") or [state["torch_rng"]]
    if len(ranks) == world_size:
        return ranks[rank]
    if rank == 0:
        logger.warning("resuming with %d processes a run saved by %d: the other ranks' RNG streams restart",
                       world_size, len(ranks))
        return ranks[0]
    return torch.Generator().manual_seed(1_000_003 * int(state["step"]) + rank).get_state()


def write_config(config: TrainConfig) -> Path:
    """Write the resolved settings as ``config.json`` into the output folder (``--config`` reads it back)."""
    path = Path(config.output_dir) / CONFIG_FILE
    settings = {**config.to_json(), "resume": False}
    path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return path
