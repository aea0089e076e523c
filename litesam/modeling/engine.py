"""What the SAM-family image encoders ("engines": SAM ViT-B/L/H, MobileSAM's TinyViT) share.

An engine is a drop-in :attr:`LiteSAM.image_encoder`: called on a normalised, padded B×3×S×S batch it returns
``(embedding B×256×S/16×S/16, AutoPPN output or None)``, like Lite-SAM's own encoder. Official checkpoints
carry no AutoPPN head, so ``autoppn`` is None unless a checkpoint brings one (``image_encoder.autoppn.*``
keys, e.g. a head distilled for that engine); SegEvery then uses SAM's point grid.

Both families end in SAM's neck (state-dict names ``neck.0`` … ``neck.3``), built by :func:`sam_neck`, and
split their token grid into windows alike (:func:`window_partition`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .autoppn import AutoPPN, AutoPPNOutput
from .common import LayerNorm2d

__all__ = ["sam_neck", "window_partition", "window_unpartition", "EngineEncoder"]


def sam_neck(in_chans: int, out_chans: int = 256) -> nn.Sequential:
    """SAM's neck, B×in_chans×h×w → B×out_chans×h×w: 1×1 conv, LayerNorm2d, 3×3 conv, LayerNorm2d (no biases)."""
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, 1, bias=False),
        LayerNorm2d(out_chans),
        nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
        LayerNorm2d(out_chans),
    )


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """B×H×W×C → (B·nW)×window×window×C windows, the grid zero-padded at the bottom/right to multiples of
    ``window``; also returns the padded (Hp, Wp)."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c).transpose(2, 3)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B·nW)×window×window×C → B×H×W×C, padding dropped."""
    hp, wp = padded
    h, w = size
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1).transpose(2, 3).reshape(b, hp, wp, -1)
    return x[:, :h, :w].contiguous() if (hp, wp) != (h, w) else x


class EngineEncoder(nn.Module):
    """Base of the engines: each subclass defines ``embed(x)``, B×3×S×S normalised input → B×256×S/16×S/16
    embedding; this class adds the optional AutoPPN head.

    Args:
        img_size: side S of the square model input, in pixels (1024 for the official checkpoints).
        autoppn: a proposal head on the embedding, or None.
    """

    def __init__(self, img_size: int, autoppn: AutoPPN | None = None) -> None:
        super().__init__()
        if img_size <= 0 or img_size % 16:
            raise ValueError(f"img_size must be a positive multiple of 16, got {img_size}")
        self.img_size = img_size
        self.autoppn = autoppn
        #: True once :meth:`fuse_for_inference` changed the layers (the state dict then no longer has official names).
        self.fused = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, AutoPPNOutput | None]:
        """Encode a normalised, zero-padded B×3×S×S batch → (contiguous embedding, AutoPPN output or None)."""
        embedding = self.embed(x).contiguous()
        return embedding, None if self.autoppn is None else self.autoppn(embedding)

    def fuse_for_inference(self) -> EngineEncoder:
        """Switch to eval mode for serving; engines with inference-only rewrites (TinyViT) extend this."""
        return self.eval()
