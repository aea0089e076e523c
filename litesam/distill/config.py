"""Settings of a distillation run (:class:`DistillConfig`) and config files; standard library only, so
``litesam distill --help`` shows every default without importing torch.

Recipe (ASSUMPTIONS; the paper trains without distillation, design notes §5): MobileSAM's decoupled
distillation — the student's image encoder learns the teacher's embedding by mean squared error, with the
teacher's prompt encoder and mask decoder copied in unchanged; AdamW with weight decay 0.05 on weights, linear
warm-up (5 % of the run, at most 1,000 steps) and cosine decay over the steps the run makes, gradient clipping
at norm 1. AutoPPN learns from the teacher's own SegEvery masks (grid prompts, SAM's filters by default), on
the student's embedding with the encoder's gradient stopped, so the embedding is shaped by the teacher only.

Config files (``--config``): a JSON object or a TOML table whose keys are :class:`DistillConfig` fields
(``teacher = "sam_vit_b_01ec64.pth"``, ``batch_size = 16``, …); flags given on the command line win.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

#: ``DistillConfig.data`` value that distils on generated scenes (images only, their masks are never read).
SYNTHETIC = "synthetic"

#: Peak LR by student variant when none is given (litesam_tiny-sized students learn faster at a higher LR).
DEFAULT_LR = {"litesam_tiny": 2e-3, "litesam_tiny_student": 2e-3}
PAPER_LR = 1e-3

MAX_AUTO_WARMUP = 1000
AUTO_WARMUP_FRACTION = 0.05


class ConfigFileError(ValueError):
    """A config file is missing, unreadable, or names a setting that does not exist."""


@dataclass
class DistillConfig:
    """Everything :func:`litesam.distill.loop.distill` needs.

    Attributes:
        teacher: the teacher's checkpoint: anything :func:`litesam.build.build_model` loads (an official SAM /
            MobileSAM file, or one of ours).
        data: a folder of images, a COCO annotation file, an SA-1B JSON file or folder (their images only), or
            ``"synthetic"``.
        output_dir: logs, checkpoints and (by default) the cache.
        images: the image folder of a COCO file.
        variant: the student, any registered Lite-SAM variant (its embed_dim must equal the teacher's).
        cache_dir: root of the teacher caches (default ``output_dir/cache``); shareable between runs.
        shard_size: images per cache shard.
        synthetic_images, synthetic_seed: size and seed of the generated set (``data="synthetic"``).
        epochs, max_steps, stop_after: length of the run in passes, or in optimiser steps (overrides
            ``epochs``); ``stop_after`` ends this invocation early, ``resume`` continues the same schedule.
        batch_size: images per micro-batch (per process under DDP); accumulate: micro-batches per optimiser step.
        lr, weight_decay, warmup_steps, grad_clip: optimiser (lr None: :data:`DEFAULT_LR` or :data:`PAPER_LR`).
        resample: how the teacher's embedding reaches the student's grid (:mod:`litesam.distill.alignment`).
        autoppn: learn AutoPPN from the teacher's pseudo-masks (else the student keeps a random head).
        teacher_autoppn: also learn an AutoPPN head on the teacher's own embeddings (``teacher_autoppn.pt``:
            the teacher's weights plus the head, which build_model loads and SegEvery uses).
        finetune_decoder: also train the copied mask decoder on the teacher's pseudo-masks (box and point prompts)
            on the student's embedding (encoder gradient stopped).
        pseudo_prompts: the prompts of the teacher's SegEvery for pseudo-masks: ``"grid"`` (SAM's point grid)
            or ``"auto"`` (the teacher's AutoPPN when it has one, else the grid).
        points_per_side, pred_iou_thresh, stability_score_thresh: the rest of that SegEvery (SAM's filters by
            default; a weak teacher may need them lowered).
        embedding_weight, autoppn_weight, decoder_weight: weights of the loss terms.
        max_masks: pseudo-masks per image prompted for ``finetune_decoder``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (under torchrun: the local rank's GPU).
        amp: bfloat16 autocast on CUDA (ignored on the CPU).
        num_workers: DataLoader processes; None: none on ≤ 2 CPUs, else half the CPUs (≤ 4).
        cache_mb: RAM (MiB) keeping the student's prepared images from their first read (0: off; used only
            without loader workers), as ``litesam train --cache-mb``.
        seed: student initialisation and data order.
        log_every, checkpoint_every: steps between log lines / checkpoints (0: only at the end).
        resume: continue the run in ``output_dir``.
        progress: tqdm progress bars on stderr.
    """

    teacher: str | Path
    data: str | Path
    output_dir: str | Path
    images: str | Path | None = None
    variant: str = "litesam_r640"
    cache_dir: str | Path | None = None
    shard_size: int = 64
    synthetic_images: int = 1000
    synthetic_seed: int = 0
    epochs: int = 8
    max_steps: int | None = None
    stop_after: int | None = None
    batch_size: int = 8
    accumulate: int = 1
    lr: float | None = None
    weight_decay: float = 0.05
    warmup_steps: int | None = None
    grad_clip: float = 1.0
    resample: str = "bilinear"
    autoppn: bool = True
    teacher_autoppn: bool = False
    finetune_decoder: bool = False
    pseudo_prompts: str = "grid"
    points_per_side: int = 16
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    embedding_weight: float = 1.0
    autoppn_weight: float = 1.0
    decoder_weight: float = 1.0
    max_masks: int = 16
    device: str = "auto"
    amp: bool = False
    num_workers: int | None = None
    cache_mb: int = 1024
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 500
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("shard_size", "synthetic_images", "epochs", "batch_size", "accumulate", "log_every",
                     "points_per_side", "max_masks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("max_steps", "stop_after"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1 or None, got {getattr(self, name)}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "grad_clip", "embedding_weight", "autoppn_weight", "decoder_weight",
                     "checkpoint_every", "cache_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be ≥ 0 or None, got {self.warmup_steps}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers must be ≥ 0 or None, got {self.num_workers}")
        for name in ("pred_iou_thresh", "stability_score_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.pseudo_prompts not in ("grid", "auto"):
            raise ValueError(f"pseudo_prompts must be 'grid' or 'auto', got {self.pseudo_prompts!r}")
        if self.resample not in ("bilinear", "antialias"):
            raise ValueError(f"resample must be 'bilinear' or 'antialias', got {self.resample!r}")

    @property
    def synthetic(self) -> bool:
        return str(self.data) == SYNTHETIC

    @property
    def needs_pseudo_masks(self) -> bool:
        """True when some term learns from the teacher's SegEvery masks."""
        return self.autoppn or self.teacher_autoppn or self.finetune_decoder

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir is not None else Path(self.output_dir) / "cache"

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR.get(self.variant, PAPER_LR)

    def total_steps(self, batches_per_epoch: int) -> int:
        """Optimiser steps of the whole run: ``max_steps``, else ``epochs`` passes (micro-batches / accumulate)."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1, self.epochs * batches_per_epoch // self.accumulate)

    def resolved_warmup(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(MAX_AUTO_WARMUP, int(AUTO_WARMUP_FRACTION * total_steps))

    def to_json(self) -> dict:
        """The configuration as JSON data (paths as strings)."""
        return json.loads(json.dumps(asdict(self), default=str))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a JSON or TOML config file (by suffix: ``.toml``, else JSON), checked against the fields
    of :class:`DistillConfig`.

    Raises:
        ConfigFileError: missing or unreadable file, not an object/table, or an unknown key (named).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigFileError(f"cannot read config file {path}: {error.strerror or error}") from None
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ConfigFileError(f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {error}") from None
    if not isinstance(values, dict):
        raise ConfigFileError(f"config file {path} must hold an object of settings")
    known = {f.name for f in fields(DistillConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigFileError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return values
