"""Prompt simulation for training: which prompt each ground-truth mask is shown with.

The paper does not describe its prompt simulation (design notes §5, NOT RETRIEVED). These are our
ASSUMPTIONS, following SAM's published recipe where it has one:

* **point**: one foreground point drawn uniformly from the mask's pixels (SAM: "a foreground point sampled
  uniformly from the ground-truth mask"), decoded with ``multimask_output=True``; the loss takes the best of
  the three outputs (see :mod:`litesam.train.losses`).
* **box**: the mask's tight box with Gaussian noise on each coordinate, standard deviation 10 % of the box
  side along that axis, each offset clipped to ±20 px (SAM's "10 % of the box side length, up to 20 px"),
  then clipped to the resized image; decoded with ``multimask_output=False``.
* each mask gets a point prompt with probability ``point_fraction`` (0.5), a box otherwise, as in SAM's
  first interaction round. SAM's later rounds (error-region points, mask inputs) are not simulated.
* **AutoPPN proposals** (optional, ``proposals_per_image > 0``): the model's own decoded proposals (point +
  box, the prompt form SegEvery uses) matched to the ground-truth mask with the highest box IoU if that IoU
  is at least ``proposal_match_iou``; they train the decoder on the prompts it will see in SegEvery.

All coordinates are input-frame pixels (the resized image inside the S×S model input), (x, y) order; point
and box coordinates are pixel indices, as the prompt encoder expects (it adds 0.5 to reach pixel centres);
boxes are XYXY and pixel-inclusive (x2 = right-most column), like :func:`litesam.masks.batched_mask_to_box`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..masks import box_iou_matrix
from .config import PromptConfig

__all__ = ["PromptConfig", "sample_points", "jitter_boxes", "choose_point_prompts", "match_proposals"]


def sample_points(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One point drawn uniformly from the on pixels of each mask.

    Args:
        masks: N×H×W bool, input frame; every mask must have at least one on pixel.
        rng: the sample's random generator.
    Returns:
        N×2 float32 (x, y) pixel indices.
    """
    points = np.empty((len(masks), 2), dtype=np.float32)
    for i, mask in enumerate(masks):
        flat = np.flatnonzero(mask)
        if flat.size == 0:
            raise ValueError(f"mask {i} is empty; drop empty masks before sampling prompts")
        row, col = divmod(int(flat[rng.integers(flat.size)]), mask.shape[1])
        points[i] = (col, row)
    return points


def jitter_boxes(
    boxes: np.ndarray,
    rng: np.random.Generator,
    bounds: tuple[int, int],
    noise: float = 0.1,
    cap: float = 20.0,
) -> np.ndarray:
    """Noisy copies of tight boxes (see the module docstring).

    Args:
        boxes: N×4 XYXY pixel-inclusive boxes, input frame.
        rng: the sample's random generator.
        bounds: (h, w) of the resized image; corners are clipped to [0, w − 1] × [0, h − 1].
        noise: standard deviation of each corner offset as a fraction of the box side along its axis.
        cap: largest offset in pixels.
    Returns:
        N×4 float32 XYXY with x1 ≤ x2 and y1 ≤ y2.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    sides = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1) + 1.0
    scale = np.tile(sides, 2) * noise
    offsets = np.clip(rng.standard_normal(boxes.shape) * scale, -cap, cap)
    noisy = boxes + offsets
    h, w = bounds
    noisy[:, 0::2] = np.clip(noisy[:, 0::2], 0, w - 1)
    noisy[:, 1::2] = np.clip(noisy[:, 1::2], 0, h - 1)
    x = np.sort(noisy[:, 0::2], axis=1)
    y = np.sort(noisy[:, 1::2], axis=1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).astype(np.float32)


def choose_point_prompts(count: int, rng: np.random.Generator, point_fraction: float) -> np.ndarray:
    """N bool: True where a mask is prompted with a point, False where with a box."""
    return rng.random(count) < point_fraction


def match_proposals(
    proposal_boxes: torch.Tensor,
    gt_boxes: torch.Tensor,
    min_iou: float,
    limit: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair proposals with ground-truth masks by box IoU.

    Each proposal goes to the ground-truth box it overlaps most, if that IoU is at least ``min_iou``; several
    proposals may share one ground truth. At most ``limit`` pairs are kept, in proposal order (by score).

    Args:
        proposal_boxes: P×4 XYXY input-frame px (AutoPPN's ``Proposals.boxes``).
        gt_boxes: N×4 XYXY input-frame px.
        min_iou: smallest accepted box IoU.
        limit: largest number of pairs.
    Returns:
        (proposal indices K, ground-truth indices K), int64, on the proposals' device.
    """
    empty = torch.zeros(0, dtype=torch.int64, device=proposal_boxes.device)
    if len(proposal_boxes) == 0 or len(gt_boxes) == 0 or limit == 0:
        return empty, empty
    iou = torch.nan_to_num(box_iou_matrix(proposal_boxes.float(), gt_boxes.to(proposal_boxes.device).float()))
    best_iou, best_gt = iou.max(dim=1)
    matched = torch.nonzero(best_iou >= min_iou).flatten()[:limit]
    return matched, best_gt[matched]
