"""The training objective: one batch through the whole model, every loss term (``training_losses``).

The encoder gives each image's embedding and AutoPPN maps; point-prompted masks are decoded with three
outputs (the best one trained), box-prompted masks with one; optionally AutoPPN's own proposals that match a
ground-truth box are decoded as point + box with three outputs (the best one trained). All prompts of the
batch are decoded in one pass, every prompt on its own image's embedding: the kinds' sparse tokens (point +
padding point, two box corners, point + two corners) are padded to one length with masked padding tokens
(:mod:`litesam.modeling.transformer`) and every output is computed, each kind reading its own; the same
result as one pass per kind, which cost 1.1–1.3× as much per training step (``bench/train_step.py``, AMD
EPYC Zen 3, 2 threads). End to end: the image encoder, AutoPPN, prompt encoder and mask decoder all receive
gradients. The terms are defined in
:mod:`litesam.train.losses`, their weights in :class:`litesam.train.config.LossWeights`.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..modeling.lite_sam import LiteSAM
from ..proposals import decode_proposals
from .config import LossWeights, PromptConfig
from .data import TrainBatch
from .losses import box_losses, heatmap_loss, mask_losses
from .prompts import match_proposals

#: Prompts by kind: [(owner image indices (K,), K×2 points or None, K×4 boxes or None, K×H×W bool targets)].
Prompted = dict[str, list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]]]
#: Decoded prompts by kind: (K×T×4h×4w float32 logits, K×T float32 predicted IoU, K×H×W targets).
Decoded = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def training_losses(
    model: LiteSAM,
    batch: TrainBatch,
    prompts: PromptConfig | None = None,
    weights: LossWeights | None = None,
    heat_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Forward a batch through the whole model and compute every loss term (see the module docstring).

    Args:
        model: the Lite-SAM being trained (its mode is left as it is).
        batch: a batch on the model's device.
        prompts: prompt settings (only the proposal settings are used here; the rest shaped the batch);
            default :class:`PromptConfig`.
        weights: loss weights; default :class:`LossWeights`.
        heat_scale: factor of the heat term in ``loss`` (the reported ``heat`` is unscaled). The term sums
            over a mask's heat cells, whose number goes with the input's area, so a progressive run trains
            its smaller side S with ``(S_full / S)²``: each mask's heat then weighs what it weighs at full size.
    Returns:
        Scalar tensors: ``loss`` (the total to minimise), ``mask`` (all prompt kinds), ``focal``, ``dice``,
        ``iou``, ``heat``, ``box_l1``, ``box_giou``, and the prompt counts ``n_point``, ``n_box``,
        ``n_proposal``.
    """
    prompts = prompts or PromptConfig()
    weights = weights or LossWeights()
    embeddings, ppn = model.image_encoder(batch.model_input(model.preprocess))
    image_pe = model.prompt_encoder.get_dense_pe()
    prompted = {**point_and_box_prompts(batch), "proposal": []}
    proposals = None
    if prompts.proposals_per_image > 0:
        with torch.no_grad():
            detached = type(ppn)(*(t.detach().float() for t in ppn))
            stride = model.image_encoder.autoppn.stride
            proposals = [
                decode_proposals(type(ppn)(*(t[i : i + 1] for t in detached)), size, stride)[0]
                for i, size in enumerate(batch.input_sizes)
            ]
    for i, image_proposals in enumerate(proposals or []):
        found, gt = match_proposals(
            image_proposals.boxes, batch.gt_boxes[i], prompts.proposal_match_iou, prompts.proposals_per_image
        )
        if len(found):
            owner = torch.full((len(gt),), i, dtype=torch.int64, device=gt.device)
            prompted["proposal"].append(
                (owner, image_proposals.points[found], image_proposals.boxes[found], batch.gt_masks[i][gt])
            )
    decoded = decode_prompts(model, embeddings, image_pe, prompted)
    counts = {kind: len(decoded[kind][2]) if kind in decoded else 0 for kind in prompted}
    mask_terms = prompt_mask_losses(decoded, weights, zero=embeddings.sum() * 0.0)

    heat = heatmap_loss(
        ppn.heat_logits.float(), batch.heat_target, batch.heat_valid, batch.num_peaks, weights.heat_beta
    )
    box = box_losses(ppn.box_ltrb.float(), batch.box_target, batch.heat_target, weights.box_min_heat)
    autoppn = (
        heat_scale * weights.heat * heat + weights.box_l1 * box["box_l1"] + weights.box_giou * box["box_giou"]
    )
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


def point_and_box_prompts(batch: TrainBatch) -> Prompted:
    """The batch's sampled prompts: ``point`` (its point prompts) and ``box`` (its noisy box prompts)."""
    prompted: Prompted = {"point": [], "box": []}
    for i in range(len(batch)):
        masks, use_point = batch.gt_masks[i], batch.use_point[i]
        owner = torch.full((len(masks),), i, dtype=torch.int64, device=masks.device)
        if use_point.any():
            prompted["point"].append((owner[use_point], batch.point_coords[i][use_point], None, masks[use_point]))
        if (~use_point).any():
            prompted["box"].append((owner[~use_point], None, batch.prompt_boxes[i][~use_point], masks[~use_point]))
    return prompted


def prompt_mask_losses(decoded: Decoded, weights: LossWeights, zero: torch.Tensor) -> dict[str, torch.Tensor]:
    """``mask``, ``focal``, ``dice``, ``iou`` of :func:`mask_losses` over every decoded prompt, each prompt
    counted equally whatever its kind; ``zero`` (a differentiable 0) where nothing was decoded."""
    total = sum(len(targets) for _, _, targets in decoded.values())
    terms = {"mask": zero, "focal": zero, "dice": zero, "iou": zero}
    for logits, iou, targets in decoded.values():
        kind_terms = mask_losses(logits, iou, targets, weights)
        terms = {key: terms[key] + len(targets) / total * kind_terms[key] for key in terms}
    return terms


def decode_prompts(model: LiteSAM, embeddings: torch.Tensor, image_pe: torch.Tensor, prompted: Prompted) -> Decoded:
    """Every prompt in one decoder pass (module docstring), each on its own image's embedding.

    Args:
        embeddings: B×C×h×w image embeddings of the batch.
        image_pe: 1×C×h×w positional encoding (``PromptEncoder.get_dense_pe()``).
    Returns:
        kind → (logits, IoU, targets) for the kinds with prompts: ``T = 1`` (the single-mask output) for
        a kind of boxes without points, the three ambiguity outputs for the kinds with points.
    """
    kinds, outputs, owners, sparse_parts, targets = [], [], [], [], []
    dense = None
    for kind, items in prompted.items():
        if not items:
            continue
        owner, point_parts, box_parts, target = zip(*items)
        points = None if point_parts[0] is None else _foreground(torch.cat(point_parts))
        boxes = None if box_parts[0] is None else torch.cat(box_parts)
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
        kinds.append(kind)
        outputs.append(slice(0, 1) if points is None else slice(1, None))  # a box alone is not ambiguous
        owners.append(torch.cat(owner))
        sparse_parts.append(sparse)
        targets.append(torch.cat(target))
    if not kinds:
        return {}
    width = max(part.shape[1] for part in sparse_parts)
    sparse = torch.cat([F.pad(part, (0, 0, 0, width - part.shape[1])) for part in sparse_parts])
    sparse_mask = torch.cat([
        torch.arange(width, device=part.device).expand(len(part), -1) < part.shape[1] for part in sparse_parts
    ])
    # index_select, not embeddings[owners]: the indexing's backward (index_put_ with accumulation) adds with
    # atomics on the CPU at two or more threads, so identical runs differed in rounding; index_select's
    # backward (index_add_) adds in a fixed order.
    low_res, iou = model.mask_decoder(
        image_embeddings=embeddings.index_select(0, torch.cat(owners)),
        image_pe=image_pe,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense[:1].expand(len(sparse), -1, -1, -1),  # the no-mask embedding
        multimask_output=True,
        sparse_mask=sparse_mask,
        every_output=True,
    )
    decoded, start = {}, 0
    for kind, read, target in zip(kinds, outputs, targets):
        rows = slice(start, start + len(target))
        decoded[kind] = (low_res[rows, read].float(), iou[rows, read].float(), target)
        start += len(target)
    return decoded
