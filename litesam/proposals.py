"""AutoPPN proposals: point and box prompts decoded from the AutoPPN maps, for SegEvery and the predictor.

The decoding (peaks of the point confidence, their boxes, NMS, top-K) is this project's ASSUMPTION (design
notes §3.5). Coordinates are input-frame pixels, as in :mod:`litesam.modeling.autoppn`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .masks import box_nms
from .modeling.autoppn import AutoPPNOutput, cell_centres, ltrb_to_boxes


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

