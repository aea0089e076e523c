"""LiteViT's fused inference path: :func:`fuse_for_inference` and the fused stem and blocks it puts in.

:func:`fuse_for_inference` folds every BatchNorm, LayerNorm affine and layer-scale into the adjacent convolutions and linear layers, and replaces the blocks by fused versions that keep the outputs
equal (to float rounding): the whole mixer step becomes one depthwise 7×7 convolution with a fixed kernel (the
mixture of the three boxes, the residual and both folded scales) plus a correction of the 3-pixel border band,
and the per-pixel MLP runs in chunks of pixels so its 4C-wide hidden activations stay in the CPU cache, with
GELU applied in place. Feature maps are kept in ``channels_last`` memory format throughout (pooling and
per-pixel layers are several times faster in it on a CPU). The whole fused encoder is about 2× faster than
the library's own unfused build (``build_model(fuse=False)``; ``bench/segevery.py`` measures the ratio).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from .litevit import AttentionBlock, LiteViT, PoolBlock, attend

#: Pixels of the MLP hidden activation computed at once by fused blocks: 1024 px keep a 4C-wide chunk in
#: cache (measured fastest among 512–8192 at 640 and 1024 on the 2-core CPU).
_MLP_CHUNK_PIXELS = 1024


@torch.no_grad()
def fuse_for_inference(model: LiteViT) -> LiteViT:
    """Fold normalisations and layer-scales and switch ``model`` to the fused blocks, in place; returns it.

    The outputs stay equal to the unfused model's in eval mode (up to float rounding). The fused model is for
    inference only: it has no trainable parameters left in the folded parts, and its state dict no longer
    matches checkpoints of the unfused model, so load weights *before* fusing. Idempotent.
    """
    if model.fused:
        return model
    model.eval()
    model.stem = FusedStem(model.stem)
    for stage in model.stages:
        if isinstance(stage.downsample, nn.Sequential):
            stage.downsample = _fold_bn_into_conv(*stage.downsample)
        stage.blocks = nn.Sequential(*(_fused_block(block) for block in stage.blocks))
    for p in model.parameters():
        p.requires_grad_(False)
    model.fused = True
    return model.eval()


def _fused_block(block: nn.Module) -> nn.Module:
    """The inference-only equivalent of a LiteViT block (BatchNorm in eval mode, no drop-path)."""
    if isinstance(block, PoolBlock):
        return FusedPoolBlock(block)
    if isinstance(block, AttentionBlock):
        return FusedAttentionBlock(block)
    raise TypeError(f"no fused form of {type(block).__name__}")


def _fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution (with bias) equal to ``bn(conv(x))`` with the BatchNorm in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
    ).to(conv.weight)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) with ``bn(x) == a * x + b`` per channel in eval mode."""
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return a, bn.bias - bn.running_mean * a


class FusedPoolBlock(nn.Module):
    """Inference form of :class:`PoolBlock`; equal outputs, fewer memory passes. Made by :func:`fuse_for_inference`.

    With ``a, b`` the eval-mode BatchNorm scale and shift, ``P(a·x + b) − (a·x + b) = a·(P(x) − x)`` because
    ``P`` is linear and preserves constants, so norm1 and ls1 reduce to one per-channel factor ``c`` and the
    mixer step ``x + c·(P(x) − x)`` is one depthwise convolution (kernel ``c·K`` plus ``1 − c`` at the centre)
    away from the border; the 3-pixel border band is then corrected for the renormalisation of ``P`` on small
    slices. norm2 folds into fc1 and ls2 into fc2; fc2's bias is added in the mixer convolution (and taken out
    again through fc1's bias), so the MLP's residual sum is a single ``addmm``.
    """

    def __init__(self, block: PoolBlock) -> None:
        super().__init__()
        with torch.no_grad():
            a1, _ = _bn_scale_shift(block.norm1)
            c = block.ls1 * a1
            a2, b2 = _bn_scale_shift(block.norm2)
            w1 = block.mlp.fc1.weight * a2[None, :]
            b1 = block.mlp.fc1.bias + block.mlp.fc1.weight @ b2
            w2 = block.mlp.fc2.weight * block.ls2[:, None]
            out_bias = block.mlp.fc2.bias * block.ls2
            b1 = b1 - w1 @ out_bias
            kernel = block.mixer.kernel
            dim, size = c.shape[0], kernel.shape[-1]
            scaled = kernel * c.view(dim, 1, 1, 1)
            with_identity = scaled.clone()
            with_identity[:, 0, size // 2, size // 2] += 1.0 - c
            self.register_buffer("mix_kernel", with_identity.contiguous())
            self.register_buffer("mix_bias", out_bias.contiguous())
            self.register_buffer("scaled_kernel", scaled.contiguous())
            self.register_buffer("pool_kernel", kernel.clone(), persistent=False)
            self.register_buffer("w1", w1.contiguous())
            self.register_buffer("b1", b1.contiguous())
            self.register_buffer("w2", w2.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.contiguous(memory_format=torch.channels_last)
        pad = self.mix_kernel.shape[-1] // 2
        y = F.conv2d(x, self.mix_kernel, self.mix_bias, padding=pad, groups=c)
        _renormalise_border(y, x, self.scaled_kernel, self.pool_kernel)
        tokens = y.permute(0, 2, 3, 1).reshape(b * h * w, c)
        return _chunked_mlp_residual(tokens, self.w1, self.b1, self.w2).view(b, h, w, c).permute(0, 3, 1, 2)


def _renormalise_border(y: torch.Tensor, x: torch.Tensor, scaled: torch.Tensor, kernel: torch.Tensor) -> None:
    """Add ``S·(1/m − 1)`` to ``y`` in place where the window leaves the image (the border band).

    ``S`` is the zero-padded depthwise convolution of ``x`` with ``scaled`` (C×1×k×k), ``m`` the mass of the
    1×1×k×k ``kernel`` inside the image (1 in the interior). Each band is computed on a slice of ``x`` that
    extends ``k // 2`` pixels beyond it, so the slice's cut edges never reach the band.
    """
    pad = kernel.shape[-1] // 2
    h, w = x.shape[-2:]
    if h > 2 * pad and w > 2 * pad:
        bands = ((0, pad, 0, w), (h - pad, h, 0, w), (pad, h - pad, 0, pad), (pad, h - pad, w - pad, w))
    else:
        bands = ((0, h, 0, w),)
    for r0, r1, c0, c1 in bands:
        i0, i1, j0, j1 = max(r0 - pad, 0), min(r1 + pad, h), max(c0 - pad, 0), min(c1 + pad, w)
        part = x[:, :, i0:i1, j0:j1]
        summed = F.conv2d(part, scaled, padding=pad, groups=x.shape[1])
        mass = F.conv2d(part.new_ones(1, 1, i1 - i0, j1 - j0), kernel, padding=pad)
        rows, cols = slice(r0 - i0, r1 - i0), slice(c0 - j0, c1 - j0)
        factor = mass[:, :, rows, cols].reciprocal() - 1.0
        y[:, :, r0:r1, c0:c1].addcmul_(summed[:, :, rows, cols], factor)


def _gelu_(x: torch.Tensor) -> torch.Tensor:
    """GELU (erf form) in place: no second buffer, which matters for maps above glibc's 32 MiB mmap limit."""
    return torch.ops.aten.gelu_(x)


class FusedStem(nn.Module):
    """Inference form of the stem: BatchNorms folded into the two convolutions, GELU in place."""

    def __init__(self, stem: nn.Sequential) -> None:
        super().__init__()
        first, _, second = stem
        self.conv1 = _fold_bn_into_conv(*first)
        self.conv2 = _fold_bn_into_conv(*second)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(_gelu_(self.conv1(x)))


def _chunked_mlp_residual(tokens: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """``tokens + GELU(tokens @ w1.T + b1) @ w2.T`` for N×C tokens (``w1``: 4C×C, ``w2``: C×4C), in chunks of
    pixels, on the process's float32 kernel (:mod:`litesam.kernels`)."""
    out = torch.empty_like(tokens)
    for start in range(0, tokens.shape[0], _MLP_CHUNK_PIXELS):
        part = tokens[start : start + _MLP_CHUNK_PIXELS]
        out[start : start + _MLP_CHUNK_PIXELS] = kernels.linear_residual(kernels.linear_gelu(part, w1, b1), w2, part)
    return out


class FusedAttentionBlock(nn.Module):
    """Inference form of :class:`AttentionBlock`; equal outputs. Made by :func:`fuse_for_inference`.

    The residual of the positional encoding joins its kernel (identity tap at the centre); LayerNorm affines
    fold into ``qkv`` and fc1; layer-scales fold into ``proj`` and fc2.
    """

    def __init__(self, block: AttentionBlock) -> None:
        super().__init__()
        with torch.no_grad():
            dim = block.pos.in_channels
            pos_w = block.pos.weight.clone()
            pos_w[:, 0, 1, 1] += 1.0
            self.register_buffer("pos_w", pos_w)
            self.register_buffer("pos_b", block.pos.bias.clone())
            g1, be1 = block.norm1.weight, block.norm1.bias
            qkv = block.attn.qkv
            self.register_buffer("qkv_w", qkv.weight * g1[None, :])
            self.register_buffer("qkv_b", qkv.bias + qkv.weight @ be1)
            proj = block.attn.proj
            self.register_buffer("proj_w", proj.weight * block.ls1[:, None])
            self.register_buffer("proj_b", proj.bias * block.ls1)
            g2, be2 = block.norm2.weight, block.norm2.bias
            fc1 = block.mlp_fc1
            self.register_buffer("w1", (fc1.weight * g2[None, :]).contiguous())
            self.register_buffer("b1", fc1.bias + fc1.weight @ be2)
            fc2 = block.mlp_fc2
            self.register_buffer("w2", (fc2.weight * block.ls2[:, None]).contiguous())
            self.register_buffer("b2", fc2.bias * block.ls2)
        self.dim = dim
        self.num_heads = block.attn.num_heads
        self.eps1 = block.norm1.eps
        self.eps2 = block.norm2.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = F.conv2d(x, self.pos_w, self.pos_b, padding=1, groups=c).contiguous(
            memory_format=torch.channels_last
        )
        t = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
        qkv = kernels.linear(F.layer_norm(t, (c,), eps=self.eps1), self.qkv_w, self.qkv_b)
        attended = attend(qkv.view(b, h * w, 3 * c), self.num_heads).reshape(b * h * w, c)
        t = kernels.linear_residual(attended, self.proj_w, t).add_(self.proj_b)
        hidden = kernels.linear_gelu(F.layer_norm(t, (c,), eps=self.eps2), self.w1, self.b1)
        t = kernels.linear_residual(hidden, self.w2, t).add_(self.b2)
        return t.view(b, h, w, c).permute(0, 3, 1, 2)
