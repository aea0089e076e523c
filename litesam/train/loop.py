"""The training loop: ``train(config)``.

Recipe (design notes §5; the paper gives only data size, epochs and resolutions, so the optimiser settings
are ASSUMPTIONS): AdamW (β = 0.9, 0.999), LR 4e-4, weight decay 0.1 on weights (not on biases, norms and
other 1-D parameters), linear warm-up then cosine decay per step, gradient clipping at norm 1, 4 epochs.
End to end: the image encoder, AutoPPN, prompt encoder and mask decoder are all trained; the loss is
``L_mask + λ·L_autoppn`` (:mod:`litesam.train.losses`).

Output folder::

    out/train_log.jsonl         one JSON line per logged step (step, epoch, lr, losses, seconds)
    out/step_0001000.pt         periodic checkpoints (save_checkpoint: weights + variant; build_model loads them)
    out/last.pt                 the latest checkpoint
    out/last.state.pt           optimiser, scheduler, step and epoch of last.pt, for resuming

Resuming continues from ``last.pt`` / ``last.state.pt`` at the same step; the data order of every epoch
depends only on the seed and the epoch, and the already-seen batches of the interrupted epoch are skipped,
so a resumed run sees the same samples as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..build import build_model, get_variant, load_sam_weights, save_checkpoint
from ..errors import CheckpointError
from ..modeling.autoppn import decode_proposals
from ..modeling.lite_sam import LiteSAM
from .annotations import load_records
from .data import SegmentationDataset, TrainBatch, collate_samples
from .losses import LossWeights, box_losses, heatmap_loss, mask_losses
from .prompts import PromptConfig, match_proposals

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
LAST_STATE = "last.state.pt"
LOG_FILE = "train_log.jsonl"
STATE_FORMAT = "litesam-train-state/1"


@dataclass
class TrainConfig:
    """Everything ``train`` needs; defaults follow the assumptions in the module docstring.

    Attributes:
        data: COCO annotation file, SA-1B JSON file or folder of SA-1B JSON files.
        images: image folder (required for COCO; SA-1B defaults to the JSON folder).
        output_dir: where logs and checkpoints go.
        variant: model variant (``litesam_r640``, ``litesam_r1024``, ``litesam_tiny``).
        epochs: passes over the data.
        max_steps: stop after this many optimiser steps in total (None: after ``epochs``). The LR schedule
            still spans ``epochs``, so a run stopped by ``max_steps`` and resumed later matches an
            uninterrupted one.
        batch_size: images per step.
        lr, weight_decay, betas: AdamW settings.
        warmup_steps: linear warm-up from ~0 to ``lr``; cosine decay to ``lr·min_lr_ratio`` afterwards.
        min_lr_ratio: final LR as a fraction of ``lr``.
        grad_clip: maximum global gradient norm (0 disables clipping).
        max_masks: masks with prompts per image.
        mask_scale: ``"low_res"`` (loss at S/4) or ``"input"`` (loss at S, logits upsampled).
        prompts: prompt simulation; losses: loss weights.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, …
        amp: bfloat16 autocast on CUDA (ignored on the CPU).
        num_workers: DataLoader worker processes.
        seed: data order, mask sampling, prompt noise and model initialisation.
        log_every: steps between log lines.
        checkpoint_every: steps between checkpoints (0: only at the end of every epoch and of training).
        init_checkpoint: start from one of our checkpoints (same variant).
        sam_checkpoint: initialise the prompt encoder and mask decoder from an official SAM checkpoint.
        resume: continue the run in ``output_dir`` (True) or from the given ``*.state.pt`` file.
    """

    data: str | Path
    output_dir: str | Path
    images: str | Path | None = None
    variant: str = "litesam_r640"
    epochs: int = 4
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 4e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    max_masks: int = 64
    mask_scale: Literal["low_res", "input"] = "low_res"
    prompts: PromptConfig = field(default_factory=PromptConfig)
    losses: LossWeights = field(default_factory=LossWeights)
    device: str = "auto"
    amp: bool = False
    num_workers: int = 0
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 1000
    init_checkpoint: str | Path | None = None
    sam_checkpoint: str | Path | None = None
    resume: bool | str | Path = False

    def __post_init__(self) -> None:
        get_variant(self.variant)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be ≥ 1 or None, got {self.max_steps}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.grad_clip < 0 or self.log_every < 1:
            raise ValueError("lr must be > 0; warmup_steps and grad_clip ≥ 0; log_every ≥ 1")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be ≥ 0, got {self.checkpoint_every}")
        if self.init_checkpoint is not None and self.resume:
            raise ValueError(
                "init_checkpoint and resume exclude each other (resume restores its own weights)"
            )

    def to_json(self) -> dict:
        """The configuration as JSON-serialisable data (paths as strings)."""
        return json.loads(json.dumps(asdict(self), default=str))


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier at optimiser step ``step`` (0-based): linear warm-up, then cosine to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.AdamW:
    """AdamW with weight decay on the ≥ 2-D weights only (biases, norm scales and 1-D vectors are not decayed)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def training_losses(
    model: LiteSAM,
    batch: TrainBatch,
    prompts: PromptConfig | None = None,
    weights: LossWeights | None = None,
) -> dict[str, torch.Tensor]:
    """Forward a batch through the whole model and compute every loss term.

    Per image: the encoder gives the embedding and the AutoPPN maps; point-prompted masks are decoded with
    three outputs (best one trained), box-prompted masks with one; optionally AutoPPN's own proposals that
    match a ground-truth box are decoded as point + box with three outputs (best one trained).

    Args:
        model: the Lite-SAM being trained (its mode is left as it is).
        batch: a batch on the model's device.
        prompts: prompt settings (only the proposal settings are used here; the rest shaped the batch);
            default :class:`PromptConfig`.
        weights: loss weights; default :class:`LossWeights`.
    Returns:
        Scalar tensors: ``loss`` (the total to minimise), ``mask`` (all prompt kinds), ``focal``, ``dice``,
        ``iou``, ``heat``, ``box_l1``, ``box_giou``, and the prompt counts ``n_point``, ``n_box``,
        ``n_proposal``.
    """
    prompts = prompts or PromptConfig()
    weights = weights or LossWeights()
    embeddings, ppn = model.image_encoder(batch.model_input(model.preprocess))
    image_pe = model.prompt_encoder.get_dense_pe()
    groups: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {
        "point": [],
        "box": [],
        "proposal": [],
    }

    proposals = None
    if prompts.proposals_per_image > 0:
        with torch.no_grad():
            detached = type(ppn)(*(t.detach().float() for t in ppn))
            stride = model.image_encoder.autoppn.stride
            proposals = [
                decode_proposals(type(ppn)(*(t[i : i + 1] for t in detached)), size, stride)[0]
                for i, size in enumerate(batch.input_sizes)
            ]
    for i in range(len(batch)):
        embedding, masks, use_point = embeddings[i : i + 1], batch.gt_masks[i], batch.use_point[i]
        if use_point.any():
            points = _foreground(batch.point_coords[i][use_point])
            logits, iou = _decode(model, embedding, image_pe, points, None, multimask=True)
            groups["point"].append((logits, iou, masks[use_point]))
        if (~use_point).any():
            boxes = batch.prompt_boxes[i][~use_point]
            logits, iou = _decode(model, embedding, image_pe, None, boxes, multimask=False)
            groups["box"].append((logits, iou, masks[~use_point]))
        if proposals is not None:
            found, gt = match_proposals(
                proposals[i].boxes, batch.gt_boxes[i], prompts.proposal_match_iou, prompts.proposals_per_image
            )
            if len(found):
                points = _foreground(proposals[i].points[found])
                logits, iou = _decode(
                    model, embedding, image_pe, points, proposals[i].boxes[found], multimask=True
                )
                groups["proposal"].append((logits, iou, masks[gt]))

    counts = {kind: sum(len(t) for _, _, t in items) for kind, items in groups.items()}
    total_prompts = sum(counts.values())
    zero = embeddings.sum() * 0.0
    mask_terms = {"mask": zero, "focal": zero, "dice": zero, "iou": zero}
    for kind, items in groups.items():
        if not items:
            continue
        terms = mask_losses(
            torch.cat([logits for logits, _, _ in items]),
            torch.cat([iou for _, iou, _ in items]),
            torch.cat([targets for _, _, targets in items]),
            weights,
        )
        share = counts[kind] / total_prompts  # every prompt counts equally, whatever its kind
        mask_terms = {key: mask_terms[key] + share * terms[key] for key in mask_terms}

    heat = heatmap_loss(
        ppn.heat_logits.float(), batch.heat_target, batch.heat_valid, batch.num_peaks, weights.heat_beta
    )
    box = box_losses(ppn.box_ltrb.float(), batch.box_target, batch.heat_target, weights.box_min_heat)
    autoppn = weights.heat * heat + weights.box_l1 * box["box_l1"] + weights.box_giou * box["box_giou"]
    return {
        "loss": mask_terms["mask"] + weights.autoppn * autoppn,
        **mask_terms,
        "heat": heat,
        **box,
        "n_point": torch.tensor(float(counts["point"])),
        "n_box": torch.tensor(float(counts["box"])),
        "n_proposal": torch.tensor(float(counts["proposal"])),
    }


def _foreground(coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K×2 (x, y) points → the prompt encoder's (K×1×2 coords, K×1 labels), one foreground point each."""
    return coords[:, None, :], torch.ones((len(coords), 1), dtype=torch.int64, device=coords.device)


def _decode(
    model: LiteSAM,
    embedding: torch.Tensor,
    image_pe: torch.Tensor,
    points: tuple[torch.Tensor, torch.Tensor] | None,
    boxes: torch.Tensor | None,
    multimask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K prompts on one 1×C×h×w embedding → (K×C'×4h×4w float32 logits, K×C' float32 predicted IoU)."""
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
    low_res, iou = model.mask_decoder(
        image_embeddings=embedding,
        image_pe=image_pe,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    return low_res.float(), iou.float()


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of one epoch in a seeded random order, starting after ``skip_batches`` batches.

    The order depends only on (seed, epoch), so an interrupted epoch can be finished exactly.
    """

    def __init__(self, size: int, batch_size: int, seed: int, epoch: int, skip_batches: int = 0) -> None:
        self.order = np.random.default_rng([seed, epoch, 1]).permutation(size)
        self.batch_size = batch_size
        self.skip_batches = skip_batches

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(self.skip_batches * self.batch_size, len(self.order), self.batch_size):
            yield self.order[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        return max(0, math.ceil(len(self.order) / self.batch_size) - self.skip_batches)


def train(config: TrainConfig) -> dict:
    """Train a Lite-SAM variant end to end (see the module docstring for the recipe and the output folder).

    Returns:
        ``{"step", "epoch", "checkpoint" (path of last.pt), "losses" (last logged values), "seconds"}``.
    Raises:
        DatasetError: the data cannot be read. CheckpointError: an init/resume file is unusable.
    """
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(config.device)
    torch.manual_seed(config.seed)

    records = load_records(config.data, config.images)  # fail on bad data before building anything
    state = _read_state(config, out) if config.resume else None
    if state is not None:
        model = build_model(config.variant, checkpoint=state["checkpoint"])
    elif config.init_checkpoint is not None:
        model = build_model(config.variant, checkpoint=config.init_checkpoint)
    else:
        model = build_model(config.variant)
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
    total_steps = config.epochs * steps_per_epoch  # the LR schedule always spans every epoch
    stop_step = total_steps if config.max_steps is None else min(total_steps, config.max_steps)

    optimizer = build_optimizer(model, config.lr, config.weight_decay, config.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, config.warmup_steps, total_steps, config.min_lr_ratio)
    )
    step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
    logger.info(
        "training %s on %d images, %d steps/epoch, %d steps scheduled, from step %d to %d, device %s",
        config.variant,
        len(dataset),
        steps_per_epoch,
        total_steps,
        step,
        stop_step,
        device,
    )

    start_time = time.perf_counter()
    last_logged: dict[str, float] = {}
    running: dict[str, float] = {}
    running_count = 0
    autocast = device.type == "cuda" and config.amp
    while step < stop_step:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        dataset.set_epoch(epoch)
        loader = DataLoader(
            dataset,
            batch_sampler=EpochBatchSampler(
                len(dataset), config.batch_size, config.seed, epoch, done_in_epoch
            ),
            collate_fn=collate_samples,
            num_workers=config.num_workers,
            pin_memory=device.type == "cuda",
        )
        for batch in loader:
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                losses = training_losses(model, batch, config.prompts, config.losses)
            if not torch.isfinite(losses["loss"]):
                raise FloatingPointError(
                    f"the loss became {float(losses['loss'].detach())} at step {step}; lower the LR"
                )
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
            optimizer.step()
            scheduler.step()
            step += 1

            for key, value in losses.items():
                running[key] = running.get(key, 0.0) + float(value.detach())
            running["grad_norm"] = running.get("grad_norm", 0.0) + float(grad_norm)
            running_count += 1
            if step % config.log_every == 0 or step == stop_step:
                last_logged = {key: value / running_count for key, value in running.items()}
                _log(
                    out,
                    step,
                    epoch,
                    scheduler.get_last_lr()[0],
                    last_logged,
                    time.perf_counter() - start_time,
                )
                running, running_count = {}, 0
            end_of_epoch = step % steps_per_epoch == 0
            if (
                (config.checkpoint_every and step % config.checkpoint_every == 0)
                or end_of_epoch
                or step == stop_step
            ):
                _checkpoint(model, optimizer, scheduler, config, out, step, epoch)
            if step >= stop_step:
                break

    checkpoint = out / LAST_CHECKPOINT
    if not checkpoint.exists():  # resumed at the very end: nothing new to save
        _checkpoint(model, optimizer, scheduler, config, out, step, (step - 1) // steps_per_epoch)
    return {
        "step": step,
        "epoch": (step - 1) // steps_per_epoch,
        "checkpoint": str(checkpoint),
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
    record = {
        "step": step,
        "epoch": epoch,
        "lr": lr,
        **{k: round(v, 6) for k, v in values.items()},
        "seconds": round(seconds, 2),
    }
    with open(out / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    logger.info(
        "step %d epoch %d lr %.3g loss %.4f (mask %.4f heat %.4f box_l1 %.4f box_giou %.4f)",
        step,
        epoch,
        lr,
        values["loss"],
        values["mask"],
        values["heat"],
        values["box_l1"],
        values["box_giou"],
    )


def _checkpoint(model, optimizer, scheduler, config: TrainConfig, out: Path, step: int, epoch: int) -> None:
    save_checkpoint(model, out / f"step_{step:07d}.pt", config.variant)
    last = save_checkpoint(model, out / LAST_CHECKPOINT, config.variant)
    state = {
        "format": STATE_FORMAT,
        "variant": config.variant,
        "step": step,
        "epoch": epoch,
        "checkpoint": last.name,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "config": config.to_json(),
    }
    # Write-then-rename, so an interruption never leaves a half-written state beside a newer checkpoint.
    partial = out / (LAST_STATE + ".partial")
    torch.save(state, partial)
    partial.replace(out / LAST_STATE)
    logger.info("checkpoint at step %d: %s", step, last)


def _read_state(config: TrainConfig, out: Path) -> dict:
    path = out / LAST_STATE if config.resume is True else Path(config.resume)
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} does not exist (no earlier run in {out}?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read training state {path}: {error}") from error
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a training state written by litesam train")
    if state["variant"] != config.variant:
        raise CheckpointError(
            f"{path} belongs to a {state['variant']!r} run, but variant {config.variant!r} was asked for"
        )
    state["checkpoint"] = path.parent / state["checkpoint"]
    return state
