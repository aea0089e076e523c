"""The one read-only Lite-SAM model of a backend process (web worker or job worker).

:class:`ModelService` resolves the checkpoint, names the model version, and builds the model lazily on first
use (never at import, never in ``/health`` or ``/setup``), under a lock, with the encoder fused for
inference; all threads share it. Each request makes its own cheap
:class:`~litesam.predictor.LiteSamPredictor` around it (:meth:`ModelService.predictor`), so no predictor is
ever shared between threads. This module imports nothing of ``label_studio_ml``: job workers use it without
the Label Studio adapter (:mod:`backend.model`).

Thread policy (README "Thread policy"): every inference runs with ``LITESAM_TORCH_THREADS`` intra-op threads
(default 1), and at most :attr:`Settings.inference_concurrency` inferences run at once in a process
(:meth:`ModelService.inference`); further requests wait for a slot instead of oversubscribing the cores.
The model is put on the inference path of ``LITESAM_PRECISION`` (:mod:`litesam.inference`) when it loads.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

import numpy as np
import torch

from litesam.build import build_model, checkpoint_variant
from litesam.variants import get_variant
from litesam.errors import CheckpointError
from litesam.allocator import keep_freed_memory
from litesam.inference import apply_precision, cpu_report
from litesam.predictor import ImageEmbedding, LiteSamPredictor, encode_image

from .checkpoint import ResolvedCheckpoint, resolve_checkpoint
from .errors import ConfigurationError
from .settings import Settings

logger = logging.getLogger(__name__)


def model_version_string(variant: str, checkpoint_sha256: str) -> str:
    """``<variant>-<first 12 hex digits of the checkpoint's sha256>``, e.g. ``litesam_r640-3f2a9c1b7d40``."""
    return f"{variant}-{checkpoint_sha256[:12]}"


class ModelService:
    """The process-wide model: checkpoint resolution, model version, lazy thread-safe loading."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._checkpoint: ResolvedCheckpoint | None = None
        self._variant: str | None = settings.variant
        self._model = None
        self._slots = threading.BoundedSemaphore(settings.inference_concurrency)

    @property
    def model_version(self) -> str:
        """The same string in every process: from the variant and the checkpoint's sha256.

        With ``LITESAM_CHECKPOINT_SHA256`` set it is known without reading the checkpoint (the file is
        checked against it when it is loaded); otherwise the checkpoint is hashed once per process.

        Raises:
            ConfigurationError: no checkpoint, unreadable, or a failed download.
        """
        sha = self._settings.checkpoint_sha256 or self.checkpoint().sha256
        return model_version_string(self.variant, sha)

    @property
    def variant(self) -> str:
        """``LITESAM_VARIANT``, or the variant the checkpoint holds (recorded in ours, recognised from the keys
        and shapes of an official SAM-family file: ``sam_vit_b``, ``mobile_sam``, …), found once per process.

        Raises:
            ConfigurationError: no checkpoint, or a checkpoint that is unreadable or fits no variant.
        """
        if self._variant is None:
            path = self.checkpoint().path
            try:
                found = checkpoint_variant(path)
            except CheckpointError as exc:
                raise ConfigurationError(f"cannot load the checkpoint: {exc}") from None
            with self._lock:
                self._variant = found
        return self._variant

    @property
    def title(self) -> str:
        """What the variant is, for people (e.g. ``SAM ViT-B (Meta, sam_vit_b_01ec64.pth)``)."""
        return get_variant(self.variant).title

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def checkpoint(self) -> ResolvedCheckpoint:
        """The local checkpoint file (downloaded once if it is a URL) and its sha256."""
        if self._checkpoint is None:
            with self._lock:
                if self._checkpoint is None:
                    self._checkpoint = resolve_checkpoint(
                        self._settings.checkpoint, self._settings.checkpoint_sha256, self._settings.cache_dir
                    )
        return self._checkpoint

    def model(self):  # -> litesam LiteSAM
        """The loaded model (built on first call, in eval mode, on the configured device)."""
        if self._model is None:
            checkpoint = self.checkpoint()
            variant = self.variant  # outside the lock, which finding it takes
            with self._lock:
                if self._model is None:
                    self._model = self._load(checkpoint, variant)
        return self._model

    def _load(self, checkpoint: ResolvedCheckpoint, variant: str):
        try:
            report = cpu_report()  # probed once, before the thread count is fixed (it restores the count it found)
        except ValueError as exc:  # LITESAM_FP32_KERNEL holds an unknown kernel
            raise ConfigurationError(str(exc)) from None
        keep_freed_memory()
        torch.set_num_threads(self._settings.torch_threads)
        started = time.perf_counter()
        try:
            model = build_model(variant, checkpoint=checkpoint.path, device=self._settings.device)
        except CheckpointError as exc:
            raise ConfigurationError(f"cannot load the checkpoint: {exc}") from None
        except (RuntimeError, ValueError) as exc:  # e.g. an unavailable LITESAM_DEVICE
            raise ConfigurationError(f"cannot build the model on {self._settings.device!r}: {exc}") from None
        try:
            precision = apply_precision(
                model, self._settings.precision, self._settings.encoder_runtime, fuse=True,
                streams=self._settings.inference_concurrency, cache_dir=self._settings.cache_dir,
            )
        except ValueError as exc:  # bf16 where torch has no bf16 kernels; openvino where it cannot run
            raise ConfigurationError(f"LITESAM_PRECISION / LITESAM_ENCODER_RUNTIME: {exc}") from None
        filters = model.segevery_filters
        logger.info(
            "loaded %s (%s) from %s on %s in %.1f s; %s path, %s encoder, %d inference(s) at once; "
            "SegEvery filters %s; %s",
            model_version_string(variant, checkpoint.sha256),
            get_variant(variant).title,
            checkpoint.path.name,
            self._settings.device,
            time.perf_counter() - started,
            precision,
            model.encoder_runtime,
            self._settings.inference_concurrency,
            "SAM's (none calibrated: litesam calibrate)" if filters is None else
            "calibrated " + ", ".join(f"{name} {value}" for name, value in filters.items()),
            report.describe(),
        )
        return model

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """Hold one of the process's inference slots for the block (waits while all are taken)."""
        with self._slots:
            yield

    def encode(self, image: np.ndarray) -> ImageEmbedding:
        """The embedding of an H×W×3 uint8 RGB image (in an inference slot)."""
        model = self.model()
        with self.inference():
            return encode_image(model, image)

    def predictor(self, embedding: ImageEmbedding) -> LiteSamPredictor:
        """A new predictor (for this request only) set to ``embedding``."""
        predictor = LiteSamPredictor(self.model())
        predictor.set_embedding(embedding)
        return predictor
