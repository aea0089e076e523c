"""Boxes, stability scores and non-maximum suppression on binary masks (torch), as SAM's automatic mask
generator uses them; conventions in :mod:`litesam.masks`."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidMaskError


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes around masks, pixel-inclusive; ``[0, 0, 0, 0]`` for an empty mask.

    Args:
        masks: ``…×H×W`` tensor, bool (other dtypes: nonzero = on), any number of leading dims (also none).
    Returns:
        ``…×4`` int64 tensor on the masks' device: ``(x1, y1, x2, y2)`` = (left-most column, top row,
        right-most column, bottom row) of the on pixels, in the masks' pixel frame.
    Raises:
        InvalidMaskError: fewer than 2 dims.
    """
    if not isinstance(masks, torch.Tensor) or masks.dim() < 2:
        raise InvalidMaskError(f"masks must be a …×H×W tensor, got {getattr(masks, 'shape', type(masks))}")
    lead, (height, width) = masks.shape[:-2], masks.shape[-2:]
    if masks.numel() == 0:
        return torch.zeros(*lead, 4, dtype=torch.int64, device=masks.device)
    flat = masks.reshape(-1, height, width)
    if flat.dtype != torch.bool:
        flat = flat != 0
    rows = flat.any(dim=2)  # B×H: row holds an on pixel
    cols = flat.any(dim=1)  # B×W
    ys = torch.arange(height, device=masks.device)
    xs = torch.arange(width, device=masks.device)
    boxes = torch.stack(
        (
            torch.where(cols, xs, width).amin(dim=1),
            torch.where(rows, ys, height).amin(dim=1),
            torch.where(cols, xs, -1).amax(dim=1),
            torch.where(rows, ys, -1).amax(dim=1),
        ),
        dim=1,
    )
    boxes = boxes * rows.any(dim=1, keepdim=True)
    return boxes.reshape(*lead, 4)


def box_xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """Convert ``…×4`` XYXY boxes to XYWH ``(x1, y1, x2 − x1, y2 − y1)``; same dtype, a new tensor.

    A numpy array or list is accepted and converted with ``torch.as_tensor``.
    """
    boxes = torch.as_tensor(boxes)
    if boxes.dim() == 0 or boxes.shape[-1] != 4:
        raise InvalidMaskError(f"boxes must be …×4 XYXY, got shape {tuple(boxes.shape)}")
    return torch.cat((boxes[..., :2], boxes[..., 2:] - boxes[..., :2]), dim=-1)


def calculate_stability_score(
    mask_logits: torch.Tensor, mask_threshold: float, threshold_offset: float
) -> torch.Tensor:
    """IoU of each mask thresholded at ``threshold + offset`` with the same mask at ``threshold − offset``.

    The higher threshold's mask lies inside the lower one's, so the IoU is the ratio of their pixel counts.

    Args:
        mask_logits: ``…×H×W`` float tensor of mask logits.
        mask_threshold: logit threshold of the binary mask (0.0 in SAM).
        threshold_offset: non-negative offset (1.0 in SAM).
    Returns:
        ``…`` float32 tensor in [0, 1]. A mask with no pixel above ``threshold − offset`` scores 0.0 (SAM's
        ``amg`` returns 0/0 = NaN there); all other values equal ``amg.calculate_stability_score``.
    """
    if threshold_offset < 0:
        raise InvalidMaskError(f"threshold_offset must be >= 0, got {threshold_offset}")
    if not isinstance(mask_logits, torch.Tensor) or mask_logits.dim() < 2:
        raise InvalidMaskError(
            f"mask_logits must be a …×H×W tensor, got {getattr(mask_logits, 'shape', type(mask_logits))}"
        )
    inner = (mask_logits > mask_threshold + threshold_offset).sum(dim=(-2, -1))
    outer = (mask_logits > mask_threshold - threshold_offset).sum(dim=(-2, -1))
    return inner.to(torch.float32) / outer.clamp(min=1).to(torch.float32)


def box_iou_matrix(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of XYXY boxes, areas ``(x2 − x1)·(y2 − y1)`` (torchvision's convention).

    Args:
        boxes_a: M×4 XYXY, boxes_b: N×4 XYXY, same frame; integer boxes are computed in float32.
    Returns:
        M×N float tensor (float32, or the boxes' floating dtype). Two zero-area boxes give NaN (0/0), which
        no IoU threshold exceeds.
    """
    a, b = _float_boxes(boxes_a, "boxes_a"), _float_boxes(boxes_b, "boxes_b")
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    overlap = (bottom_right - top_left).clamp(min=0)
    intersection = overlap[..., 0] * overlap[..., 1]
    return intersection / (area_a[:, None] + area_b[None, :] - intersection)


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression of XYXY boxes (same result as ``torchvision.ops.nms``).

    Boxes are visited by descending score (equal scores: lower index first); a box is kept unless its IoU
    (:func:`box_iou_matrix`) with an already kept box is greater than ``iou_threshold``.

    Args:
        boxes: N×4 XYXY tensor (any frame, float or int).
        scores: N tensor of scores.
        iou_threshold: IoU above which the lower-scored box is dropped.
    Returns:
        int64 tensor of kept indices into ``boxes``, by descending score, on the boxes' device.
    Memory: an N×N bool matrix (9 MB at N = 3,000).
    """
    order, count = _nms_order(boxes, scores, iou_threshold, "boxes")
    sorted_boxes = _float_boxes(boxes, "boxes")[order]
    suppresses = np.empty((count, count), dtype=bool)
    for start in range(0, count, _NMS_ROWS):
        rows = box_iou_matrix(sorted_boxes[start : start + _NMS_ROWS], sorted_boxes)
        suppresses[start : start + _NMS_ROWS] = (rows > iou_threshold).cpu().numpy()
    return order[torch.from_numpy(_greedy_keep(suppresses)).to(order.device)]


def mask_iou_matrix(masks_a: torch.Tensor, masks_b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of binary masks of one frame (meant for low-resolution masks, e.g. 256×256).

    Args:
        masks_a: M×H×W tensor, masks_b: N×H×W tensor; bool (other dtypes: nonzero = on).
    Returns:
        M×N float32 tensor; two empty masks have IoU 0. Cost: one M×(H·W) by (H·W)×N matrix product.
    """
    a, b = _flat_masks(masks_a, "masks_a"), _flat_masks(masks_b, "masks_b")
    if a.shape[1] != b.shape[1]:
        raise InvalidMaskError(f"masks must share H×W, got {tuple(masks_a.shape)} and {tuple(masks_b.shape)}")
    # Pixel counts are exact in float32 up to 2^24 pixels per mask.
    dtype = torch.float32 if a.shape[1] <= 1 << 24 else torch.float64
    a, b = a.to(dtype), b.to(dtype)
    intersection = a @ b.T
    union = a.sum(dim=1)[:, None] + b.sum(dim=1)[None, :] - intersection
    return (intersection / union.clamp(min=1)).to(torch.float32)


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS on mask IoU (:func:`mask_iou_matrix`), with the ordering rules of :func:`box_nms`.

    Args:
        masks: N×H×W tensor, bool (other dtypes: nonzero = on).
        scores: N tensor of scores.
        iou_threshold: mask IoU above which the lower-scored mask is dropped.
    Returns:
        int64 tensor of kept indices into ``masks``, by descending score.
    """
    if not isinstance(masks, torch.Tensor) or masks.dim() != 3:
        raise InvalidMaskError(f"masks must be an N×H×W tensor, got {getattr(masks, 'shape', type(masks))}")
    order, count = _nms_order(masks, scores, iou_threshold, "masks")
    sorted_masks = masks[order]
    suppresses = np.empty((count, count), dtype=bool)
    for start in range(0, count, _NMS_ROWS):
        rows = mask_iou_matrix(sorted_masks[start : start + _NMS_ROWS], sorted_masks)
        suppresses[start : start + _NMS_ROWS] = (rows > iou_threshold).cpu().numpy()
    return order[torch.from_numpy(_greedy_keep(suppresses)).to(order.device)]


#: Rows of the pairwise IoU matrix computed at once by the NMS functions (bounds temporary memory).
_NMS_ROWS = 1024


def _nms_order(items: torch.Tensor, scores: torch.Tensor, iou_threshold: float, name: str):
    if not isinstance(items, torch.Tensor) or not isinstance(scores, torch.Tensor):
        raise InvalidMaskError(f"{name} and scores must be torch tensors")
    if scores.dim() != 1 or items.dim() == 0 or items.shape[0] != scores.shape[0]:
        raise InvalidMaskError(
            f"scores must be a 1-D tensor with one score per entry of {name}, got {name} "
            f"{tuple(items.shape)} and scores {tuple(scores.shape)}"
        )
    if not np.isfinite(iou_threshold):
        raise InvalidMaskError(f"iou_threshold must be a finite number, got {iou_threshold}")
    order = torch.sort(scores, descending=True, stable=True).indices
    return order, int(scores.shape[0])


def _greedy_keep(suppresses: np.ndarray) -> np.ndarray:
    """Positions kept by greedy NMS; ``suppresses[i, j]``: i, if kept, removes j (visiting order)."""
    removed = np.zeros(suppresses.shape[0], dtype=bool)
    keep = []
    for i in range(suppresses.shape[0]):
        if not removed[i]:
            keep.append(i)
            removed |= suppresses[i]
    return np.asarray(keep, dtype=np.int64)


def _float_boxes(boxes: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        got = getattr(boxes, "shape", type(boxes))
        raise InvalidMaskError(f"{name} must be an N×4 XYXY tensor, got {got}")
    return boxes if boxes.is_floating_point() else boxes.to(torch.float32)


def _flat_masks(masks: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(masks, torch.Tensor) or masks.dim() != 3:
        raise InvalidMaskError(f"{name} must be an N×H×W tensor, got {getattr(masks, 'shape', type(masks))}")
    flat = masks.flatten(1)
    return flat if flat.dtype == torch.bool else flat != 0
