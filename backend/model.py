"""The Lite-SAM model of a backend process, and the thin Label Studio adapter around it.

:class:`ModelService` owns the one read-only model of the process: built lazily on first use (never at
import, never in ``/health`` or ``/setup``), under a lock, with the encoder fused for inference, and shared
by all threads. Each request makes its
own cheap :class:`~litesam.predictor.LiteSamPredictor` around it and restores the image embedding from the
:class:`~backend.store.EmbeddingStore`, so no predictor is ever shared between threads.

:class:`LiteSamBackend` is the ``LabelStudioMLBase`` subclass of label-studio-ml 1.0.9. It is created per
request with explicit dependencies and only does context → prompts → predictor → brush results; it does not
use the framework's per-process manager (which needs ``/setup`` before ``/predict``). Importing
``label_studio_ml.model`` sets torch.multiprocessing's start method to ``spawn`` (a side effect of that
package); the backend itself starts no subprocesses.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import torch
from label_studio_ml.model import LabelStudioMLBase

from litesam.build import build_model
from litesam.errors import CheckpointError
from litesam.predictor import ImageEmbedding, LiteSamPredictor, encode_image

from .checkpoint import ResolvedCheckpoint, resolve_checkpoint
from .context import Prompt, PromptSet, parse_context, resolve_label
from .errors import BadRequestError, ConfigurationError
from .images import ImageFetcher, decode_image
from .label_config import parse_label_config
from .results import brush_region, prediction
from .settings import Settings
from .store import EmbeddingStore

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
        self._model = None

    @property
    def model_version(self) -> str:
        """The same string in every process: from the variant and the checkpoint's sha256.

        With ``LITESAM_CHECKPOINT_SHA256`` set it is known without reading the checkpoint (the file is
        checked against it when it is loaded); otherwise the checkpoint is hashed once per process.

        Raises:
            ConfigurationError: no checkpoint, unreadable, or a failed download.
        """
        sha = self._settings.checkpoint_sha256 or self.checkpoint().sha256
        return model_version_string(self._settings.variant, sha)

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
            with self._lock:
                if self._model is None:
                    self._model = self._load(checkpoint)
        return self._model

    def _load(self, checkpoint: ResolvedCheckpoint):
        if self._settings.torch_threads is not None:
            torch.set_num_threads(self._settings.torch_threads)
        started = time.perf_counter()
        try:
            model = build_model(
                self._settings.variant, checkpoint=checkpoint.path, device=self._settings.device, fuse=True
            )
        except CheckpointError as exc:
            raise ConfigurationError(f"cannot load the checkpoint for LITESAM_VARIANT: {exc}") from None
        except (RuntimeError, ValueError) as exc:  # e.g. an unavailable LITESAM_DEVICE
            raise ConfigurationError(f"cannot build the model on {self._settings.device!r}: {exc}") from None
        logger.info(
            "loaded %s from %s on %s in %.1f s",
            model_version_string(self._settings.variant, checkpoint.sha256),
            checkpoint.path.name,
            self._settings.device,
            time.perf_counter() - started,
        )
        return model

    def encode(self, image: np.ndarray) -> ImageEmbedding:
        """The embedding of an H×W×3 uint8 RGB image."""
        return encode_image(self.model(), image)

    def predictor(self, embedding: ImageEmbedding) -> LiteSamPredictor:
        """A new predictor (for this request only) set to ``embedding``."""
        predictor = LiteSamPredictor(self.model())
        predictor.set_embedding(embedding)
        return predictor


class LiteSamBackend(LabelStudioMLBase):
    """Label Studio adapter: interactive context → prompts → Lite-SAM masks → ``brushlabels`` results.

    Args:
        model: the process's :class:`ModelService`.
        store: the embedding store.
        fetcher: downloads task images.
        max_image_pixels: decoding limit (LITESAM_MAX_IMAGE_PIXELS).
        label_config: the project's labeling config (``label_config`` of the ``/predict`` request).
    """

    def __init__(
        self,
        model: ModelService,
        store: EmbeddingStore,
        fetcher: ImageFetcher,
        max_image_pixels: int,
        label_config: str | None = None,
    ) -> None:
        super().__init__(label_config=None)
        self.label_config = label_config
        self._model = model
        self._store = store
        self._fetcher = fetcher
        self._max_image_pixels = max_image_pixels

    def predict(self, tasks: list, context: object = None, **kwargs) -> list[dict]:
        """Predictions for ``tasks``: one per task for an interactive call, none for a batch call.

        A call without prompt regions in ``context`` (Label Studio's "Retrieve predictions") gets no
        predictions: an empty prediction per task would mark the tasks as predicted for this model version.

        Raises:
            BadRequestError: the prompts' ``original_width × original_height`` is over ``max_image_pixels``
                (their masks are made at that size), and the other :mod:`backend.errors` on bad input (see
                the modules involved).
        """
        prompt_set = parse_context(context)
        if prompt_set is None:
            return []
        pixels = prompt_set.original_width * prompt_set.original_height
        if pixels > self._max_image_pixels:
            raise BadRequestError(
                f"the prompt regions' original_width × original_height is {prompt_set.original_width}×"
                f"{prompt_set.original_height} = {pixels} pixels, more than the backend's limit of "
                f"{self._max_image_pixels} (LITESAM_MAX_IMAGE_PIXELS); send the image's natural size"
            )
        config = parse_label_config(self.label_config)
        if not isinstance(tasks, list) or len(tasks) != 1 or not isinstance(tasks[0], dict):
            raise BadRequestError("an interactive call (with context) must carry exactly one task object")
        task = tasks[0]
        brush, label = resolve_label(prompt_set, config)
        image_tag = config.image(brush.to_name)
        data = task.get("data")
        if not isinstance(data, dict) or image_tag.value_key not in data:
            raise BadRequestError(
                f"the task has no data field {image_tag.value_key!r} (the image of <Image "
                f"name={image_tag.name!r}>)"
            )
        uri = data[image_tag.value_key]
        if isinstance(uri, list):  # multi-image task (valueList)
            index = prompt_set.item_index or 0
            if not 0 <= index < len(uri):
                raise BadRequestError(f"item_index {index} is outside the task's {len(uri)} images")
            uri = uri[index]

        version = self._model.model_version
        embedding, source = self._embedding(uri, task.get("id"), version)
        masks, scores = self._masks(embedding, prompt_set)
        regions = [
            brush_region(
                mask,
                from_name=brush.from_name,
                to_name=brush.to_name,
                label=label,
                score=score,
                image_rotation=prompt_set.image_rotation,
                item_index=prompt_set.item_index,
            )
            for mask, score in zip(masks, scores, strict=True)
        ]
        logger.info(
            "task %s: %d mask(s) for %r, embedding from %s", task.get("id"), len(regions), label, source
        )
        return [prediction(regions, version)]

    def _embedding(self, uri: str, task_id: object, version: str) -> tuple[ImageEmbedding, str]:
        """The image's embedding; an immutable upload whose embedding is cached is not even downloaded."""
        immutable = self._fetcher.immutable_source(uri)
        if immutable is not None:
            sha = self._store.image_sha256(immutable)
            cached = self._store.get(version, sha) if sha is not None else None
            if cached is not None:
                return cached, "cache without download"
        fetched = self._fetcher.fetch(uri, task_id)
        if immutable is not None:
            self._store.remember_image(immutable, fetched.sha256)
        return self._store.get_or_compute(
            version,
            fetched.sha256,
            lambda: self._model.encode(decode_image(fetched.data, self._max_image_pixels)),
        )

    def _masks(
        self, embedding: ImageEmbedding, prompt_set: PromptSet
    ) -> tuple[list[np.ndarray], list[float]]:
        """One best mask (and its predicted IoU) per prompt, at the size the prompt regions refer to."""
        height, width = embedding.original_size
        target = (prompt_set.original_height, prompt_set.original_width)
        scale = np.array([width / target[1], height / target[0]], dtype=np.float32)
        if target != (height, width):
            logger.warning(
                "the prompts refer to a %d×%d image but the image is %d×%d; scaling prompts and masks",
                target[1],
                target[0],
                width,
                height,
            )
        predictor = self._model.predictor(embedding)
        masks, scores = [], []
        for prompt in prompt_set.prompts:
            limit = np.array([width, height], dtype=np.float32)
            coords = (
                np.minimum(prompt.point_coords * scale, limit) if prompt.point_coords is not None else None
            )
            box = (
                np.minimum(prompt.box * np.tile(scale, 2), np.tile(limit, 2))
                if prompt.box is not None
                else None
            )
            candidates, ious, _ = predictor.predict(
                point_coords=coords,
                point_labels=prompt.point_labels,
                box=box,
                multimask_output=_is_ambiguous(prompt),
                best_only=True,
            )
            mask = candidates[0]
            if target != (height, width):
                mask = _resize_mask(mask, target)
            masks.append(mask)
            scores.append(float(ious[0]))
        return masks, scores


def _is_ambiguous(prompt: Prompt) -> bool:
    """A single point without a box may mean a part, an object or a group: ask for three masks, keep the
    best by predicted IoU. More points or a box pin the object down, and one mask is better (as in SAM)."""
    return prompt.box is None and prompt.point_coords is not None and len(prompt.point_coords) == 1


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an H×W bool mask to ``size`` = (height, width)."""
    rows = np.minimum((np.arange(size[0]) + 0.5) * mask.shape[0] / size[0], mask.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(size[1]) + 0.5) * mask.shape[1] / size[1], mask.shape[1] - 1).astype(int)
    return mask[rows[:, None], cols[None, :]]
