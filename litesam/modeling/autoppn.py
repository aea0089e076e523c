"""AutoPPN: the automated prompt-proposal network that replaces SAM's point grid in SegEvery.

What the paper establishes (design notes §3.1–3.2): AutoPPN proposes point and box prompts end to end, and the
confidence of a point is supervised with a distance-transform heatmap (supplement Listing 1.1). Everything else
here (head layout, box parametrisation, decoding, defaults) is this project's ASSUMPTION (notes §3.3–3.5).

Input choice. :class:`AutoPPN` reads **only the 256-channel image embedding** (the neck output at stride 16),
not backbone features. So proposals can be computed from an embedding cached in Redis (the Label Studio
backend stores only that), without re-running the image encoder.

Head (:class:`AutoPPN`, about 26 K parameters with the default :class:`AutoPPNConfig`)::

    1×1 conv 256→64 + BN + GELU                                 stride 16
    depthwise-separable block (dw 3×3, 1×1 64→64, BN, GELU)     stride 16 (context)
    2× bilinear upsample                                       stride 8
    depthwise-separable block                                   stride 8
    heat: 1×1 conv 64→1 (bias initialised to the prior 0.1)    point-confidence logits
    box:  1×1 conv 64→4, softplus                               l, t, r, b ≥ 0 in units of the stride

Coordinates. Input-frame pixels (the resized, padded S×S model input), continuous with pixel ``x`` spanning
``[x, x+1)``. Output cell ``(i, j)`` has its centre at ``((j + 0.5)·stride, (i + 0.5)·stride)`` as (x, y);
its box is ``XYXY = (cx − l·stride, cy − t·stride, cx + r·stride, cy + b·stride)``. A mask's tight box is
``(x_min, y_min, x_max + 1, y_max + 1)`` over its pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..masks import InvalidMaskError, box_nms

__all__ = [
    "AutoPPNConfig",
    "AutoPPN",
    "AutoPPNOutput",
    "AutoPPNTargets",
    "ProposalConfig",
    "Proposals",
    "heatmap_target",
    "heatmap_target_with_owner",
    "build_autoppn_targets",
    "ltrb_to_boxes",
    "boxes_to_ltrb",
    "cell_centres",
    "decode_proposals",
]


@dataclass(frozen=True)
class AutoPPNConfig:
    """Layout of the :class:`AutoPPN` head (an assumption; see the module docstring).

    Attributes:
        hidden_channels: width of the head.
        blocks_before_upsample: depthwise-separable blocks at stride 16.
        blocks_after_upsample: depthwise-separable blocks after the upsample.
        upsample: 2 (outputs at stride 8, the default) or 1 (stride 16, cheaper, coarse for small masks).
        prior: initial point confidence everywhere (sets the heat bias to ``logit(prior)``).
    """

    hidden_channels: int = 64
    blocks_before_upsample: int = 1
    blocks_after_upsample: int = 1
    upsample: int = 2
    prior: float = 0.1

    def __post_init__(self) -> None:
        if self.hidden_channels <= 0 or self.blocks_before_upsample < 0 or self.blocks_after_upsample < 0:
            raise ValueError(f"AutoPPN needs hidden_channels > 0 and non-negative block counts, got {self}")
        if self.upsample not in (1, 2):
            raise ValueError(f"upsample must be 1 or 2, got {self.upsample}")
        if not 0.0 < self.prior < 1.0:
            raise ValueError(f"prior must be in (0, 1), got {self.prior}")

    @classmethod
    def tiny(cls) -> AutoPPNConfig:
        """A very small head for fast tests."""
        return cls(hidden_channels=8)


class AutoPPNOutput(NamedTuple):
    """Dense AutoPPN predictions on the stride grid (H' = h·upsample for a B×C×h×w embedding).

    Attributes:
        heat_logits: B×1×H'×W' float, point-confidence logits (sigmoid gives the score).
        box_ltrb: B×4×H'×W' float ≥ 0, distances (left, top, right, bottom) from each cell centre to its box
            edges, in units of :attr:`AutoPPN.stride` input pixels.
    """

    heat_logits: torch.Tensor
    box_ltrb: torch.Tensor


def _separable_block(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
        nn.Conv2d(channels, channels, 1, bias=False),
        nn.BatchNorm2d(channels),
        nn.GELU(),
    )


class AutoPPN(nn.Module):
    """Dense point-confidence and box head on the image embedding.

    Args:
        embed_dim: channels of the image embedding (256 for Lite-SAM).
        cfg: head layout.

    Attributes:
        stride: input pixels per output cell: 16 / ``cfg.upsample`` (8 by default).
    """

    def __init__(self, embed_dim: int = 256, cfg: AutoPPNConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or AutoPPNConfig()
        hidden = cfg.hidden_channels
        self.cfg = cfg
        self.embed_dim = embed_dim
        self.stride = 16 // cfg.upsample
        self.reduce = nn.Sequential(
            nn.Conv2d(embed_dim, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.GELU()
        )
        self.context = nn.Sequential(*(_separable_block(hidden) for _ in range(cfg.blocks_before_upsample)))
        self.refine = nn.Sequential(*(_separable_block(hidden) for _ in range(cfg.blocks_after_upsample)))
        self.heat = nn.Conv2d(hidden, 1, 1)
        self.box = nn.Conv2d(hidden, 4, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for head in (self.heat, self.box):
            nn.init.normal_(head.weight, std=0.01)
        nn.init.constant_(self.heat.bias, math.log(cfg.prior / (1.0 - cfg.prior)))
        nn.init.constant_(self.box.bias, math.log(math.e - 1.0))  # softplus(bias) = 1 stride

    def forward(self, embedding: torch.Tensor) -> AutoPPNOutput:
        """Predict the heat logits and box distances.

        Args:
            embedding: B×embed_dim×h×w float image embedding (stride 16).
        Returns:
            :class:`AutoPPNOutput` on the stride grid (H'×W' = h·upsample × w·upsample).
        """
        if embedding.dim() != 4 or embedding.shape[1] != self.embed_dim:
            raise ValueError(
                f"AutoPPN expects a B×{self.embed_dim}×h×w embedding, got {tuple(embedding.shape)}"
            )
        x = self.context(self.reduce(embedding))
        if self.cfg.upsample != 1:
            x = F.interpolate(x, scale_factor=self.cfg.upsample, mode="bilinear", align_corners=False)
        x = self.refine(x)
        return AutoPPNOutput(self.heat(x), F.softplus(self.box(x)))


# --------------------------------------------------------------------------------------------------------
# Training targets (supplement Listing 1.1, corrected as in design notes §3.2)


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


# --------------------------------------------------------------------------------------------------------
# Geometry and decoding


def cell_centres(rows: int, cols: int, stride: int, device: torch.device | str | None = None) -> torch.Tensor:
    """rows×cols×2 float32 cell centres (x, y) in input pixels: ``((j + 0.5)·stride, (i + 0.5)·stride)``."""
    ys = (torch.arange(rows, dtype=torch.float32, device=device) + 0.5) * stride
    xs = (torch.arange(cols, dtype=torch.float32, device=device) + 0.5) * stride
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)


def ltrb_to_boxes(centres: torch.Tensor, ltrb: torch.Tensor, stride: float) -> torch.Tensor:
    """XYXY boxes ``(cx − l·s, cy − t·s, cx + r·s, cy + b·s)`` from …×2 centres (x, y) and …×4 ltrb (stride units)."""
    scaled = ltrb * stride
    return torch.cat([centres - scaled[..., :2], centres + scaled[..., 2:]], dim=-1)


def boxes_to_ltrb(centres: torch.Tensor, boxes: torch.Tensor, stride: float) -> torch.Tensor:
    """Inverse of :func:`ltrb_to_boxes`: …×4 ltrb in stride units of XYXY ``boxes`` about ``centres`` (x, y)."""
    return torch.cat([centres - boxes[..., :2], boxes[..., 2:] - centres], dim=-1) / stride


@dataclass(frozen=True)
class ProposalConfig:
    """How :func:`decode_proposals` turns AutoPPN maps into prompts (ASSUMPTION defaults, notes §3.5).

    Attributes:
        score_threshold: minimum point confidence (sigmoid of the heat logit) of a proposal.
        top_k: maximum number of proposals returned per image, after NMS (paper-notes: 100 at 640, 200 at 1024).
        nms_iou: proposals whose box IoU with a better-scored proposal is above this are dropped
            (1.0 disables NMS).
        pre_nms_top_k: at most this many peaks (the best-scored) enter NMS; bounds its N×N cost.
    """

    score_threshold: float = 0.3
    top_k: int = 100
    nms_iou: float = 0.7
    pre_nms_top_k: int = 1000

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.top_k < 0 or self.pre_nms_top_k < 0:
            raise ValueError(f"top_k and pre_nms_top_k must be >= 0, got {self.top_k}, {self.pre_nms_top_k}")
        if not 0.0 <= self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in [0, 1], got {self.nms_iou}")


@dataclass
class Proposals:
    """Prompt proposals of one image, sorted by descending score (torch tensors on the maps' device).

    Attributes:
        points: N×2 float32 (x, y) cell centres, input-frame pixels.
        boxes: N×4 float32 XYXY, input-frame pixels, clipped to the valid (unpadded) region.
        scores: N float32 point confidences in [0, 1].
    """

    points: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def decode_proposals(
    out: AutoPPNOutput,
    valid_size: tuple[int, int],
    stride: int,
    cfg: ProposalConfig | None = None,
) -> list[Proposals]:
    """Point and box prompts from AutoPPN maps, one :class:`Proposals` per batch item.

    Steps: sigmoid of the heat; cells whose centre lies outside the valid region are dropped; a cell is a peak
    if it equals the maximum of its 3×3 neighbourhood and its score is ≥ ``score_threshold``; at most
    ``pre_nms_top_k`` peaks by score; boxes from the ltrb distances about the cell centres, clipped to
    ``[0, w] × [0, h]``; greedy box NMS at ``nms_iou``; the best ``top_k``.

    Args:
        out: AutoPPN output (B×1×H'×W' heat logits, B×4×H'×W' ltrb).
        valid_size: (h, w) of the resized image inside the padded input, input pixels (same for the batch).
        stride: input pixels per cell (``AutoPPN.stride``).
        cfg: thresholds (defaults: :class:`ProposalConfig`).
    Returns:
        A list of B :class:`Proposals`, each sorted by descending score, with at most ``top_k`` entries.
    """
    cfg = cfg or ProposalConfig()
    heat, ltrb = out.heat_logits, out.box_ltrb
    if heat.dim() != 4 or heat.shape[1] != 1 or ltrb.shape != (heat.shape[0], 4, *heat.shape[2:]):
        raise ValueError(
            f"expected heat B×1×H×W and box_ltrb B×4×H×W, got {tuple(heat.shape)} and {tuple(ltrb.shape)}"
        )
    h_valid, w_valid = (int(v) for v in valid_size)
    if h_valid <= 0 or w_valid <= 0 or stride <= 0:
        raise ValueError(f"valid_size and stride must be positive, got {valid_size} and {stride}")
    rows, cols = heat.shape[2:]
    centres = cell_centres(rows, cols, stride, heat.device)
    inside = (centres[..., 0] < w_valid) & (centres[..., 1] < h_valid)

    scores = torch.sigmoid(heat.float())[:, 0]
    scores = torch.where(inside, scores, torch.zeros_like(scores))
    peaks = scores == F.max_pool2d(scores[:, None], 3, stride=1, padding=1)[:, 0]
    peaks &= inside & (scores >= cfg.score_threshold)
    limit = torch.tensor([w_valid, h_valid, w_valid, h_valid], dtype=torch.float32, device=heat.device)

    results = []
    for b in range(heat.shape[0]):
        flat = torch.nonzero(peaks[b].flatten()).flatten()
        values = scores[b].flatten()[flat]
        order = torch.sort(values, descending=True, stable=True).indices[: cfg.pre_nms_top_k]
        flat, values = flat[order], values[order]
        points = centres.reshape(-1, 2)[flat]
        cell_ltrb = ltrb[b].float().flatten(1).t()[flat]
        boxes = torch.minimum(ltrb_to_boxes(points, cell_ltrb, stride).clamp(min=0.0), limit)
        if len(flat) and cfg.nms_iou < 1.0:
            keep = box_nms(boxes, values, cfg.nms_iou)
        else:
            keep = torch.arange(len(flat), device=heat.device)
        keep = keep[: cfg.top_k]
        results.append(
            Proposals(points[keep].contiguous(), boxes[keep].contiguous(), values[keep].contiguous())
        )
    return results
