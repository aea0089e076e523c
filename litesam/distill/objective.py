"""The distillation objective of one batch (``distill_losses``).

Terms (weights in :class:`~litesam.distill.config.DistillConfig`):

* ``embedding``: mean squared error between the student's embedding and the teacher's, resampled to the
  student's grid (:func:`litesam.distill.alignment.teacher_to_student`), over every cell and channel, padding
  cells included (the decoder attends to all of them). MobileSAM's decoupled distillation; only the image
  encoder learns from it;
* ``autoppn`` (option): the student's AutoPPN head on the student's embedding **with its gradient stopped**,
  against the Listing 1.1 targets of the teacher's pseudo-masks (the trainer's heat and box losses,
  :mod:`litesam.train.losses`, with :class:`~litesam.train.config.LossWeights`' inner weights), so the
  encoder stays shaped by the teacher alone;
* ``teacher_autoppn`` (option): a head on the teacher's own cached embedding against the same masks in the
  teacher's frame;
* ``decoder`` (option): the copied mask decoder fine-tuned on the pseudo-masks, prompted by a point (three
  outputs, the best trained) or a noisy box (one output) as in training (:mod:`litesam.train.prompts`), on the
  student's embedding with its gradient stopped; the trainer's mask loss (BCE + dice + IoU head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..modeling.autoppn import AutoPPN, AutoPPNOutput
from ..modeling.lite_sam import LiteSAM
from ..train.config import LossWeights
from ..train.losses import box_losses, heatmap_loss
from ..train.objective import decode_prompts, point_and_box_prompts, prompt_mask_losses
from .alignment import teacher_to_student
from .data import DistillBatch


def distill_losses(
    student: LiteSAM,
    batch: DistillBatch,
    resample: str = "bilinear",
    weights: dict[str, float] | None = None,
    autoppn: bool = True,
    finetune_decoder: bool = False,
    teacher_head: AutoPPN | None = None,
    inner: LossWeights | None = None,
) -> dict[str, torch.Tensor]:
    """Forward one batch and compute the terms of the module docstring.

    Args:
        student: the student (its mode is left as it is).
        batch: a batch on the student's device.
        resample: :data:`litesam.distill.alignment.MODES`.
        weights: ``{"embedding", "autoppn", "decoder"}`` term weights (default 1 each).
        autoppn, finetune_decoder: which optional terms to add.
        teacher_head: a head trained on the teacher's embedding (``batch`` then holds teacher-frame targets).
        inner: the AutoPPN and mask loss weights inside the terms (default :class:`LossWeights`).
    Returns:
        Scalar tensors: ``loss`` and each term computed (``embedding``, ``autoppn``, ``teacher_autoppn``,
        ``decoder``).
    """
    weights = {"embedding": 1.0, "autoppn": 1.0, "decoder": 1.0, **(weights or {})}
    inner = inner or LossWeights()
    embedding = student.image_encoder.embed(batch.student.model_input(student.preprocess))
    target = teacher_to_student(batch.teacher_embeddings, embedding.shape[-1], resample)
    terms = {"embedding": F.mse_loss(embedding.float(), target)}
    loss = weights["embedding"] * terms["embedding"]
    frozen = embedding.detach()
    s = batch.student
    if autoppn:
        out = student.image_encoder.autoppn(frozen)
        terms["autoppn"] = _autoppn_loss(out, s.heat_target, s.box_target, s.heat_valid, s.num_peaks, inner)
        loss = loss + weights["autoppn"] * terms["autoppn"]
    if teacher_head is not None:
        out = teacher_head(batch.teacher_embeddings.float())
        terms["teacher_autoppn"] = _autoppn_loss(
            out, batch.teacher_heat, batch.teacher_box, batch.teacher_valid, batch.teacher_peaks, inner
        )
        loss = loss + weights["autoppn"] * terms["teacher_autoppn"]
    if finetune_decoder:
        terms["decoder"] = _decoder_loss(student, frozen, s, inner)
        loss = loss + weights["decoder"] * terms["decoder"]
    return {"loss": loss, **terms}


def _autoppn_loss(out: AutoPPNOutput, heat, box, valid, peaks, inner: LossWeights) -> torch.Tensor:
    heat_term = heatmap_loss(out.heat_logits.float(), heat, valid, peaks, inner.heat_beta)
    boxes = box_losses(out.box_ltrb.float(), box, heat, inner.box_min_heat)
    return inner.heat * heat_term + inner.box_l1 * boxes["box_l1"] + inner.box_giou * boxes["box_giou"]


def _decoder_loss(student: LiteSAM, embeddings: torch.Tensor, s, inner: LossWeights) -> torch.Tensor:
    """Mask loss of point- and box-prompted pseudo-masks, every prompt counted equally, in one decoder pass."""
    prompted = point_and_box_prompts(s)
    decoded = decode_prompts(student, embeddings, student.prompt_encoder.get_dense_pe(), prompted)
    return prompt_mask_losses(decoded, inner, zero=embeddings.sum() * 0.0)["mask"]
