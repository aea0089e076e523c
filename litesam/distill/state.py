"""Checkpoints and exact resume of a distillation run.

Output folder::

    out/distill_log.jsonl       one JSON line per logged step (step, epoch, lr, loss terms, seconds)
    out/last.pt                 the student (save_checkpoint: build_model loads it, the backend serves it)
    out/last.state.pt           optimiser, scheduler, step, planned steps, RNG, the teacher head, the config
    out/teacher_autoppn.pt      with teacher_autoppn: the teacher's weights plus the AutoPPN head learnt on its
                                embeddings (same variant as the teacher; build_model loads it with the head)
    out/cache/                  the teacher caches (unless cache_dir is elsewhere)

``last.state.pt`` is written to a ``.partial`` file and renamed after ``last.pt``, so an interruption never
pairs a state with a newer checkpoint. Resuming restores the student from ``last.pt``, the rest from the
state, and continues at the same micro-batch of the same epoch order (:mod:`.data`), so a resumed run computes
the same weights as an uninterrupted one on the CPU (tested).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..build import save_checkpoint
from ..errors import CheckpointError
from ..modeling.autoppn import AutoPPN
from ..modeling.lite_sam import LiteSAM

LAST_CHECKPOINT = "last.pt"
LAST_STATE = "last.state.pt"
TEACHER_AUTOPPN = "teacher_autoppn.pt"
STATE_FORMAT = "litesam-distill-state/1"


def write_state(
    out: Path,
    student: LiteSAM,
    teacher_head: AutoPPN | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    total_steps: int,
    config: dict,
) -> Path:
    """Write ``last.pt`` and ``last.state.pt``; returns the path of ``last.pt``."""
    last = save_checkpoint(student, out / LAST_CHECKPOINT, student.variant)
    state = {
        "format": STATE_FORMAT,
        "variant": student.variant,
        "step": step,
        "total_steps": total_steps,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "teacher_head": None if teacher_head is None else teacher_head.state_dict(),
        "config": config,
    }
    partial = out / (LAST_STATE + ".partial")
    torch.save(state, partial)
    partial.replace(out / LAST_STATE)
    return last


def read_state(out: Path, variant: str) -> dict:
    """The state to resume from in ``out``.

    Raises:
        CheckpointError: no earlier run, an unreadable or foreign state, or another student variant.
    """
    path = out / LAST_STATE
    if not path.is_file() or not (out / LAST_CHECKPOINT).is_file():
        raise CheckpointError(f"cannot resume: {path} does not exist (no earlier distillation run in {out}?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read distillation state {path}: {error}") from error
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a state written by this version of litesam distill")
    if state["variant"] != variant:
        raise CheckpointError(f"{path} belongs to a {state['variant']!r} student, but {variant!r} was asked for")
    return state


def save_teacher_with_head(teacher: LiteSAM, head: AutoPPN, path: Path) -> Path:
    """Save the teacher with ``head`` as its AutoPPN (its own head, if any, is not changed in memory)."""
    encoder = teacher.image_encoder
    own = encoder.autoppn
    try:
        encoder.autoppn = head
        return save_checkpoint(teacher, path, teacher.variant)
    finally:
        encoder.autoppn = own
