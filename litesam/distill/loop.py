"""The distillation run: ``distill(config)`` (settings in :mod:`.config`, losses in :mod:`.objective`,
checkpoints and resume in :mod:`.state`, the teacher caches in :mod:`.teacher`).

Steps: open the images; load the teacher and check the student fits it; fill the teacher caches (only the
shards missing or corrupt; each process of a DDP run its share, then all wait); build the student (the
teacher's prompt encoder and mask decoder, a random image encoder) or restore it; train for the planned
optimiser steps, each of ``accumulate`` micro-batches; write ``last.pt`` and the state every
``checkpoint_every`` steps and at the end. Later epochs read the cached teacher outputs only: the teacher's
encoder runs once per image per cache.

Run features come from the trainer's shared :class:`litesam.train.runtime.RunContext`: ``device="auto"``
(CUDA when available, else the CPU); bfloat16 autocast on CUDA with ``amp``; DDP under ``torchrun``
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; gloo on the CPU, NCCL on CUDA; process 0 writes logs and
checkpoints); gradient accumulation (gradients all-reduced at a step's last micro-batch); tqdm progress on
a terminal. The data order stays :class:`~litesam.distill.data.DistillBatchSampler`'s (one global batch cut
into per-process slices). JSONL metrics.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..build import build_model
from ..variants import ENGINE_AUTOPPN, get_variant
from ..errors import DatasetError
from ..modeling.autoppn import AutoPPN
from ..train.config import default_workers
from ..train.data import cache_budget
from ..train.optim import build_optimizer, build_scheduler
from ..train.runtime import RunContext
from .config import DistillConfig
from .data import DistillBatch, DistillBatchSampler, DistillDataset, collate_distill
from .objective import distill_losses
from .sources import ImageSource, open_source
from .state import LAST_CHECKPOINT, TEACHER_AUTOPPN, read_state, save_teacher_with_head, write_state
from .student import build_student, check_student_fits
from .teacher import fill_caches, load_teacher, pseudo_mask_config, teacher_caches

logger = logging.getLogger(__name__)

LOG_FILE = "distill_log.jsonl"


class _Objective(nn.Module):
    """The trained modules behind one ``forward(batch) → loss terms`` (what DDP wraps)."""

    def __init__(self, student: nn.Module, teacher_head: AutoPPN | None, config: DistillConfig) -> None:
        super().__init__()
        self.student = student
        self.teacher_head = teacher_head
        self.config = config

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        c = self.config
        return distill_losses(
            self.student,
            batch,
            resample=c.resample,
            weights={"embedding": c.embedding_weight, "autoppn": c.autoppn_weight, "decoder": c.decoder_weight},
            autoppn=c.autoppn,
            finetune_decoder=c.finetune_decoder,
            teacher_head=self.teacher_head,
        )


def distill(config: DistillConfig, source: ImageSource | None = None) -> dict:
    """Distil a Lite-SAM student from a teacher (module docstring).

    Args:
        config: the run's settings.
        source: the images (e.g. a Label Studio project's, from the backend); None: ``config.data``.
    Returns:
        ``{"step", "total_steps", "epoch", "checkpoint", "teacher_autoppn" (path or None), "cache"
        (directories and shards computed now), "losses" (last logged means), "seconds"}``.
    Raises:
        DatasetError, CheckpointError: unusable data, teacher, student or resume state (clear messages).
        FloatingPointError: the loss became NaN or infinite.
    """
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = RunContext.start(config.device, config.amp, config.accumulate, config.progress)
    try:
        return _distill(config, source, out, run)
    finally:
        run.close()


def _distill(config: DistillConfig, source: ImageSource | None, out: Path, run: RunContext) -> dict:
    start_time = time.perf_counter()
    get_variant(config.variant)
    if source is None:
        source = open_source(config.data, config.images, config.synthetic_images, config.synthetic_seed)
    teacher = load_teacher(config.teacher, run.device)
    check_student_fits(config.variant, teacher.model)
    state = read_state(out, config.variant) if config.resume else None

    masks_config = None
    if config.needs_pseudo_masks:
        masks_config = pseudo_mask_config(teacher, config.points_per_side, config.pred_iou_thresh,
                                          config.stability_score_thresh, config.pseudo_prompts)
    embedding_cache, mask_cache = teacher_caches(
        teacher, source, config.resolved_cache_dir(), config.shard_size, masks_config
    )
    computed = _fill(config, teacher, source, embedding_cache, mask_cache, masks_config, run)
    shards = [embedding_cache.read(s) for s in range(embedding_cache.num_shards)]
    masks = None
    if mask_cache is not None:
        masks = [m for s in range(mask_cache.num_shards) for m in mask_cache.read(s, mmap=False)["masks"]]

    if state is not None:
        student = build_model(checkpoint=out / LAST_CHECKPOINT).train()
    else:
        student = build_student(config.variant, teacher.model, config.seed)
    _freeze(student, config)
    teacher_head = None
    if config.teacher_autoppn:
        teacher_cfg = get_variant(teacher.variant)
        torch.manual_seed(config.seed + 1)  # the head's initialisation, independent of the student's
        teacher_head = AutoPPN(teacher.embed_dim, ENGINE_AUTOPPN if teacher_cfg.is_engine else teacher_cfg.autoppn)
        if state is not None:
            teacher_head.load_state_dict(state["teacher_head"])
    objective = _Objective(student, teacher_head, config).to(run.device)
    wrapped = run.wrap(objective)

    workers = default_workers() if config.num_workers is None else config.num_workers
    dataset = DistillDataset(
        source,
        shards,
        config.shard_size,
        masks,
        image_size=student.img_size,
        stride=student.image_encoder.autoppn.stride,
        max_masks=config.max_masks,
        seed=config.seed,
        teacher_frame=None if teacher_head is None else (teacher.model.img_size, teacher_head.stride),
        cache_bytes=cache_budget(config.cache_mb, workers),
    )
    per_epoch = DistillBatchSampler.batches_per_epoch(len(dataset), config.batch_size, run.world_size)
    if per_epoch < 1:
        raise DatasetError(f"{len(dataset)} images are fewer than one global batch of {config.batch_size * run.world_size}")
    total_steps = int(state["total_steps"]) if state is not None else config.total_steps(per_epoch)
    stop_step = total_steps if config.stop_after is None else min(total_steps, config.stop_after)
    warmup = config.resolved_warmup(total_steps)
    optimizer = build_optimizer(objective, config.resolved_lr(), config.weight_decay, (0.9, 0.999))
    scheduler = build_scheduler(optimizer, warmup, total_steps, 0.0)
    step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
    if run.is_main:
        logger.info(
            "distilling %s from %s (%s) on %d images: steps %d to %d of %d (%d micro-batches of %d per step), "
            "LR %g, warm-up %d, %s × %d",
            config.variant, teacher.checkpoint, teacher.variant, len(dataset), step, stop_step, total_steps,
            config.accumulate, config.batch_size, config.resolved_lr(), warmup, run.device, run.world_size,
        )

    batches = _micro_batches(dataset, config, run, step * config.accumulate, per_epoch, workers)
    running: dict[str, float] = {}
    last_logged: dict[str, float] = {}
    with run.progress(stop_step, initial=step, desc="distill") as bar:
        while step < stop_step:
            epoch = (step * config.accumulate) // per_epoch
            for micro in range(config.accumulate):
                batch = next(batches).to(run.device)
                with run.micro_batch(wrapped, micro):
                    with run.autocast():
                        losses = wrapped(batch)
                    if not torch.isfinite(losses["loss"]):
                        raise FloatingPointError(f"the loss became {float(losses['loss'])} at step {step}; lower the LR")
                    run.scaled(losses["loss"]).backward()
                for key, value in losses.items():
                    running[key] = running.get(key, 0.0) + float(value.detach())
                running["_count"] = running.get("_count", 0.0) + 1
            torch.nn.utils.clip_grad_norm_(objective.parameters(), config.grad_clip or math.inf)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % config.log_every == 0 or step == stop_step:
                count = running.pop("_count")
                last_logged = {key: value / count for key, value in running.items()}
                running = {}
                if run.is_main:
                    _log(out, step, epoch, lr, last_logged, time.perf_counter() - start_time)
                    bar.set_postfix(loss=f"{last_logged['loss']:.4f}")
            if run.is_main and ((config.checkpoint_every and step % config.checkpoint_every == 0) or step == stop_step):
                write_state(out, student, teacher_head, optimizer, scheduler, step, total_steps, config.to_json())

    teacher_checkpoint = None
    if run.is_main:
        if not (out / LAST_CHECKPOINT).exists():  # resumed at the very end
            write_state(out, student, teacher_head, optimizer, scheduler, step, total_steps, config.to_json())
        if teacher_head is not None:
            teacher_checkpoint = str(save_teacher_with_head(teacher.model, teacher_head.cpu().eval(), out / TEACHER_AUTOPPN))
    return {
        "step": step,
        "total_steps": total_steps,
        "epoch": max(0, step * config.accumulate - 1) // per_epoch,
        "checkpoint": str(out / LAST_CHECKPOINT),
        "teacher_autoppn": teacher_checkpoint,
        "cache": {"embeddings": str(embedding_cache.directory),
                  "masks": None if mask_cache is None else str(mask_cache.directory), **computed},
        "losses": last_logged,
        "seconds": round(time.perf_counter() - start_time, 3),
    }


def _fill(config, teacher, source, embedding_cache, mask_cache, masks_config, run: RunContext) -> dict[str, int]:
    """Fill this process's share of the caches, then wait for every process."""
    with run.progress(len(source), desc="teacher cache") as bar:
        computed = fill_caches(teacher, source, embedding_cache, mask_cache, masks_config, run.rank, run.world_size,
                               progress=bar.update)
    run.barrier()
    return computed


def _freeze(student: nn.Module, config: DistillConfig) -> None:
    """Only what a term trains keeps its gradient: the image encoder always, AutoPPN and the mask decoder when
    asked for; the prompt encoder never."""
    for parameter in student.prompt_encoder.parameters():
        parameter.requires_grad_(False)
    for parameter in student.mask_decoder.parameters():
        parameter.requires_grad_(config.finetune_decoder)
    for parameter in student.image_encoder.autoppn.parameters():
        parameter.requires_grad_(config.autoppn)


def _micro_batches(dataset: DistillDataset, config: DistillConfig, run: RunContext, start: int, per_epoch: int,
                   workers: int) -> Iterator[DistillBatch]:
    """Micro-batches from global index ``start`` on, epoch after epoch (each epoch its own seeded order)."""
    index = start
    while True:
        epoch, skip = divmod(index, per_epoch)
        dataset.set_epoch(epoch)
        sampler = DistillBatchSampler(len(dataset), config.batch_size, config.seed, epoch, skip, run.rank,
                                      run.world_size)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_distill, num_workers=workers,
                            pin_memory=run.device.type == "cuda")
        for batch in loader:
            yield batch
            index += 1


def _log(out: Path, step: int, epoch: int, lr: float, values: dict[str, float], seconds: float) -> None:
    record = {"step": step, "epoch": epoch, "lr": lr, **{k: round(v, 6) for k, v in values.items()},
              "seconds": round(seconds, 2)}
    with open(out / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
