"""MobileSAM's image encoder: TinyViT-5M (Wu et al. 2022) with SAM's neck, under MobileSAM's state-dict names.

Layout at input S (MobileSAM: S = 1024, dims 64/128/160/320, depths 2/2/6/2, heads 2/4/5/10, windows 7/7/14/7):

- ``patch_embed.seq``: two stride-2 3×3 conv+BN layers with a GELU between: S/4 × S/4 × 64;
- ``layers.0``: MBConv blocks (1×1 expand ×4, 3×3 depthwise, 1×1 project, residual, GELU after the sum);
- ``layers.1``–``layers.3``: TinyViT blocks on tokens: windowed attention (the grid zero-padded to whole windows
  *before* the attention's own LayerNorm, padded tokens attended to like the others) with a learned bias per
  head and per (|dy|, |dx|) offset, residual; a 3×3 depthwise conv+BN *without* residual; a pre-norm MLP with
  residual;
- after layers 0–2 a patch merging (1×1 conv+BN, GELU, 3×3 depthwise conv+BN of stride 2 — stride 1 into the
  last stage, as MobileSAM keeps the grid at S/16 — GELU, 1×1 conv+BN), then SAM's neck.

Every conv+BN pair is a ``Conv2dBN`` with children ``c`` and ``bn`` (MobileSAM's ``Conv2d_BN``). Official
checkpoints also hold TinyViT's ImageNet classifier (``norm_head``, ``head``), which the SAM encoder never
calls: this module has no such layers and the loader drops those keys (:data:`UNUSED_KEYS`).

Inference path (:meth:`TinyViT.fuse_for_inference`): each BN is folded into its convolution. Attention is
computed directly (logits, bias and scale in one ``baddbmm``): for 7×7 windows this is about twice as fast
on this project's CPUs as ``scaled_dot_product_attention`` with the biases as a mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .autoppn import AutoPPN
from .engine import EngineEncoder, sam_neck, window_partition, window_unpartition

__all__ = ["TinyViTConfig", "TinyViT", "Conv2dBN", "UNUSED_KEYS"]

#: Key prefixes of an official MobileSAM checkpoint that the SAM encoder does not use (TinyViT's classifier).
UNUSED_KEYS = ("image_encoder.norm_head.", "image_encoder.head.")


@dataclass(frozen=True)
class TinyViTConfig:
    """Hyper-parameters of a TinyViT encoder (defaults: MobileSAM's TinyViT-5M).

    Attributes:
        embed_dims: channels of the four stages.
        depths: blocks per stage (stage 0 is MBConv, stages 1–3 attention).
        num_heads: attention heads of stages 1–3 (index 0 unused, kept to mirror the reference's lists).
        window_sizes: attention window side per stage, in tokens (index 0 unused).
        merge_strides: stride of the patch merging after stages 0, 1 and 2.
        mlp_ratio: MLP hidden width / channels.
        mbconv_expand_ratio: MBConv hidden width / channels.
        local_conv_size: kernel of the depthwise conv between attention and MLP.
        out_chans: embedding channels after the neck.
    """

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    merge_strides: tuple[int, ...] = (2, 2, 1)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    out_chans: int = 256


class Conv2dBN(nn.Module):
    """A bias-free convolution ``c`` followed by BatchNorm ``bn``: B×in×H×W → B×out×H'×W'."""

    def __init__(self, in_chans: int, out_chans: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))

    @torch.no_grad()
    def folded(self) -> nn.Conv2d:
        """One convolution with bias equal to ``bn(c(x))`` in eval mode (running statistics folded in)."""
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        conv = nn.Conv2d(
            self.c.in_channels,
            self.c.out_channels,
            self.c.kernel_size,
            self.c.stride,
            self.c.padding,
            groups=self.c.groups,
            device=self.c.weight.device,
            dtype=self.c.weight.dtype,
        )
        conv.weight.copy_(self.c.weight * scale[:, None, None, None])
        conv.bias.copy_(self.bn.bias - self.bn.running_mean * scale)
        return conv


class MBConv(nn.Module):
    """Inverted residual: ``gelu(x + conv3(gelu(conv2(gelu(conv1(x))))))``, B×C×H×W in and out."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(x + self.conv3(y))


class PatchMerging(nn.Module):
    """B×C×H×W feature map or B×(H·W)×C tokens on an (H, W) grid → B×(H'·W')×C' tokens (H' = H / stride)."""

    def __init__(self, grid: tuple[int, int], dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.grid = grid
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x.transpose(1, 2).reshape(x.shape[0], -1, *self.grid)
        x = self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Pre-norm multi-head attention over the tokens of one window, with a learned bias per head and per
    (|dy|, |dx|) offset: B×N×C in and out, N = window².

    ``qkv`` lays each head's query, key and value out next to each other (head-major), as TinyViT does.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        y, x = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        y, x = y.flatten(), x.flatten()
        # Offset (|dy|, |dx|) has column |dy|·window + |dx| of the bias table (the order TinyViT numbers them in).
        index = (y[:, None] - y[None, :]).abs() * window + (x[:, None] - x[None, :]).abs()
        self.register_buffer("attention_bias_idxs", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=3)  # each B×heads×N×d
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)  # heads×N×N
        logits = torch.baddbmm(
            bias.expand(b, -1, -1, -1).flatten(0, 1),
            q.flatten(0, 1),
            k.flatten(0, 1).transpose(1, 2),
            alpha=self.head_dim**-0.5,
        )
        out = torch.bmm(logits.softmax(dim=-1), v.flatten(0, 1)).view(b, self.num_heads, n, -1)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    """Pre-norm MLP ``fc2(gelu(fc1(norm(x))))`` on the last axis (… × C in and out)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention, depthwise conv, MLP on B×(H·W)×C tokens of an (H, W) grid (see the module docstring)."""

    def __init__(self, dim: int, grid: tuple[int, int], num_heads: int, window: int, cfg: TinyViTConfig) -> None:
        super().__init__()
        self.grid = grid
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, cfg.local_conv_size, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h, w = self.grid
        windows, padded = window_partition(x.view(b, h, w, c), self.window)
        attended = self.attn(windows.view(-1, self.window * self.window, c))
        attended = window_unpartition(attended.view_as(windows), self.window, padded, (h, w))
        x = x + attended.view(b, n, c)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class Stage(nn.Module):
    """``blocks`` then an optional ``downsample`` (patch merging): TinyViT's ``ConvLayer`` / ``BasicLayer``."""

    def __init__(self, blocks: list[nn.Module], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed(nn.Module):
    """B×3×S×S → B×C×S/4×S/4: ``seq`` = Conv2dBN (stride 2) → GELU → Conv2dBN (stride 2)."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        half = embed_dim // 2
        self.seq = nn.Sequential(Conv2dBN(3, half, 3, 2), nn.GELU(), Conv2dBN(half, embed_dim, 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class TinyViT(EngineEncoder):
    """MobileSAM's image encoder: B×3×S×S normalised input → B×256×S/16×S/16 embedding.

    Args:
        cfg: layout (defaults: TinyViT-5M).
        img_size: side S of the model input (1024 for MobileSAM); must be a multiple of 16 whose S/16 grid
            the stride pattern reaches (the default strides: S/4, S/8, S/16, S/16).
        autoppn: optional proposal head.
    """

    def __init__(self, cfg: TinyViTConfig | None = None, img_size: int = 1024, autoppn: AutoPPN | None = None) -> None:
        super().__init__(img_size, autoppn)
        cfg = cfg or TinyViTConfig()
        self.cfg = cfg
        dims = cfg.embed_dims
        self.patch_embed = PatchEmbed(dims[0])
        side = img_size // 4
        stages = []
        for i, depth in enumerate(cfg.depths):
            grid = (side, side)
            if i == 0:
                blocks = [MBConv(dims[0], cfg.mbconv_expand_ratio) for _ in range(depth)]
            else:
                blocks = [TinyViTBlock(dims[i], grid, cfg.num_heads[i], cfg.window_sizes[i], cfg) for _ in range(depth)]
            downsample = None
            if i < len(cfg.depths) - 1:
                downsample = PatchMerging(grid, dims[i], dims[i + 1], cfg.merge_strides[i])
                side //= cfg.merge_strides[i]
            stages.append(Stage(blocks, downsample))
        if side != img_size // 16:
            raise ValueError(f"the stride pattern ends at a {side}×{side} grid, not S/16 = {img_size // 16}")
        self.layers = nn.ModuleList(stages)
        self.neck = sam_neck(dims[-1], cfg.out_chans)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        side = self.img_size // 16
        return self.neck(x.transpose(1, 2).reshape(x.shape[0], -1, side, side))

    def fuse_for_inference(self) -> TinyViT:
        """Fold every BatchNorm into its convolution (same outputs to float rounding); eval mode; returns ``self``.

        The fused encoder has other state-dict names: it serves predictions only, it cannot be trained or saved.
        """
        for parent in list(self.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, Conv2dBN):
                    setattr(parent, name, child.folded())
        self.fused = True
        return self.eval()
