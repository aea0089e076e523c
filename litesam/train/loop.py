"""The training loop: ``train(config)`` (settings in :mod:`.config`, losses in :mod:`.objective`,
checkpoints and resuming in :mod:`.state`)."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..build import build_model, load_sam_weights
from .annotations import load_records
from .config import TrainConfig
from .data import EpochBatchSampler, SegmentationDataset, collate_samples
from .objective import training_losses
from .optim import build_optimizer, build_scheduler
from .sources import label_studio_records
from .state import read_state, write_checkpoint
from .synthetic import synthetic_records

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"


def train(config: TrainConfig) -> dict:
    """Train a Lite-SAM variant end to end (recipe: :mod:`.config`; output folder: :mod:`.state`).

    Returns:
        ``{"step", "total_steps", "epoch", "checkpoint" (path of last.pt), "losses" (last logged values),
        "seconds"}``.
    Raises:
        DatasetError: the data cannot be read. CheckpointError: an init/resume file is unusable.
        FloatingPointError: the loss became NaN or infinite.
    """
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(config.device)
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

    dataset = SegmentationDataset(
        records,
        image_size=model.img_size,
        stride=model.image_encoder.autoppn.stride,
        max_masks=config.max_masks,
        mask_scale=config.mask_scale,
        prompts=config.prompts,
        seed=config.seed,
    )
    steps_per_epoch = math.ceil(len(dataset) / config.batch_size)
    total_steps = int(state["total_steps"]) if state is not None else config.total_steps(steps_per_epoch)
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
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
    workers = config.workers()
    logger.info(
        "training %s on %d images (%d steps/epoch): steps %d to %d of %d, LR %g, warm-up %d, %d loader workers, %s",
        config.variant,
        len(dataset),
        steps_per_epoch,
        step,
        stop_step,
        total_steps,
        config.resolved_lr(),
        warmup,
        workers,
        device,
    )

    start_time = time.perf_counter()
    running: dict[str, float] = {}
    last_logged: dict[str, float] = {}
    autocast = device.type == "cuda" and config.amp
    while step < stop_step:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        dataset.set_epoch(epoch)
        sampler = EpochBatchSampler(len(dataset), config.batch_size, config.seed, epoch, done_in_epoch)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_samples,
            num_workers=workers,
            pin_memory=device.type == "cuda",
        )
        for batch in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                losses = training_losses(model, batch.to(device), config.prompts, config.losses)
            if not torch.isfinite(losses["loss"]):
                raise FloatingPointError(
                    f"the loss became {float(losses['loss'].detach())} at step {step}; lower the LR"
                )
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
            lr = scheduler.get_last_lr()[0]  # the LR of this step
            optimizer.step()
            scheduler.step()
            step += 1

            for key, value in {**losses, "grad_norm": grad_norm}.items():
                running[key] = running.get(key, 0.0) + float(value.detach())
            running["_count"] = running.get("_count", 0.0) + 1
            if step % config.log_every == 0 or step == stop_step:
                count = running.pop("_count")
                last_logged = {key: value / count for key, value in running.items()}
                _log(out, step, epoch, lr, last_logged, time.perf_counter() - start_time)
                running = {}
            if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == stop_step:
                write_checkpoint(model, optimizer, scheduler, config, step, total_steps)
            if step >= stop_step:
                break

    last = out / "last.pt"
    if not last.exists():  # resumed at the very end: nothing new to save
        write_checkpoint(model, optimizer, scheduler, config, step, total_steps)
    return {
        "step": step,
        "total_steps": total_steps,
        "epoch": (step - 1) // steps_per_epoch,
        "checkpoint": str(last),
        "losses": last_logged,
        "seconds": round(time.perf_counter() - start_time, 3),
    }


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but CUDA is not available")
    return device


def _log(out: Path, step: int, epoch: int, lr: float, values: dict[str, float], seconds: float) -> None:
    record = {"step": step, "epoch": epoch, "lr": lr, **{k: round(v, 6) for k, v in values.items()}}
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
