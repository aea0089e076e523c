"""The training objective: one batch through the whole model, every loss term (``training_losses``).

Per image: the encoder gives the embedding and the AutoPPN maps; point-prompted masks are decoded with three
outputs (the best one trained), box-prompted masks with one; optionally AutoPPN's own proposals that match a
ground-truth box are decoded as point + box with three outputs (the best one trained). End to end: the image
encoder, AutoPPN, prompt encoder and mask decoder all receive gradients. The terms are defined in
:mod:`litesam.train.losses`, their weights in :class:`litesam.train.config.LossWeights`.
"""

from __future__ import annotations

import torch

from ..modeling.lite_sam import LiteSAM
from ..proposals import decode_proposals
from .config import LossWeights, PromptConfig
from .data import TrainBatch
from .losses import box_losses, heatmap_loss, mask_losses
from .prompts import match_proposals


def training_losses(
    model: LiteSAM,
    batch: TrainBatch,
    prompts: PromptConfig | None = None,
    weights: LossWeights | None = None,
) -> dict[str, torch.Tensor]:
    """Forward a batch through the whole model and compute every loss term (see the module docstring).

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
