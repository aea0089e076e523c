"""Settings of a training run: :class:`TrainConfig`, with :class:`PromptConfig` and :class:`LossWeights`.

Standard library only, so ``litesam train --help`` can show every default without importing torch.

Recipe (design notes §5; the paper gives only data size, epochs and resolutions, so the optimiser settings
are ASSUMPTIONS): AdamW (β = 0.9, 0.999), LR 4e-4 (2e-3 for ``litesam_tiny``: measured, see
:data:`DEFAULT_LR`), weight decay 0.1 on weights (not on biases, norms and
other 1-D parameters), linear warm-up then cosine decay to 0 over the steps the run really makes, gradient
clipping at norm 1. The loss weights are measured choices, see :class:`LossWeights`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

#: ``TrainConfig.data`` value that trains on generated scenes (:mod:`litesam.train.synthetic`).
SYNTHETIC = "synthetic"
#: ``TrainConfig.data`` value that trains on a Label Studio project's annotations (:mod:`litesam.train.sources`).
LABEL_STUDIO = "labelstudio"

#: Peak LR by variant when none is given. 4e-4 for the paper's models is an assumption (SAM's 8e-4 at batch
#: 256, scaled); for litesam_tiny on synthetic scenes (batch 8) 2e-3 halved the steps to a given mask loss
#: against 4e-4; 4e-3 won a 600-step run but lost a 2,000-step one; with its 32-channel mask features
#: (batch 4, 4,000 steps) 2e-3 beat 1e-3 on held-out scenes, 1-box mIoU 0.807 vs 0.803, 1-point 0.782 vs
#: 0.740 (README, "Training").
DEFAULT_LR = {"litesam_tiny": 2e-3}
PAPER_LR = 4e-4

#: Share of a run's steps trained at ``--progressive-side`` when ``--progressive-fraction`` is not given.
PROGRESSIVE_FRACTION = 0.5
#: ``--progressive-side`` by variant when none is given (other variants: off). litesam_tiny on synthetic
#: scenes, 8,000 steps × 4: half the steps at 128 px kept every held-out target (1-box mIoU 0.858, 1-point
#: 0.820, SegEvery recall 0.848) once the heat term is weighed per cell area (``training_losses``'
#: ``heat_scale``); without that, recall fell to 0.786 (README, "Training", tenth and eleventh rounds).
DEFAULT_PROGRESSIVE_SIDE = {"litesam_tiny": 128}

#: Longest automatic warm-up, and its share of the run (see :meth:`TrainConfig.resolved_warmup`).
MAX_AUTO_WARMUP = 1000
AUTO_WARMUP_FRACTION = 0.05


@dataclass(frozen=True)
class PromptConfig:
    """Settings of the simulated prompts (:mod:`litesam.train.prompts` describes the simulation).

    Attributes:
        point_fraction: probability that a mask is prompted with a point (else with a box), in [0, 1].
        box_noise: standard deviation of the box-corner noise, as a fraction of the box side.
        box_noise_cap: largest corner offset, in input-frame pixels.
        proposals_per_image: AutoPPN proposals matched to ground truth and trained on per image (0 = off), so
            the decoder learns the point + box prompts SegEvery gives it (design notes §5).
        proposal_match_iou: smallest box IoU for a proposal to count as a match.
    """

    point_fraction: float = 0.5
    box_noise: float = 0.1
    box_noise_cap: float = 20.0
    proposals_per_image: int = 4
    proposal_match_iou: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.point_fraction <= 1.0:
            raise ValueError(f"point_fraction must be in [0, 1], got {self.point_fraction}")
        if self.box_noise < 0 or self.box_noise_cap < 0:
            raise ValueError("box_noise and box_noise_cap must be non-negative")
        if self.proposals_per_image < 0:
            raise ValueError(f"proposals_per_image must be ≥ 0, got {self.proposals_per_image}")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (:mod:`litesam.train.losses` defines the terms).

    ``loss = focal·L_focal + dice·L_dice + iou·L_iou + autoppn·(heat·L_heat + box_l1·L_l1 + box_giou·L_giou)``.

    Measured on synthetic scenes with ``litesam_tiny`` (README, "Training"): SAM's focal 20 : dice 1 with
    α = 0.25 drives every mask logit negative within ~100 steps (the dice gradient, ~1 % of the focal one,
    cannot pull them back), so the mask loss is plain BCE (γ = 0, no α) plus dice, 1 : 1; the AutoPPN terms
    (heat summed over cells per peak) are ~3× the mask loss at initialisation and take the encoder's
    gradient, so they enter with λ = ``autoppn``.
    """

    focal: float = 1.0
    dice: float = 1.0
    iou: float = 1.0
    heat: float = 1.0
    box_l1: float = 5.0
    box_giou: float = 2.0
    autoppn: float = 0.25
    focal_alpha: float = -1.0
    focal_gamma: float = 0.0
    heat_beta: float = 2.0
    box_min_heat: float = 0.3

    def __post_init__(self) -> None:
        for name in ("focal", "dice", "iou", "heat", "box_l1", "box_giou", "autoppn", "focal_gamma", "heat_beta"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss weight {name} must be ≥ 0, got {getattr(self, name)}")


@dataclass
class TrainConfig:
    """Everything ``train`` needs; defaults follow the recipe in the module docstring.

    Attributes:
        data: COCO annotation file, SA-1B JSON file or folder, or ``"synthetic"`` (generated scenes).
        images: image folder (required for COCO; SA-1B defaults to the JSON folder).
        output_dir: where logs and checkpoints go.
        variant: model variant (``litesam_r640``, ``litesam_r1024``, ``litesam_tiny``).
        synthetic_images, synthetic_seed: size and seed of the generated set (``data="synthetic"``).
        epochs: passes over the data, when ``max_steps`` is not given.
        max_steps: length of the run in optimiser steps (as many epochs as that takes); overrides ``epochs``.
            The LR schedule always spans the steps the run makes.
        stop_after: end this invocation after this many steps in total, as if interrupted: the schedule still
            spans the whole run and ``resume`` continues it exactly (for time-sliced or preemptible machines).
        batch_size: images per micro-batch and process; an optimiser step sees
            ``batch_size × accumulate_steps × processes`` (:mod:`.runtime`).
        lr: peak AdamW LR; None: the variant's :data:`DEFAULT_LR` (4e-4 for the paper's models).
        weight_decay, betas: AdamW settings.
        warmup_steps: linear warm-up from ~0 to ``lr``, cosine decay to ``lr·min_lr_ratio`` afterwards; None:
            5 % of the run, at most 1000 steps. A warm-up longer than a quarter of the run logs a warning.
        min_lr_ratio: final LR as a fraction of ``lr``.
        grad_clip: maximum global gradient norm (0 disables clipping).
        max_masks: masks with prompts per image.
        progressive_side, progressive_fraction: progressive resizing: the first ``progressive_fraction`` of
            the steps train at input side ``progressive_side`` (a multiple of 16 and of the AutoPPN stride,
            below the variant's), the rest at the variant's side; the model's weights do not depend on the
            side (:meth:`litesam.modeling.lite_sam.LiteSAM.set_input_size`). Side None or 0: off (the
            default); fraction None: :data:`PROGRESSIVE_FRACTION`.
        mask_scale: ``"low_res"`` (loss at S/4) or ``"input"`` (loss at S, logits upsampled).
        prompts: prompt simulation; losses: loss weights.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, …
        amp: bfloat16 autocast on CUDA (ignored on the CPU).
        num_workers: DataLoader worker processes; None: :func:`default_workers`.
        cache_mb: RAM (MiB) for prepared images, kept from their first read so later epochs skip decoding,
            resizing and target building (``SegmentationDataset(cache_bytes=)``); 0: off. Used only without
            loader workers (a worker's cache would end with its epoch).
        seed: data order, mask sampling, prompt noise and model initialisation.
        log_every: steps between log lines.
        checkpoint_every: steps between checkpoints (0: only at the end of training).
        init_checkpoint: start from one of our checkpoints (same variant).
        sam_checkpoint: initialise the prompt encoder and mask decoder from an official SAM checkpoint.
        resume: continue the run in ``output_dir`` (True) or from the given ``*.state.pt`` file.
        accumulate_steps: micro-batches of ``batch_size`` images per optimiser step and process (each loss
            scaled 1/N); steps, the LR schedule and ``log_every``/``checkpoint_every`` count optimiser steps.
        progress: a tqdm bar on stderr (rank 0 only, and only when stderr is a terminal).
        label_studio_url, label_studio_project, label_studio_split: the Label Studio project of
            ``data="labelstudio"`` (URL None: ``LABEL_STUDIO_URL``; the key is read from ``LABEL_STUDIO_API_KEY``)
            and which of its tasks: "train", "held-out" or "all" (:mod:`backend.training_data`).
    """

    data: str | Path
    output_dir: str | Path
    images: str | Path | None = None
    variant: str = "litesam_r640"
    synthetic_images: int = 1000
    synthetic_seed: int = 0
    epochs: int = 4
    max_steps: int | None = None
    stop_after: int | None = None
    batch_size: int = 8
    lr: float | None = None
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    max_masks: int = 64
    progressive_side: int | None = None
    progressive_fraction: float | None = None
    mask_scale: Literal["low_res", "input"] = "low_res"
    prompts: PromptConfig = field(default_factory=PromptConfig)
    losses: LossWeights = field(default_factory=LossWeights)
    device: str = "auto"
    amp: bool = False
    num_workers: int | None = None
    cache_mb: int = 1024
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 1000
    init_checkpoint: str | Path | None = None
    sam_checkpoint: str | Path | None = None
    resume: bool | str | Path = False
    accumulate_steps: int = 1
    progress: bool = True
    label_studio_url: str | None = None
    label_studio_project: int | None = None
    label_studio_split: str = "train"

    def __post_init__(self) -> None:
        from ..variants import get_variant  # torch is imported only when a configuration is made

        get_variant(self.variant)
        for name in ("epochs", "batch_size", "synthetic_images", "accumulate_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("max_steps", "stop_after"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1 or None, got {getattr(self, name)}")
        if (self.lr is not None and self.lr <= 0) or self.grad_clip < 0 or self.log_every < 1:
            raise ValueError("lr must be > 0, grad_clip ≥ 0 and log_every ≥ 1")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be ≥ 0 or None, got {self.warmup_steps}")
        if self.progressive_side is not None and (self.progressive_side < 0 or self.progressive_side % 16):
            raise ValueError(
                f"progressive_side must be 0 or a positive multiple of 16, got {self.progressive_side}"
            )
        if self.progressive_fraction is not None and not 0.0 <= self.progressive_fraction <= 1.0:
            raise ValueError(f"progressive_fraction must be in [0, 1], got {self.progressive_fraction}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be ≥ 0, got {self.checkpoint_every}")
        if self.cache_mb < 0:
            raise ValueError(f"cache_mb must be ≥ 0, got {self.cache_mb}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers must be ≥ 0 or None, got {self.num_workers}")
        if self.init_checkpoint is not None and self.resume:
            raise ValueError("init_checkpoint and resume exclude each other (resume restores its own weights)")

    @property
    def synthetic(self) -> bool:
        """True when the run trains on generated scenes."""
        return str(self.data) == SYNTHETIC

    @property
    def label_studio(self) -> bool:
        """True when the run trains on a Label Studio project's annotations."""
        return str(self.data) == LABEL_STUDIO

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimiser steps of the whole run: ``max_steps``, else ``epochs`` passes over the data."""
        return self.max_steps if self.max_steps is not None else self.epochs * steps_per_epoch

    def resolved_lr(self) -> float:
        """Peak LR: ``lr`` as given, or the variant's default."""
        return self.lr if self.lr is not None else DEFAULT_LR.get(self.variant, PAPER_LR)

    def resolved_progressive(self) -> tuple[int, float]:
        """Progressive resizing of this run as ``(side, fraction)``; ``(0, 0.0)`` is off.

        A side of None is :data:`DEFAULT_PROGRESSIVE_SIDE`'s for the variant (off for the others), 0 is off;
        a fraction of None is :data:`PROGRESSIVE_FRACTION`. A resumed run keeps its first invocation's
        setting (the training state stores it), whatever the resuming flags say.
        """
        side = self.progressive_side
        if side is None:
            side = DEFAULT_PROGRESSIVE_SIDE.get(self.variant, 0)
        fraction = PROGRESSIVE_FRACTION if self.progressive_fraction is None else self.progressive_fraction
        return (side, fraction) if side > 0 and fraction > 0 else (0, 0.0)

    def resolved_warmup(self, total_steps: int) -> int:
        """Warm-up steps: ``warmup_steps`` as given, or 5 % of the run capped at 1000 steps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(MAX_AUTO_WARMUP, int(AUTO_WARMUP_FRACTION * total_steps))

    def workers(self) -> int:
        """DataLoader worker processes: ``num_workers`` as given, or :func:`default_workers`."""
        return default_workers() if self.num_workers is None else self.num_workers

    def to_json(self) -> dict:
        """The configuration as JSON-serialisable data (paths as strings)."""
        return json.loads(json.dumps(asdict(self), default=str))


def input_side_at(
    step: int, total_steps: int, variant_side: int, progressive: tuple[int, float]
) -> tuple[int, int]:
    """The input side of optimiser step ``step`` (0-based) and the first step after its phase.

    ``progressive`` = ``(side, fraction)`` (:meth:`TrainConfig.resolved_progressive`): steps
    ``[0, round(fraction · total_steps))`` at ``side``, the rest at ``variant_side``; off, or with a side not
    below ``variant_side``, every step is at ``variant_side``. Returns ``(side, end)``; ``end`` is
    ``total_steps`` in the last phase.
    """
    side, fraction = progressive
    switch = round(fraction * total_steps) if 0 < side < variant_side else 0
    return (side, switch) if step < switch else (variant_side, total_steps)


def default_workers() -> int:
    """Loader processes that fit the machine: none on ≤ 2 usable CPUs (the loader then shares the cores with
    the training threads, and measured slower: README, "Training"), else half the CPUs, at most 4."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cpus <= 2 else min(4, cpus // 2)
