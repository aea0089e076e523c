"""Training losses of Lite-SAM: mask decoder (focal + dice + IoU head) and AutoPPN (heatmap + boxes).

The paper gives none of its losses (design notes §3.4, §5). These are our ASSUMPTIONS:

Mask decoder (after SAM's published recipe; weights measured, see :class:`~litesam.train.config.LossWeights`):

* per predicted mask, ``focal · L_focal + dice · L_dice`` on the mask logits. ``L_focal`` is the sigmoid focal
  loss of Lin et al. averaged over pixels; with the default γ = 0 and no α it is plain binary cross-entropy
  (SAM: focal 20 : dice 1, which we measured to collapse every logit to negative on small data). Dice is
  ``1 − (2·Σpt + 1) / (Σp + Σt + 1)`` with p = sigmoid(logits);
* for multimask outputs (single-point prompts), only the output with the smallest mask loss is trained;
* IoU head: mean squared error between every predicted IoU and the IoU of that output's binarised mask
  (logits > 0) with the ground truth, weight 1. All outputs are supervised, not only the best one, because
  inference ranks all of them by predicted IoU.

AutoPPN (design notes §3.4):

* heatmap: quality focal loss (soft BCE against the continuous distance-transform target, scaled by
  ``|y − sigmoid(x)|^β``, β = 2), summed over the valid (unpadded) cells and divided by the number of
  masks that own a peak in the target grid;
* boxes: where the target heat is ≥ 0.3, weighted by the target heat, ``5 · L1`` on the ltrb distances
  divided by the grid side (i.e. distances as fractions of the input side) plus ``2 · (1 − GIoU)`` of the
  boxes they describe around the cell centre; normalised by the sum of the weights;
* ``L = L_mask + λ · (L_heat + L_box)`` with λ = ``LossWeights.autoppn``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import LossWeights


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss per candidate mask, averaged over its pixels.

    At ``gamma = 0`` without ``alpha`` it is plain binary cross-entropy, computed as ``softplus(x) − x·t``
    with the target term as one batched product (a fifth of the operations of the general form).

    Args:
        logits: K×C×H×W float mask logits (C candidates per prompt).
        targets: K×H×W bool or float in [0, 1], the prompt's ground truth shared by its C candidates.
        alpha: weight of the positive class (1 − alpha for the negative); a negative value disables it.
        gamma: focusing exponent.
    Returns:
        K×C float tensor.
    """
    truth = targets.to(logits.dtype)
    if gamma == 0 and alpha < 0:
        pixels = logits.shape[-2] * logits.shape[-1]
        return (F.softplus(logits).flatten(2).sum(dim=-1) - _target_sums(logits, truth)) / pixels
    truth = truth[:, None]
    probs = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, truth.expand_as(logits), reduction="none")
    p_true = probs * truth + (1 - probs) * (1 - truth)
    loss = bce * (1 - p_true) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * truth + (1 - alpha) * (1 - truth))
    return loss.flatten(-2).mean(dim=-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice loss per candidate mask: ``1 − (2·Σpt + s) / (Σp + Σt + s)`` with p = sigmoid(logits).

    Args:
        logits: K×C×H×W float mask logits.
        targets: K×H×W bool or float in [0, 1], shared by the prompt's C candidates.
        smooth: s, keeps an empty target with an empty prediction at loss 0.
    Returns:
        K×C float tensor.
    """
    truth = targets.to(logits.dtype)
    probs = torch.sigmoid(logits)
    numerator = 2 * _target_sums(probs, truth) + smooth
    return 1 - numerator / (probs.flatten(2).sum(dim=-1) + truth.flatten(1).sum(dim=-1)[:, None] + smooth)


@torch.no_grad()
def binary_mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of each binarised candidate (logits > 0) with its prompt's target; 1 when both are empty.

    Args:
        logits: K×C×H×W float; targets: K×H×W bool, shared by the prompt's C candidates.
    Returns:
        K×C float tensor in [0, 1] (no gradient). Pixel counts are exact in float32 up to 2²⁴ pixels a mask.
    """
    truth = targets.to(logits.dtype)
    predicted = (logits > 0).to(logits.dtype)
    intersection = _target_sums(predicted, truth)
    union = predicted.flatten(2).sum(dim=-1) + truth.flatten(1).sum(dim=-1)[:, None] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def _target_sums(values: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``Σ_pixels values · truth`` per candidate as one batched product: K×C×H×W, K×H×W float → K×C."""
    return torch.bmm(values.flatten(2), truth.flatten(1)[:, :, None]).squeeze(2)


def mask_losses(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    targets: torch.Tensor,
    weights: LossWeights = LossWeights(),
) -> dict[str, torch.Tensor]:
    """Mask-decoder losses for K prompts, each with C candidate masks (C = 3 multimask, or 1).

    Args:
        logits: K×C×h×w mask logits. If the targets are larger (input scale), the logits are upsampled
            bilinearly to the target size first.
        iou_pred: K×C predicted IoU.
        targets: K×H×W bool ground-truth masks in the same frame (padded model input, low-res or full).
        weights: loss weights.
    Returns:
        ``focal``, ``dice`` (of the trained outputs, mean over prompts), ``iou`` (MSE, mean over all
        outputs), ``mask`` (the weighted total); scalar tensors. K = 0 gives zeros (still differentiable).
    """
    if logits.shape[0] == 0:
        zero = logits.sum() * 0 + iou_pred.sum() * 0
        return {"focal": zero, "dice": zero, "iou": zero, "mask": zero}
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(logits, targets.shape[-2:], mode="bilinear", align_corners=False)
    focal = sigmoid_focal_loss(logits, targets, weights.focal_alpha, weights.focal_gamma)  # K×C
    dice = dice_loss(logits, targets)  # K×C
    combined = weights.focal * focal + weights.dice * dice
    best = combined.argmin(dim=1)
    rows = torch.arange(logits.shape[0], device=logits.device)
    true_iou = binary_mask_iou(logits.detach(), targets)
    iou = F.mse_loss(iou_pred, true_iou.to(iou_pred.dtype))
    return {
        "focal": focal[rows, best].mean(),
        "dice": dice[rows, best].mean(),
        "iou": iou,
        "mask": combined[rows, best].mean() + weights.iou * iou,
    }


def generalized_box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Element-wise generalised IoU of two aligned sets of XYXY boxes (continuous coordinates).

    Args:
        boxes_a, boxes_b: N×4 XYXY (any frame, x2 ≥ x1, y2 ≥ y1).
    Returns:
        N float in [−1, 1]: IoU − (enclosing area − union) / enclosing area.
    """
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    overlap = (
        torch.minimum(boxes_a[:, 2:], boxes_b[:, 2:]) - torch.maximum(boxes_a[:, :2], boxes_b[:, :2])
    ).clamp(min=0)
    intersection = overlap[:, 0] * overlap[:, 1]
    union = area_a + area_b - intersection
    hull = torch.maximum(boxes_a[:, 2:], boxes_b[:, 2:]) - torch.minimum(boxes_a[:, :2], boxes_b[:, :2])
    hull_area = hull[:, 0] * hull[:, 1]
    return intersection / (union + eps) - (hull_area - union) / (hull_area + eps)


def heatmap_loss(
    heat_logits: torch.Tensor,
    heat_target: torch.Tensor,
    valid: torch.Tensor,
    num_peaks: torch.Tensor,
    beta: float = 2.0,
) -> torch.Tensor:
    """Quality focal loss of the AutoPPN heatmap against the continuous target.

    Args:
        heat_logits: B×1×H'×W' (or B×H'×W') logits.
        heat_target: B×H'×W' float in [0, 1] (distance-transform heatmap at the AutoPPN stride).
        valid: B×H'×W' bool, False on cells of the zero padding.
        num_peaks: B, masks that own at least one target cell, per image.
        beta: exponent of the ``|y − p|`` modulating factor.
    Returns:
        scalar: sum over valid cells / max(1, total peaks).
    """
    logits = heat_logits.reshape(heat_target.shape)
    target = heat_target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    modulation = (torch.sigmoid(logits) - target).abs() ** beta
    total = (bce * modulation * valid.to(logits.dtype)).sum()
    return total / num_peaks.sum().clamp(min=1).to(logits.dtype)


def box_losses(
    box_ltrb: torch.Tensor,
    box_target: torch.Tensor,
    heat_target: torch.Tensor,
    min_heat: float = 0.3,
) -> dict[str, torch.Tensor]:
    """Box regression of AutoPPN where the target heat is high, weighted by it.

    Args:
        box_ltrb: B×4×H'×W' predicted non-negative (left, top, right, bottom) distances from each cell
            centre, in units of the AutoPPN stride.
        box_target: B×4×H'×W' target distances to the owning mask's box, same units.
        heat_target: B×H'×W' target heat; cells below ``min_heat`` are ignored, the others weighted by it.
        min_heat: heat threshold.
    Returns:
        ``box_l1`` (mean |Δ| of the four distances divided by the grid side, weighted) and ``box_giou``
        (weighted mean of 1 − GIoU); scalar tensors, zero (still differentiable) without any cell.
    """
    weight = torch.where(heat_target >= min_heat, heat_target, torch.zeros_like(heat_target)).to(
        box_ltrb.dtype
    )
    cells = weight > 0
    if not bool(cells.any()):
        zero = box_ltrb.sum() * 0
        return {"box_l1": zero, "box_giou": zero}
    pred = box_ltrb.permute(0, 2, 3, 1)[cells]  # M×4
    target = box_target.permute(0, 2, 3, 1)[cells].to(pred.dtype)
    w = weight[cells]
    grid_side = float(max(box_ltrb.shape[-2:]))
    l1 = ((pred - target).abs().sum(dim=1) / (4 * grid_side) * w).sum() / w.sum()
    as_box = torch.tensor([-1.0, -1.0, 1.0, 1.0], device=pred.device, dtype=pred.dtype)
    giou = generalized_box_iou(pred * as_box, target * as_box)
    return {"box_l1": l1, "box_giou": ((1 - giou) * w).sum() / w.sum()}
