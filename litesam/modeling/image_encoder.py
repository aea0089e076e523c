"""Lite-SAM's image encoder: LiteViT backbone, a neck to SAM's 256-channel embedding, and AutoPPN.

The supplement's complexity script (Listing 1.2) unpacks ``image_embedding, _ = image_encoder(x)``, so the
encoder returns a 2-tuple; the second element is the :class:`~litesam.modeling.autoppn.AutoPPNOutput`
(design notes §1.1, §3.3). AutoPPN reads only the embedding, so a cached embedding is enough to propose
prompts later (``ImageEncoder.autoppn(embedding)``).

Neck (ASSUMPTION, notes §2): a 1×1 convolution without bias from the backbone's channels to 256, then
LayerNorm2d, as the first two layers of SAM's ViT neck. SAM's 3×3 256→256 convolution (≈590 K parameters)
is left out to stay within the paper's 4.2 M total.
"""

from __future__ import annotations

import torch
from torch import nn

from .autoppn import AutoPPN, AutoPPNOutput
from .common import LayerNorm2d
from .litevit import LiteViT
from .litevit_fused import fuse_for_inference

__all__ = ["Neck", "ImageEncoder"]


class Neck(nn.Module):
    """``LayerNorm2d(conv1×1(x))``: B×in_chans×h×w → B×out_chans×h×w (SAM's names: ``conv``, ``norm``)."""

    def __init__(self, in_chans: int, out_chans: int = 256) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, 1, bias=False)
        self.norm = LayerNorm2d(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class ImageEncoder(nn.Module):
    """Backbone → neck → (embedding, AutoPPN output).

    Args:
        backbone: LiteViT (output stride 16).
        neck: maps the backbone's ``out_channels`` to the embedding channels.
        autoppn: proposal head on the embedding.
        img_size: side S of the square model input the model is built for (640 or 1024). Other sides that are
            multiples of 16 also run (the encoder is resolution-agnostic, e.g. for complexity counts).
    """

    def __init__(self, backbone: LiteViT, neck: Neck, autoppn: AutoPPN, img_size: int) -> None:
        super().__init__()
        if img_size <= 0 or img_size % 16:
            raise ValueError(f"img_size must be a positive multiple of 16, got {img_size}")
        self.backbone = backbone
        self.neck = neck
        self.autoppn = autoppn
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, AutoPPNOutput]:
        """Encode a normalised, padded image batch.

        Args:
            x: B×3×S×S float, normalised with the pixel mean/std and zero-padded (bottom/right) to S×S.
        Returns:
            (embedding B×256×S/16×S/16 float, contiguous; AutoPPN maps at its stride, S/8×S/8 by default).
        Raises:
            InvalidImageError: not B×3×H×W float with sides multiples of 16.
        """
        embedding = self.embed(x)
        return embedding, self.autoppn(embedding)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding alone (no AutoPPN): B×3×S×S normalised input → contiguous B×C×S/16×S/16."""
        return self.neck(self.backbone.forward_features(x)).contiguous()

    def fuse_for_inference(self) -> ImageEncoder:
        """Fuse the backbone for inference (:func:`~litesam.modeling.litevit_fused.fuse_for_inference`);
        returns ``self``."""
        fuse_for_inference(self.backbone)
        return self.eval()
