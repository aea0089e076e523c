"""The training loop: ``train(config)`` (settings in :mod:`.config`, losses in :mod:`.objective`,
checkpoints and resuming in :mod:`.state`, devices, processes, accumulation and progress in :mod:`.runtime`)."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..build import build_model, load_sam_weights
from ..errors import LiteSamError
from .annotations import load_records
from .config import TrainConfig, input_side_at
from .data import SegmentationDataset, collate_samples
from .objective import training_losses
from .optim import build_optimizer, build_scheduler
from .runtime import RunContext
from .sources import label_studio_records
from .state import rank_rng_state, read_state, write_checkpoint, write_config
from .synthetic import synthetic_records

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"


def train(config: TrainConfig) -> dict:
    """Train a Lite-SAM variant end to end (recipe: :mod:`.config`; output folder: :mod:`.state`; devices,
    ``torchrun`` processes, accumulation and progress: :mod:`.runtime`).

    Returns:
        ``{"step", "total_steps", "epoch", "checkpoint" (path of last.pt), "losses" (last logged values, mean
        over processes), "seconds", "world_size", "replica_divergence" (largest weight difference between
        the processes at the last checkpoint; 0.0 alone)}``, on every process.
    Raises:
        DatasetError: the data cannot be read. CheckpointError: an init/resume file is unusable.
        LiteSamError: the device cannot be used. FloatingPointError: the loss or its gradient became NaN or
        infinite.
    """
    ctx = RunContext.start(config.device, config.amp, config.accumulate_steps, config.progress)
    try:
        return _train(config, ctx)
    finally:
        ctx.close()


def _train(config: TrainConfig, ctx: RunContext) -> dict:
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = ctx.device
    torch.manual_seed(config.seed)

    if config.synthetic:
        records = synthetic_records(config.synthetic_images, config.synthetic_seed)
    elif config.label_studio:
        records = label_studio_records(
            config.label_studio_url, config.label_studio_project, config.label_studio_split
        )
    else:
        records = load_records(config.data, config.images)  # fail on bad data before building anything
    state = read_state(config) if config.resume else None
    checkpoint = state["checkpoint"] if state is not None else config.init_checkpoint
    model = build_model(config.variant, checkpoint=checkpoint)
    if config.sam_checkpoint is not None and state is None:
        load_sam_weights(model, config.sam_checkpoint)
    model.to(device).train()
    ctx.seed_ranks(config.seed)
    objective = ctx.wrap(_Objective(model, config))
    workers = config.workers()

    steps_per_epoch = ctx.steps_per_epoch(len(records), config.batch_size)
    total_steps = int(state["total_steps"]) if state is not None else config.total_steps(steps_per_epoch)
    # (side, fraction) of progressive resizing: a resumed run keeps its state's (states before it: off)
    progressive = config.resolved_progressive() if state is None else tuple(state.get("progressive", (0, 0)))
    full_side = model.img_size
    sides = sorted({input_side_at(0, total_steps, full_side, progressive)[0], full_side})
    if len(sides) > 1:
        try:
            model.set_input_size(sides[0])  # fails early for an engine
        except ValueError as error:
            raise LiteSamError(f"progressive resizing: {error}") from None
    datasets = {  # one per input side, sharing the image-cache budget by the size of what they keep
        side: SegmentationDataset.for_run(
            records, model, config, workers, image_size=side, cache_share=side**2 / sum(s**2 for s in sides)
        )
        for side in sides
    }
    stop_step = total_steps if config.stop_after is None else min(total_steps, config.stop_after)
    warmup = config.resolved_warmup(total_steps)
    if warmup > total_steps / 4:
        logger.warning(
            "the warm-up (%d steps) spans %.0f%% of the run (%d steps): the LR reaches --lr late or never",
            warmup,
            100 * warmup / total_steps,
            total_steps,
        )

    optimizer = build_optimizer(model, config.resolved_lr(), config.weight_decay, config.betas)
    scheduler = build_scheduler(optimizer, warmup, total_steps, config.min_lr_ratio)
    step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(rank_rng_state(state, ctx.rank, ctx.world_size))
        step = int(state["step"])
    if ctx.is_main:
        write_config(config)
    logger.info(
        "training %s on %d images (%d steps/epoch of %d × %d micro-batches × %d processes): steps %d to %d of %d, "
        "LR %g, warm-up %d, %d loader workers, image cache %d MiB, input sides %s, %s",
        config.variant,
        len(records),
        steps_per_epoch,
        config.batch_size,
        config.accumulate_steps,
        ctx.world_size,
        step,
        stop_step,
        total_steps,
        config.resolved_lr(),
        warmup,
        workers,
        sum(d.cache_left for d in datasets.values()) // 2**20,
        _side_plan(total_steps, full_side, progressive),
        device,
    )

    start_time = time.perf_counter()
    running: dict[str, float] = {}
    last_logged: dict[str, float] = {}
    divergence, wrote = 0.0, False
    with ctx.progress(stop_step, initial=step) as bar:
        while step < stop_step:
            side, phase_end = input_side_at(step, total_steps, full_side, progressive)
            model.set_input_size(side)
            dataset = datasets[side]
            epoch, done_in_epoch = divmod(step, steps_per_epoch)
            dataset.set_epoch(epoch)
            loader = DataLoader(
                dataset,
                batch_sampler=ctx.batch_sampler(len(dataset), config.batch_size, config.seed, epoch, done_in_epoch),
                collate_fn=collate_samples,
                num_workers=workers,
                pin_memory=device.type == "cuda",
            )
            for micro_batches in ctx.optimiser_steps(loader):
                optimizer.zero_grad(set_to_none=True)
                step_losses: dict[str, float] = {}
                for index, batch in enumerate(micro_batches):
                    with ctx.micro_batch(objective, index):
                        with ctx.autocast():
                            losses = objective(batch.to(device))
                        ctx.scaled(losses["loss"]).backward()
                    for key, value in losses.items():
                        step_losses[key] = step_losses.get(key, 0.0) + float(value.detach()) / len(micro_batches)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
                if not torch.isfinite(grad_norm):  # the same on every process: the gradients are all-reduced
                    raise FloatingPointError(
                        f"the loss ({step_losses['loss']:.4g}) or its gradient became non-finite at step {step}; "
                        "lower the LR"
                    )
                lr = scheduler.get_last_lr()[0]  # the LR of this step
                optimizer.step()
                scheduler.step()
                step += 1
                bar.update()

                for key, value in {**step_losses, "grad_norm": float(grad_norm)}.items():
                    running[key] = running.get(key, 0.0) + value
                running["_count"] = running.get("_count", 0.0) + 1
                if step % config.log_every == 0 or step == stop_step:
                    count = running.pop("_count")
                    last_logged = ctx.mean_over_ranks({key: value / count for key, value in running.items()})
                    if ctx.is_main:
                        _log(out, step, epoch, side, lr, last_logged, time.perf_counter() - start_time)
                    bar.set_postfix(loss=f"{last_logged['loss']:.4f}", lr=f"{lr:.3g}", refresh=False)
                    running = {}
                if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == stop_step:
                    divergence = _checkpoint(
                        ctx, objective, model, optimizer, scheduler, config, step, total_steps, progressive
                    )
                    wrote = True
                if step >= min(stop_step, phase_end):
                    break
    if len(sides) > 1:
        model.set_input_size(full_side)

    last = out / "last.pt"
    if not wrote and not last.exists():  # resumed at the very end from a state elsewhere: save it here
        divergence = _checkpoint(
            ctx, objective, model, optimizer, scheduler, config, step, total_steps, progressive
        )
    ctx.barrier()  # every process returns once the checkpoint is on disk
    return {
        "step": step,
        "total_steps": total_steps,
        "epoch": (step - 1) // steps_per_epoch,
        "checkpoint": str(last),
        "losses": last_logged,
        "seconds": round(time.perf_counter() - start_time, 3),
        "world_size": ctx.world_size,
        "replica_divergence": divergence,
    }


class _Objective(torch.nn.Module):
    """The model and its loss as one module, so DDP sees the whole forward (``training_losses`` calls the
    model's parts, not ``model.forward``)."""

    def __init__(self, model: torch.nn.Module, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.prompts, self.weights = config.prompts, config.losses
        self.full_side = model.img_size  # the variant's side, before any progressive resizing

    def forward(self, batch) -> dict[str, torch.Tensor]:
        heat_scale = (self.full_side / self.model.img_size) ** 2  # training_losses' per-area weighing
        return training_losses(self.model, batch, self.prompts, self.weights, heat_scale)


def _checkpoint(
    ctx: RunContext, objective, model, optimizer, scheduler, config, step, total_steps, progressive
) -> float:
    """Check the replicas agree, then write the checkpoint on rank 0 (collective); returns the divergence."""
    divergence = ctx.replica_divergence(objective)
    if divergence > 0:
        logger.warning("the processes' weights differ by up to %g at step %d", divergence, step)
    rng_states = ctx.rng_states()
    if ctx.is_main:
        write_checkpoint(model, optimizer, scheduler, config, step, total_steps, rng_states, progressive)
    return divergence


def _side_plan(total_steps: int, full_side: int, progressive: tuple[int, float]) -> str:
    """The run's input sides as text, e.g. ``128 px for steps 0–5999, 256 px for steps 6000–7999``."""
    phases, step = [], 0
    while step < total_steps:
        side, end = input_side_at(step, total_steps, full_side, progressive)
        phases.append(f"{side} px for steps {step}–{end - 1}")
        step = end
    return ", ".join(phases)


def _log(
    out: Path, step: int, epoch: int, side: int, lr: float, values: dict[str, float], seconds: float
) -> None:
    record = {"step": step, "epoch": epoch, "side": side, "lr": lr}
    record.update({k: round(v, 6) for k, v in values.items()})
    record["seconds"] = round(seconds, 2)
    with open(out / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    logger.info(
        "step %d epoch %d lr %.3g loss %.4f (mask %.4f dice %.4f heat %.4f box_giou %.4f)",
        step,
        epoch,
        lr,
        values["loss"],
        values["mask"],
        values["dice"],
        values["heat"],
        values["box_giou"],
    )
