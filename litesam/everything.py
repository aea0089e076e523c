"""SegEvery: masks for everything in an image, from AutoPPN proposals (or SAM's point grid).

Pipeline (one image):

1. prompts: AutoPPN proposals (a point and its box, with a proposal score) or, in ``grid`` mode, SAM's
   regular n×n point grid (the default for SAM-family engines, whose official checkpoints carry no AutoPPN
   head: with SAM's automatic-mask-generator defaults, 32×32 points, three masks each);
2. one mask-decoder pass per chunk of ``points_per_batch`` prompts, all on the same embedding;
3. filters on the *low-resolution* logits (predicted IoU, stability score), before any upscaling: most of
   SAM's everything-mode time goes into upscaling masks that are then thrown away. The predicted IoU needs
   no mask, so the decoder skips the mask upscaling of prompts whose every output fails it (``min_iou``);
4. box NMS between the surviving masks (boxes measured on the low-resolution masks), ranked by predicted
   IoU × proposal score;
5. only the survivors are upscaled to the original size and turned into records.

Filtering at low resolution is our own choice (SAM filters after upscaling to the input size): the
stability score and boxes of a 4×-downsampled logit map differ slightly from full-resolution ones, which is
harmless for thresholds and NMS and saves the dominant cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from .errors import NoProposalHeadError
from .masks import (
    batched_mask_to_box,
    box_nms,
    box_xyxy_to_xywh,
    calculate_stability_score,
    mask_to_coco_rle,
)
from .proposals import ProposalConfig
from .modeling.lite_sam import LiteSAM
from .postprocess import mask_area_and_box, mask_upscaler
from .predictor import ImageEmbedding, encode_image, propose
from .transforms import ResizeLongestSide
from .variants import get_variant


@dataclass
class SegEveryConfig:
    """Settings of :class:`SegEvery`. The filter defaults are SAM's automatic-mask-generator defaults;
    :meth:`for_variant` takes a variant's AutoPPN decoding (:class:`litesam.variants.VariantConfig`), and
    :meth:`for_model` (what ``SegEvery(model)`` without a config uses) also the filters calibrated for the
    model's weights when its checkpoint carries them (``litesam calibrate``).

    Attributes:
        prompt_mode: "autoppn" (learned proposals: point + box per prompt), "grid" (SAM's point grid), or
            "auto": AutoPPN when the model has a head, else the grid (engines' official weights).
        points_per_side: grid mode only; n for the n×n grid (SAM's default 32 → 1,024 prompts).
        points_per_batch: prompts per mask-decoder call; bounds memory (activations grow linearly).
        multimask_output: ask the decoder for 3 candidates per prompt. AutoPPN keeps the best by predicted
            IoU; grid mode keeps all three as SAM does.
        pred_iou_thresh: drop masks whose predicted IoU is below this (any finite number: the IoU head is
            not bounded, so > 1 keeps nothing and ≤ 0 nearly everything).
        stability_score_thresh: drop masks whose stability score (in [0, 1]) is below this; in [0, 1].
        stability_score_offset: logit offset used by the stability score.
        box_nms_thresh: IoU above which the lower-ranked of two overlapping masks' boxes is dropped; in
            [0, 1] (1: NMS off).
        proposals: AutoPPN decoding settings (threshold, top-K, proposal NMS).
        max_masks: keep at most this many masks (the best ranked after NMS); None keeps all. Only kept masks
            are upscaled, so this also bounds time and memory on large images.
        output_mode: "binary_mask" (H×W bool arrays) or "coco_rle" (pycocotools RLE dicts).
    """

    prompt_mode: Literal["auto", "autoppn", "grid"] = "auto"
    points_per_side: int = 32
    points_per_batch: int = 32
    multimask_output: bool = True
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    max_masks: int | None = None
    output_mode: Literal["binary_mask", "coco_rle"] = "binary_mask"

    def __post_init__(self) -> None:
        if self.prompt_mode not in ("auto", "autoppn", "grid"):
            raise ValueError(f"prompt_mode must be 'auto', 'autoppn' or 'grid', got {self.prompt_mode!r}")
        if self.output_mode not in ("binary_mask", "coco_rle"):
            raise ValueError(f"output_mode must be 'binary_mask' or 'coco_rle', got {self.output_mode!r}")
        if self.points_per_batch < 1 or self.points_per_side < 1:
            raise ValueError("points_per_batch and points_per_side must be positive")
        if not math.isfinite(self.pred_iou_thresh):
            raise ValueError(f"pred_iou_thresh must be a finite number, got {self.pred_iou_thresh}")
        for name in ("stability_score_thresh", "box_nms_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_masks is not None and self.max_masks < 0:
            raise ValueError(f"max_masks must be >= 0 or None, got {self.max_masks}")

    @classmethod
    def for_model(cls, model: LiteSAM, **settings: Any) -> SegEveryConfig:
        """:meth:`for_variant` of the model's variant, with the filters calibrated for its weights
        (``model.segevery_filters``, from its checkpoint) where ``settings`` leave them unset (None); SAM's
        where the checkpoint carries none."""
        for name, value in (model.segevery_filters or {}).items():
            if settings.get(name) is None:
                settings[name] = value
        return cls.for_variant(model.variant, **settings)

    @classmethod
    def for_variant(
        cls,
        variant: str | None,
        *,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        proposals: ProposalConfig | None = None,
        proposal_score_thresh: float | None = None,
        proposal_top_k: int | None = None,
        **settings: Any,
    ) -> SegEveryConfig:
        """Settings for a model of ``variant``: the one place a variant's SegEvery defaults are resolved.

        Args:
            variant: registry name; None (a model built without one) takes SAM's defaults of this class.
            pred_iou_thresh, stability_score_thresh: mask filters in [0, 1]; None: SAM's (this class's
                defaults; :meth:`for_model` takes a checkpoint's calibrated ones).
            proposals: AutoPPN decoding; None: the variant's (e.g. top-200 at 1024).
            proposal_score_thresh: when given, replaces the proposals' ``score_threshold`` (in [0, 1]).
            proposal_top_k: when given, replaces the proposals' ``top_k`` (proposals per image).
            settings: any other field of this class.
        Raises:
            CheckpointError: unknown variant. ValueError: a setting out of range.
        """
        sam = cls()
        if proposals is None:
            proposals = sam.proposals if variant is None else get_variant(variant).proposals
        if proposal_score_thresh is not None:
            proposals = replace(proposals, score_threshold=proposal_score_thresh)
        if proposal_top_k is not None:
            proposals = replace(proposals, top_k=proposal_top_k)
        return cls(
            pred_iou_thresh=sam.pred_iou_thresh if pred_iou_thresh is None else pred_iou_thresh,
            stability_score_thresh=sam.stability_score_thresh if stability_score_thresh is None else stability_score_thresh,
            proposals=proposals,
            **settings,
        )


@dataclass
class _Prompts:
    """Prompts in input-frame pixels: points P×2 (x, y), boxes P×4 XYXY or None, scores P."""

    points: torch.Tensor
    boxes: torch.Tensor | None
    scores: torch.Tensor


@dataclass
class _Candidates:
    """Masks that passed the low-resolution filters, before NMS (all tensors share the first dim M)."""

    low_res: torch.Tensor  # M×4h×4w logits
    iou: torch.Tensor  # M
    stability: torch.Tensor  # M
    prompt_index: torch.Tensor  # M, index into _Prompts


class SegEvery:
    """Segment everything in an image with a shared, read-only :class:`LiteSAM`."""

    def __init__(self, model: LiteSAM, config: SegEveryConfig | None = None, **settings: Any) -> None:
        """``config`` is taken as it is, its fields replaced by ``settings``; without one the settings are
        :meth:`SegEveryConfig.for_model` and ``settings`` (its keyword arguments).

        Raises:
            NoProposalHeadError: ``prompt_mode`` "autoppn" for a model without an AutoPPN head.
        """
        if config is None:
            config = SegEveryConfig.for_model(model, **settings)
        else:
            config = replace(config, **settings)
        has_head = model.image_encoder.autoppn is not None
        if config.prompt_mode == "auto":
            config = replace(config, prompt_mode="autoppn" if has_head else "grid")
        elif config.prompt_mode == "autoppn" and not has_head:
            raise NoProposalHeadError(
                f"variant {model.variant} has no AutoPPN head (official checkpoints carry none): use prompt_mode 'grid'"
            )
        #: The settings in force; ``prompt_mode`` is resolved to "autoppn" or "grid".
        self.config = config
        self.model = model

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Records for every mask found in an H×W×3 uint8 RGB image (see :meth:`generate_from_embedding`)."""
        return self.generate_from_embedding(encode_image(self.model, image))

    @torch.inference_mode()
    def generate_from_embedding(self, embedding: ImageEmbedding) -> list[dict[str, Any]]:
        """Records for every mask found, from a computed or cached embedding.

        Returns:
            One dict per mask, ranked as kept by NMS (best first):
            ``segmentation`` (H×W bool, or COCO RLE in ``coco_rle`` mode), ``area`` (pixels),
            ``bbox`` (XYWH, original pixels), ``predicted_iou`` (clipped to [0, 1]), ``stability_score``,
            ``point_coords`` ([[x, y]], original pixels), ``box`` (XYXY original pixels, or None in grid
            mode) and ``proposal_score`` (AutoPPN confidence, or None in grid mode).
        """
        embedding = self._float_on_device(embedding)
        prompts = self._prompts(embedding)
        if len(prompts.points) == 0:
            return []
        candidates = self._decode_and_filter(embedding, prompts)
        if candidates.iou.numel() == 0:
            return []
        keep = self._nms(embedding, prompts, candidates)[: self.config.max_masks]
        return self._records(embedding, prompts, candidates, keep)

    @torch.inference_mode()
    def candidates(self, image: np.ndarray) -> Iterator[list[dict[str, Any]]]:
        """Records of every mask of an H×W×3 uint8 RGB image that passes the filters, before box NMS and
        ``max_masks``, one list per ``points_per_batch`` prompts (records as in
        :meth:`generate_from_embedding`, in prompt order), so that memory holds one batch's masks: for
        applying other filters afterwards (:mod:`litesam.eval.calibration` opens them all)."""
        embedding = self._float_on_device(encode_image(self.model, image))
        prompts = self._prompts(embedding)
        for batch in self._decode_batches(embedding, prompts):
            yield self._records(embedding, prompts, batch, torch.arange(len(batch.iou)))

    def _float_on_device(self, embedding: ImageEmbedding) -> ImageEmbedding:
        """The embedding as float32 on the model's device (e.g. a cached CPU or bfloat16 one)."""
        features = embedding.features.to(self.model.device, torch.float32)
        return ImageEmbedding(features, embedding.input_size, embedding.original_size)

    def _prompts(self, embedding: ImageEmbedding) -> _Prompts:
        if self.config.prompt_mode == "grid":
            h, w = embedding.original_size
            n = self.config.points_per_side
            offsets = (torch.arange(n, dtype=torch.float32) + 0.5) / n
            ys, xs = torch.meshgrid(offsets * h, offsets * w, indexing="ij")
            grid = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).numpy()
            points = ResizeLongestSide(self.model.img_size).apply_coords(grid, embedding.original_size)
            points = torch.as_tensor(points, dtype=torch.float32, device=self.model.device)
            return _Prompts(points, None, torch.ones(len(points), device=self.model.device))
        proposals = propose(self.model, embedding, self.config.proposals)
        # AutoPPN works in continuous coordinates (a box's far edge lies one pixel past the mask, a point is a
        # cell centre); prompts are pixel indices as in SAM and in training (far corner = last mask pixel).
        corner_shift = proposals.boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
        boxes = torch.maximum(proposals.boxes - corner_shift, proposals.boxes[:, [0, 1, 0, 1]])
        return _Prompts((proposals.points - 0.5).clamp(min=0.0), boxes, proposals.scores)

    def _decode_and_filter(self, embedding: ImageEmbedding, prompts: _Prompts) -> _Candidates:
        kept = list(self._decode_batches(embedding, prompts))
        return _Candidates(
            torch.cat([c.low_res for c in kept]),
            torch.cat([c.iou for c in kept]),
            torch.cat([c.stability for c in kept]),
            torch.cat([c.prompt_index for c in kept]),
        )

    def _decode_batches(self, embedding: ImageEmbedding, prompts: _Prompts) -> Iterator[_Candidates]:
        """The masks that pass the filters, one :class:`_Candidates` per ``points_per_batch`` prompts."""
        cfg = self.config
        model = self.model
        image_pe = model.prompt_encoder.get_dense_pe()
        valid_h, valid_w = _valid_low_res(embedding)
        for start in range(0, len(prompts.points), cfg.points_per_batch):
            index = torch.arange(start, min(start + cfg.points_per_batch, len(prompts.points)))
            points = prompts.points[index][:, None, :]
            labels = torch.ones(points.shape[:2], dtype=torch.int64, device=points.device)
            boxes = None if prompts.boxes is None else prompts.boxes[index]
            sparse, dense = model.prompt_encoder(points=(points, labels), boxes=boxes, masks=None)
            low_res, iou = model.mask_decoder(
                image_embeddings=embedding.features,
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=cfg.multimask_output,
                min_iou=cfg.pred_iou_thresh,
            )
            if cfg.prompt_mode == "autoppn":
                best = iou.argmax(dim=1)
                rows = torch.arange(len(best))
                low_res, iou, prompt_index = low_res[rows, best], iou[rows, best], index
            else:
                prompt_index = index.repeat_interleave(low_res.shape[1])
                low_res, iou = low_res.flatten(0, 1), iou.flatten(0, 1)
            iou = iou.clamp(0.0, 1.0)
            # The predicted-IoU filter first: the decoder computed no mask for prompts it drops entirely.
            passed = iou >= cfg.pred_iou_thresh
            low_res, iou, prompt_index = low_res[passed], iou[passed], prompt_index[passed.cpu()]
            stability = calculate_stability_score(
                low_res[:, :valid_h, :valid_w], model.mask_threshold, cfg.stability_score_offset
            )
            keep = stability >= cfg.stability_score_thresh
            yield _Candidates(low_res[keep], iou[keep], stability[keep], prompt_index[keep.cpu()])

    def _nms(self, embedding: ImageEmbedding, prompts: _Prompts, candidates: _Candidates) -> torch.Tensor:
        valid_h, valid_w = _valid_low_res(embedding)
        binary = candidates.low_res[:, :valid_h, :valid_w] > self.model.mask_threshold
        boxes = batched_mask_to_box(binary).float()
        boxes[:, 2:] += 1  # last-pixel indices → far edges, so a one-cell mask has a non-zero area
        nonempty = binary.flatten(1).any(dim=1)
        ranking = candidates.iou * prompts.scores[candidates.prompt_index]
        keep = box_nms(boxes[nonempty], ranking[nonempty], self.config.box_nms_thresh)
        return torch.nonzero(nonempty).flatten()[keep]

    def _records(
        self, embedding: ImageEmbedding, prompts: _Prompts, candidates: _Candidates, keep: torch.Tensor
    ) -> list[dict[str, Any]]:
        h_in, w_in = embedding.input_size
        height, width = embedding.original_size
        to_original = torch.tensor([width / w_in, height / h_in], device=prompts.points.device)
        upscaler = mask_upscaler(
            tuple(candidates.low_res.shape[-2:]), self.model.img_size, embedding.input_size, embedding.original_size
        )
        records: list[dict[str, Any]] = []
        for candidate in keep.tolist():
            mask = upscaler.binary(candidates.low_res[candidate], self.model.mask_threshold)
            area, box_xyxy = mask_area_and_box(mask)
            if area == 0:
                continue
            prompt = int(candidates.prompt_index[candidate])
            box = None
            if prompts.boxes is not None:
                box = (prompts.boxes[prompt].view(2, 2) * to_original).flatten().tolist()
            records.append(
                {
                    "segmentation": mask_to_coco_rle(mask) if self.config.output_mode == "coco_rle" else mask,
                    "area": area,
                    "bbox": box_xyxy_to_xywh(torch.tensor(box_xyxy)).tolist(),
                    "predicted_iou": float(candidates.iou[candidate]),
                    "stability_score": float(candidates.stability[candidate]),
                    "point_coords": [(prompts.points[prompt] * to_original).tolist()],
                    "box": box,
                    "proposal_score": None if prompts.boxes is None else float(prompts.scores[prompt]),
                }
            )
        return records


def _valid_low_res(embedding: ImageEmbedding) -> tuple[int, int]:
    """(rows, cols) of the low-resolution mask map that cover the image: the map spans the padded S×S
    input at 1/4 scale, and statistics (stability, boxes) must ignore the padding."""
    return -(-embedding.input_size[0] // 4), -(-embedding.input_size[1] // 4)
