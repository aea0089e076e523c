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

Training targets (supplement Listing 1.1) live beside the trainer (:mod:`litesam.train.autoppn_targets`),
proposal decoding beside SegEvery (:mod:`litesam.proposals`); this module holds the network and the geometry
of its outputs.

Coordinates. Input-frame pixels (the resized, padded S×S model input), continuous with pixel ``x`` spanning
``[x, x+1)``. Output cell ``(i, j)`` has its centre at ``((j + 0.5)·stride, (i + 0.5)·stride)`` as (x, y);
its box is ``XYXY = (cx − l·stride, cy − t·stride, cx + r·stride, cy + b·stride)``. A mask's tight box is
``(x_min, y_min, x_max + 1, y_max + 1)`` over its pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AutoPPNConfig",
    "AutoPPN",
    "AutoPPNOutput",
    "ltrb_to_boxes",
    "boxes_to_ltrb",
    "cell_centres",
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
# Geometry of the outputs


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

