"""SAM's ViT image encoder (ViT-B / ViT-L / ViT-H), under the state-dict names of Meta's checkpoints.

Layout (Kirillov et al. 2023, "Segment Anything", §3 and appendix A): a 16×16 patch embedding to an
``S/16 × S/16`` token grid plus a learned absolute position embedding; ``depth`` pre-norm transformer blocks
whose attention is windowed (14×14 windows, the grid zero-padded to a multiple of 14 *after* the block's first
LayerNorm, padded tokens attended to like the others) except in four evenly spaced global blocks; every
attention adds decomposed relative-position terms (MViTv2): for a query at (y, x) and a key at (y', x') the
logit gains ``q·R_h[y − y'] + q·R_w[x − x']`` with the *unscaled* query; then SAM's neck to 256 channels.

Tokens stay channels-last (B×H×W×C) between blocks, as in the reference. Names: ``patch_embed.proj``,
``pos_embed`` (1×S/16×S/16×C), ``blocks.i.{norm1,attn.qkv,attn.proj,attn.rel_pos_h,attn.rel_pos_w,norm2,
mlp.lin1,mlp.lin2}``, ``neck.0``–``neck.3``.

Inference path: the attention logits are computed a few heads at a time, so that the N×N block (4096×4096 in
a global block at 1024) stays within :data:`ATTENTION_CHUNK_BYTES`, and the relative-position terms are
added to it in place. On this project's CPUs this is about 1.5× faster than the reference's out-of-place
sums over all heads at once, and also faster than ``scaled_dot_product_attention`` with the terms as a
mask (measured in bench/engines.py's notes); outputs are the reference's to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .autoppn import AutoPPN
from .common import MLPBlock
from .engine import EngineEncoder, sam_neck, window_partition, window_unpartition

__all__ = ["SamViTConfig", "SamViT", "relative_position_terms"]

#: Largest (heads × N × N) float32 block of attention logits built at once (256 MiB).
ATTENTION_CHUNK_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class SamViTConfig:
    """Hyper-parameters of one SAM ViT encoder (defaults: ViT-B, as in ``build_sam_vit_b``).

    Attributes:
        embed_dim: token channels C.
        depth: number of transformer blocks.
        num_heads: attention heads per block (head width C / num_heads).
        global_attn_indexes: blocks with global attention; the others use windows.
        window_size: side of the attention windows, in tokens.
        patch_size: pixels per token side.
        mlp_ratio: MLP hidden width / C.
        out_chans: embedding channels after the neck.
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    patch_size: int = 16
    mlp_ratio: float = 4.0
    out_chans: int = 256

    @classmethod
    def vit_b(cls) -> SamViTConfig:
        return cls()

    @classmethod
    def vit_l(cls) -> SamViTConfig:
        return cls(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23))

    @classmethod
    def vit_h(cls) -> SamViTConfig:
        return cls(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31))

    @classmethod
    def tiny(cls) -> SamViTConfig:
        """A two-block, 64-channel layout (one windowed, one global block) for fast tests; not a SAM model."""
        return cls(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,))


def relative_position_terms(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decomposed relative-position logits of a square-window attention (queries and keys on the same grid).

    Args:
        q: B×N×d unscaled queries, N = H·W in row-major order.
        rel_pos_h: (2H − 1)×d table; row ``dy + H − 1`` holds the term for a vertical offset dy = y − y'.
        rel_pos_w: (2W − 1)×d table for horizontal offsets.
        size: (H, W) of the token grid.
    Returns:
        (B×H×W×H ``q·R_h[y − y']``, B×H×W×W ``q·R_w[x − x']``) for query (y, x) and key row y' / column x';
        the logit of key (y', x') gains the sum of the two.
    """
    h, w = size
    offsets_h = torch.arange(h, device=q.device)[:, None] - torch.arange(h, device=q.device)[None, :] + (h - 1)
    offsets_w = torch.arange(w, device=q.device)[:, None] - torch.arange(w, device=q.device)[None, :] + (w - 1)
    r_q = q.reshape(q.shape[0], h, w, q.shape[-1])
    rel_h = torch.einsum("byxc,ykc->byxk", r_q, rel_pos_h[offsets_h])
    rel_w = torch.einsum("byxc,xkc->byxk", r_q, rel_pos_w[offsets_w])
    return rel_h, rel_w


class Attention(nn.Module):
    """Multi-head self-attention with decomposed relative positions on an H×W grid: B×H×W×C in and out.

    Args:
        dim: channels C.
        num_heads: heads (width d = C / num_heads).
        grid: (H, W) the relative-position tables are sized for (the window, or the whole token grid).
    """

    def __init__(self, dim: int, num_heads: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        n = h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, n, -1).unbind(0)  # each (B·heads)×N×d
        rows = q.shape[0]
        step = max(1, min(rows, ATTENTION_CHUNK_BYTES // (4 * n * n)))
        out = torch.empty_like(q)
        for start in range(0, rows, step):
            part = slice(start, start + step)
            logits = torch.bmm(q[part] * self.scale, k[part].transpose(1, 2))  # rows×N×N
            rel_h, rel_w = relative_position_terms(q[part], self.rel_pos_h, self.rel_pos_w, (h, w))
            grid = logits.view(-1, h, w, h, w)
            grid.add_(rel_h[..., :, None]).add_(rel_w[..., None, :])
            torch.bmm(logits.softmax(dim=-1), v[part], out=out[part])
        out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block, windowed (``window > 0``) or global (``window == 0``): B×H×W×C in and out."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, grid if window == 0 else (window, window))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window > 0:
            size = (x.shape[1], x.shape[2])
            windows, padded = window_partition(x, self.window)
            x = window_unpartition(self.attn(windows), self.window, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """B×3×S×S → B×S/p×S/p×C tokens (a p×p, stride-p convolution ``proj``, channels moved last)."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class SamViT(EngineEncoder):
    """SAM's ViT image encoder: B×3×S×S normalised input → B×256×S/16×S/16 embedding (see the module docstring).

    Args:
        cfg: layout (:meth:`SamViTConfig.vit_b`, ``vit_l``, ``vit_h``).
        img_size: side S of the model input; the position embedding and global relative-position tables are
            sized for its S/16 grid (1024 → 64×64 for the official checkpoints).
        autoppn: optional proposal head.
    """

    def __init__(self, cfg: SamViTConfig, img_size: int = 1024, autoppn: AutoPPN | None = None) -> None:
        super().__init__(img_size, autoppn)
        self.cfg = cfg
        grid = (img_size // cfg.patch_size, img_size // cfg.patch_size)
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, *grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                cfg.embed_dim,
                cfg.num_heads,
                cfg.mlp_ratio,
                window=0 if i in cfg.global_attn_indexes else cfg.window_size,
                grid=grid,
            )
            for i in range(cfg.depth)
        )
        self.neck = sam_neck(cfg.embed_dim, cfg.out_chans)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
