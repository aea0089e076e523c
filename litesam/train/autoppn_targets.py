"""AutoPPN's training targets: the distance-transform heatmap of supplement Listing 1.1 and box targets.

What the paper establishes (design notes §3.2): the confidence of a point prompt is supervised with a
distance-transform heatmap (Listing 1.1, corrected: padding cropped, loop body inside the loop). The owner map
and the box targets are this project's ASSUMPTION (notes §3.4). Frames and the ltrb parametrisation are those
of :mod:`litesam.modeling.autoppn`: input-frame pixels, cell ``(i, j)`` centred at
``((j + 0.5)·stride, (i + 0.5)·stride)``, a mask's tight box ``(x_min, y_min, x_max + 1, y_max + 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np
import torch

from ..masks import InvalidMaskError
from ..modeling.autoppn import cell_centres


def _as_mask_stack(masks: Sequence[np.ndarray] | np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    """N×H×W bool from a list of H×W arrays or an N×H×W array (nonzero = on)."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    if isinstance(masks, np.ndarray):
        if masks.ndim != 3:
            raise InvalidMaskError(f"masks must be N×H×W or a list of H×W arrays, got shape {masks.shape}")
        stack = masks != 0
    else:
        arrays = [np.asarray(m.detach().cpu() if isinstance(m, torch.Tensor) else m) for m in masks]
        if not arrays:
            if shape is None:
                raise InvalidMaskError("an empty list of masks needs shape=(H, W)")
            return np.zeros((0, *shape), dtype=bool)
        if any(a.ndim != 2 or a.shape != arrays[0].shape for a in arrays):
            raise InvalidMaskError(f"masks must all be H×W of one shape, got {[a.shape for a in arrays]}")
        stack = np.stack(arrays) != 0
    if stack.shape[1] == 0 or stack.shape[2] == 0:
        raise InvalidMaskError(f"masks must be non-empty H×W arrays, got {stack.shape[1:]}")
    if shape is not None and tuple(shape) != stack.shape[1:]:
        raise InvalidMaskError(f"masks are {stack.shape[1:]}, but shape={tuple(shape)} was given")
    return stack


def _mask_heat(mask: np.ndarray, alpha: float, eps: float) -> np.ndarray:
    """(d / (max d + eps))^alpha for a bool mask; d = distance to the nearest off pixel (5×5 chamfer L2)."""
    padded = np.pad(mask.astype(np.uint8), 1)  # pixels on the image edge count as boundary
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_5)[1:-1, 1:-1]
    return (dist / (dist.max() + eps)) ** alpha


def _bounding_slices(mask: np.ndarray) -> tuple[slice, slice] | None:
    """Row and column slices of the mask's bounding box, or None for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def heatmap_target_with_owner(
    masks: Sequence[np.ndarray] | np.ndarray,
    alpha: float = 4.0,
    eps: float = 1e-4,
    shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Distance-transform point-confidence target and which mask supplies it at each pixel.

    Listing 1.1 of the supplement, corrected (notes §3.2): masks sorted by area, largest first; each is padded
    by one zero pixel (so pixels on the image edge are boundary), distance-transformed (``cv2.distanceTransform``,
    ``DIST_L2``, 5×5 mask), cropped back to H×W, divided by its own maximum + ``eps``, raised to ``alpha`` and
    merged by element-wise maximum. A mask's innermost pixel gets ≈1, its edge pixels (distance 1) get
    ``(1 / d_max)^alpha`` and pixels outside every mask get exactly 0. The heat does not depend on the order of
    ``masks``.

    Owner map (notes §3.4): each pixel inside at least one mask is owned by the mask whose value is the
    maximum there; visiting masks largest first and taking ownership on ``>=``, a smaller mask wins a tie.
    Masks of equal area keep their given order (stable sort).

    Args:
        masks: N×H×W array or list of H×W arrays, bool or 0/1 (nonzero = on), in one frame.
        alpha: sharpening exponent (paper: 4).
        eps: keeps the normalisation finite for an empty mask (paper: 1e-4).
        shape: (H, W); needed only when ``masks`` is an empty list.
    Returns:
        (heat H×W float32 in [0, 1], owner H×W int64: index into ``masks``, −1 outside every mask).
    Raises:
        InvalidMaskError: masks of different or empty shapes, or not 2-D.
    """
    stack = _as_mask_stack(masks, shape)
    height, width = stack.shape[1:]
    heat = np.zeros((height, width), dtype=np.float32)
    owner = np.full((height, width), -1, dtype=np.int64)
    areas = stack.sum(axis=(1, 2))
    for index in np.argsort(-areas, kind="stable"):
        box = _bounding_slices(stack[index])
        if box is None:
            continue  # an empty mask contributes zeros
        # The distance transform runs on the bounding box only: its one-pixel zero padding stands for the
        # off pixels around the box (or the image edge), and no path to a farther off pixel is shorter.
        mask = stack[index][box]
        value = _mask_heat(mask, alpha, eps)
        region, region_owner = heat[box], owner[box]
        region_owner[mask & (value >= region)] = index
        np.maximum(region, value, out=region)
    return heat, owner


def heatmap_target(
    masks: Sequence[np.ndarray] | np.ndarray,
    alpha: float = 4.0,
    eps: float = 1e-4,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """The H×W float32 distance-transform heatmap of :func:`heatmap_target_with_owner` (without the owners)."""
    return heatmap_target_with_owner(masks, alpha, eps, shape)[0]


class AutoPPNTargets(NamedTuple):
    """AutoPPN training targets on the stride grid of one image.

    Attributes:
        heat: H'×W' float32 in [0, 1], the maximum of the full-resolution heatmap over each cell.
        box_ltrb: 4×H'×W' float32 ≥ 0, distances from the cell centre to the tight box of the mask that owns
            the cell's maximum, in units of the stride (0 where no mask covers the cell).
        owner: H'×W' int64, index of that mask in the input list (−1 where none).
        num_peaks: number of masks that own at least one cell.
    """

    heat: np.ndarray
    box_ltrb: np.ndarray
    owner: np.ndarray
    num_peaks: int


def build_autoppn_targets(
    masks: Sequence[np.ndarray] | np.ndarray,
    stride: int = 8,
    alpha: float = 4.0,
    eps: float = 1e-4,
    shape: tuple[int, int] | None = None,
) -> AutoPPNTargets:
    """Targets for :class:`AutoPPN` at ``stride`` from the masks of one (padded) model input.

    The heatmap and owner map are computed at full resolution (:func:`heatmap_target_with_owner`); each
    stride×stride cell then takes its maximum heat and the owner of the pixel that holds it. The box target is
    that owner's tight box, as ltrb distances about the cell centre (clamped at 0 when the centre lies outside
    the box), so ``ltrb_to_boxes`` of the target gives the box back wherever the centre is inside it.

    Args:
        masks: N×H×W (or list of H×W), nonzero = on, in the S×S input frame; H and W multiples of ``stride``.
        stride: input pixels per cell (``AutoPPN.stride``).
        alpha, eps, shape: as in :func:`heatmap_target_with_owner`.
    Raises:
        InvalidMaskError: bad masks, or H/W not a multiple of ``stride``.
    """
    stack = _as_mask_stack(masks, shape)
    height, width = stack.shape[1:]
    if stride <= 0 or height % stride or width % stride:
        raise InvalidMaskError(f"mask size {height}×{width} is not a multiple of the stride {stride}")
    heat, owner = heatmap_target_with_owner(stack, alpha, eps)
    rows, cols = height // stride, width // stride

    def cells(a: np.ndarray) -> np.ndarray:
        return (
            a.reshape(rows, stride, cols, stride).transpose(0, 2, 1, 3).reshape(rows, cols, stride * stride)
        )

    best = cells(heat).argmax(axis=2)[..., None]
    cell_heat = np.take_along_axis(cells(heat), best, axis=2)[..., 0]
    cell_owner = np.take_along_axis(cells(owner), best, axis=2)[..., 0]

    boxes = np.zeros((len(stack), 4), dtype=np.float32)
    for index, mask in enumerate(stack):
        box = _bounding_slices(mask)
        if box is not None:
            boxes[index] = (box[1].start, box[0].start, box[1].stop, box[0].stop)
    centres = cell_centres(rows, cols, stride).numpy()
    owned = cell_owner >= 0
    ltrb = np.zeros((rows, cols, 4), dtype=np.float32)
    box = boxes[cell_owner[owned]]
    cx, cy = centres[owned, 0], centres[owned, 1]
    ltrb[owned] = np.stack([cx - box[:, 0], cy - box[:, 1], box[:, 2] - cx, box[:, 3] - cy], axis=1) / stride
    np.maximum(ltrb, 0.0, out=ltrb)
    num_peaks = int(len(np.unique(cell_owner[owned])))
    return AutoPPNTargets(cell_heat.astype(np.float32), ltrb.transpose(2, 0, 1).copy(), cell_owner, num_peaks)

