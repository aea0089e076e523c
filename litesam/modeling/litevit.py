"""LiteViT: the Lite-SAM image backbone, a MetaFormer-style CNN–Transformer hybrid with output stride 16.

Provenance. The Lite-SAM paper (Fu et al., ECCV 2024) publishes only LiteViT's totals: 1.16 M parameters and
1.2 GMACs at 224×224 for the ImageNet-1K classifier. Its main text, where the layout would be described, was
not available to this project. **The layout below is therefore an assumption**, chosen to meet those published
totals and to run fast on a CPU; it is not the paper's. Replace it if the paper's layout becomes known.

Layout (default :class:`LiteViTConfig`; ``s`` is the stride relative to the input)::

    stem      conv3×3 s2 3→32 + BN + GELU, conv3×3 s2 32→64 + BN                       s4
    stage 1   8 × PoolBlock, C=64, multi-scale pooling mixer, MLP ratio 4             s4
    stage 2   conv3×3 s2 64→80 + BN, 2 × PoolBlock, C=80                              s8
    stage 3   conv3×3 s2 80→96 + BN, 2 × AttentionBlock, C=96 (3 heads of 32)        s16
    stage 4   conv3×3 s1 96→128 + BN, 1 × AttentionBlock, C=128 (4 heads of 32)      s16
    head      global average pool, LayerNorm, Linear 128→1000 (classifier form only)

Why this shape: 1.2 GMACs on 1.16 M parameters is about 1,030 MACs per parameter at 224, while a conv or
linear weight costs one MAC per output position (3,136 at stride 4, 196 at stride 16). A pyramid ending at
stride 32 cannot reach the MAC total with so few parameters, so about a third of the parameters sit at stride 4
and the network stops at stride 16, which is also what SAM's 64×64 embedding at 1024 needs (design notes §1.3).

Totals of the classifier form (``litevit_classifier()``) at 224×224, counted with ptflops 0.7.5
(``tests/test_litevit.py`` checks them): 1,172,872 parameters (paper: 1.16 M); 1.158 GMACs with ptflops'
default ``pytorch`` backend, 1.220 GMACs with its ``aten`` backend (paper: 1.2 G). The backbone without the
classifier has 1,043,616 parameters. Neither backend counts the attention matmuls inside
``F.scaled_dot_product_attention``: about 0.025 GMACs at 224, growing with the square of the token count
(1.6 GMACs at 640, 10.7 GMACs at 1024).

The fused inference path (BatchNorms, LayerNorm affines and layer-scales folded; one convolution per mixer)
is in :mod:`litesam.modeling.litevit_fused`.

Blocks (MetaFormer: ``x = x + ls1 * mixer(norm1(x)); x = x + ls2 * mlp(norm2(x))``):

- :class:`PoolBlock` (stride 4 and 8): BatchNorm, multi-scale pooling mixer ``P(x) − x`` where ``P`` is the
  mean of the 3×3, 5×5 and 7×7 box averages, MLP ``Linear C→4C, GELU, Linear 4C→C`` on each pixel,
  layer-scale initialised to 1e-5. At the image border ``P`` averages only in-image pixels (the kernel is
  renormalised over the part of the window inside the image), so ``P`` keeps constants unchanged everywhere.
- :class:`AttentionBlock` (stride 16): a depthwise 3×3 conditional positional encoding (added residually;
  it makes the model resolution-agnostic, with no position table tied to 224 pretraining), then pre-norm
  (LayerNorm) global multi-head self-attention (head dim 32, ``F.scaled_dot_product_attention``) and MLP.

"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidImageError

__all__ = [
    "LiteViTConfig",
    "LiteViT",
    "PoolBlock",
    "AttentionBlock",
    "MultiScalePooling",
    "litevit_classifier",
]


@dataclass(frozen=True)
class LiteViTConfig:
    """Layout of a :class:`LiteViT` (see the module docstring for the default, an assumption).

    Attributes:
        stem_channels: output channels of the stem's two stride-2 3×3 convolutions (the stem ends at stride 4).
        channels: channels of each stage.
        depths: number of blocks in each stage.
        mixers: token mixer of each stage's blocks: ``"pool"`` (multi-scale pooling) or ``"attn"``
            (global multi-head self-attention).
        strides: stride of each stage's entry convolution (1 or 2). A stage whose stride is 1 and whose channel
            count equals its input's has no entry convolution. The product with the stem's 4 must be 16.
        mlp_ratio: hidden width of every block's MLP, as a multiple of the stage's channels.
        pool_sizes: box sizes (odd) averaged by the multi-scale pooling mixer.
        head_dim: channels per attention head (a stage's channels must be a multiple).
        layer_scale_init: initial value of the per-channel layer-scale of every residual branch.
        drop_path_rate: stochastic-depth rate, increasing linearly over blocks to this value (training only).
        in_chans: input image channels.
    """

    stem_channels: tuple[int, int] = (32, 64)
    channels: tuple[int, ...] = (64, 80, 96, 128)
    depths: tuple[int, ...] = (8, 2, 2, 1)
    mixers: tuple[str, ...] = ("pool", "pool", "attn", "attn")
    strides: tuple[int, ...] = (1, 2, 2, 1)
    mlp_ratio: float = 4.0
    pool_sizes: tuple[int, ...] = (3, 5, 7)
    head_dim: int = 32
    layer_scale_init: float = 1e-5
    drop_path_rate: float = 0.0
    in_chans: int = 3

    def __post_init__(self) -> None:
        n = len(self.channels)
        if len(self.stem_channels) != 2:
            raise ValueError(f"stem_channels must hold 2 values, got {self.stem_channels}")
        if n == 0 or not (len(self.depths) == len(self.mixers) == len(self.strides) == n):
            raise ValueError(
                "channels, depths, mixers and strides must be non-empty and of equal length, got "
                f"{self.channels}, {self.depths}, {self.mixers}, {self.strides}"
            )
        if any(m not in ("pool", "attn") for m in self.mixers):
            raise ValueError(f"mixers must be 'pool' or 'attn', got {self.mixers}")
        if any(s not in (1, 2) for s in self.strides) or 4 * math.prod(self.strides) != 16:
            raise ValueError(f"strides must be 1 or 2 and bring the stride-4 stem to 16, got {self.strides}")
        if any(d < 0 for d in self.depths) or any(c <= 0 for c in self.channels):
            raise ValueError(f"depths must be >= 0 and channels > 0, got {self.depths}, {self.channels}")
        for c, m in zip(self.channels, self.mixers, strict=True):
            if m == "attn" and c % self.head_dim:
                raise ValueError(
                    f"attention stage channels {c} are not a multiple of head_dim {self.head_dim}"
                )
        if not self.pool_sizes or any(k < 1 or k % 2 == 0 for k in self.pool_sizes):
            raise ValueError(f"pool_sizes must be odd and positive, got {self.pool_sizes}")

    @classmethod
    def tiny(cls) -> LiteViTConfig:
        """A very small layout (about 30 K parameters) for fast tests; not a meaningful model."""
        return cls(
            stem_channels=(8, 16),
            channels=(16, 24, 32, 32),
            depths=(1, 1, 1, 1),
            mixers=("pool", "pool", "attn", "attn"),
            strides=(1, 2, 2, 1),
            mlp_ratio=2.0,
            head_dim=16,
        )


class DropPath(nn.Module):
    """Stochastic depth: zeroes a residual branch per sample with probability ``p`` while training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    """``Sequential(3×3 convolution without bias (padding 1), BatchNorm)``."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
    )


class MultiScalePooling(nn.Module):
    """Parameter-free token mixer ``P(x) − x``; ``P`` is the mean of k×k box averages for k in ``pool_sizes``.

    ``P`` is computed as one depthwise convolution with the fixed mixture kernel, divided at every pixel by the
    kernel mass that falls inside the image. In the interior this equals ``mean_k AvgPool_k(x)`` exactly; at
    the border only in-image pixels are averaged (the spirit of ``count_include_pad=False``), so ``P`` maps a
    constant map to itself. Input and output: B×C×H×W float (any memory format).
    """

    def __init__(self, pool_sizes: tuple[int, ...] = (3, 5, 7)) -> None:
        super().__init__()
        size = max(pool_sizes)
        kernel = torch.zeros(size, size)
        for k in pool_sizes:
            o = (size - k) // 2
            kernel[o : o + k, o : o + k] += 1.0 / (k * k * len(pool_sizes))
        self.register_buffer("kernel", kernel[None, None], persistent=False)

    @property
    def padding(self) -> int:
        return self.kernel.shape[-1] // 2

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """``P(x)``: B×C×H×W in, B×C×H×W out."""
        channels = x.shape[1]
        summed = F.conv2d(x, self.kernel.expand(channels, 1, -1, -1), padding=self.padding, groups=channels)
        return summed * _normaliser(self.kernel, x.shape[-2], x.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


def _normaliser(kernel: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """1×1×H×W reciprocal of the mass of the 1×1×k×k ``kernel`` inside an H×W image at each pixel."""
    ones = kernel.new_ones(1, 1, height, width)
    return F.conv2d(ones, kernel, padding=kernel.shape[-1] // 2).reciprocal_()


class PixelMlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` on the channels of each pixel: B×C×H×W in and out (channels_last is fastest)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(x.permute(0, 2, 3, 1))))
        return y.permute(0, 3, 1, 2)


class PoolBlock(nn.Module):
    """MetaFormer block with the multi-scale pooling mixer and BatchNorm: B×C×H×W in and out."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        pool_sizes: tuple[int, ...],
        layer_scale_init: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.mixer = MultiScalePooling(pool_sizes)
        self.ls1 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = PixelMlp(dim, int(dim * mlp_ratio))
        self.ls2 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1[:, None, None] * self.mixer(self.norm1(x)))
        return x + self.drop_path(self.ls2[:, None, None] * self.mlp(self.norm2(x)))


class Attention(nn.Module):
    """Global multi-head self-attention over tokens: B×N×C in and out (``qkv`` with bias, ``proj``)."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = dim // head_dim
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(attend(self.qkv(x), self.num_heads))


def attend(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Scaled dot-product attention from packed B×N×3C projections; returns B×N×C (heads concatenated)."""
    b, n, c3 = qkv.shape
    q, k, v = qkv.view(b, n, 3, num_heads, c3 // (3 * num_heads)).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, n, c3 // 3)


class AttentionBlock(nn.Module):
    """Depthwise 3×3 positional encoding, then a pre-norm attention MetaFormer block: B×C×H×W in and out."""

    def __init__(
        self, dim: int, mlp_ratio: float, head_dim: int, layer_scale_init: float, drop_path: float
    ) -> None:
        super().__init__()
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, head_dim)
        self.ls1 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp_fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.mlp_act = nn.GELU()
        self.mlp_fc2 = nn.Linear(int(dim * mlp_ratio), dim)
        self.ls2 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x + self.pos(x)
        t = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        t = t + self.drop_path(self.ls1 * self.attn(self.norm1(t)))
        t = t + self.drop_path(self.ls2 * self.mlp_fc2(self.mlp_act(self.mlp_fc1(self.norm2(t)))))
        return t.view(b, h, w, c).permute(0, 3, 1, 2)


class Stage(nn.Module):
    """One resolution stage: an optional entry convolution (``downsample``) and a sequence of ``blocks``."""

    def __init__(self, downsample: nn.Module, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class LiteViT(nn.Module):
    """LiteViT backbone (and optional classifier); layout given by :class:`LiteViTConfig`.

    Args:
        cfg: the layout; the default is the assumed layout that meets the paper's totals.
        num_classes: size of the classification head; 0 builds the backbone only (Lite-SAM's use).

    Attributes:
        out_channels: channels of :meth:`forward_features`' output (the last stage's channels).
        fused: True after :func:`litesam.modeling.litevit_fused.fuse_for_inference` (the model is then
            inference-only).
    """

    def __init__(self, cfg: LiteViTConfig | None = None, num_classes: int = 0) -> None:
        super().__init__()
        cfg = cfg or LiteViTConfig()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.cfg = cfg
        self.num_classes = num_classes
        s1, s2 = cfg.stem_channels
        self.stem = nn.Sequential(_conv_bn(cfg.in_chans, s1, 2), nn.GELU(), _conv_bn(s1, s2, 2))
        rates = torch.linspace(0.0, cfg.drop_path_rate, max(sum(cfg.depths), 1)).tolist()
        stages, cin, index = [], s2, 0
        for cout, depth, mixer, stride in zip(cfg.channels, cfg.depths, cfg.mixers, cfg.strides, strict=True):
            downsample = nn.Identity() if (stride == 1 and cin == cout) else _conv_bn(cin, cout, stride)
            blocks: list[nn.Module] = []
            for _ in range(depth):
                if mixer == "pool":
                    block = PoolBlock(cout, cfg.mlp_ratio, cfg.pool_sizes, cfg.layer_scale_init, rates[index])
                else:
                    block = AttentionBlock(
                        cout, cfg.mlp_ratio, cfg.head_dim, cfg.layer_scale_init, rates[index]
                    )
                blocks.append(block)
                index += 1
            stages.append(Stage(downsample, blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.out_channels = cin
        if num_classes > 0:
            self.head_norm = nn.LayerNorm(cin)
            self.head = nn.Linear(cin, num_classes)
        self.fused = False
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map of an image batch.

        Args:
            x: B×C_in×H×W float (normalised image), H and W multiples of 16.
        Returns:
            B×out_channels×H/16×W/16 float, in ``channels_last`` memory format.
        Raises:
            InvalidImageError: wrong rank, channel count, dtype, or a side not a positive multiple of 16.
        """
        _check_input(x, self.cfg.in_chans)
        x = x.contiguous(memory_format=torch.channels_last)
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits B×num_classes when ``num_classes > 0``; otherwise :meth:`forward_features` of ``x``."""
        features = self.forward_features(x)
        if self.num_classes == 0:
            return features
        return self.head(self.head_norm(features.mean(dim=(2, 3))))

    def train(self, mode: bool = True) -> LiteViT:
        if mode and self.fused:
            raise RuntimeError("a LiteViT fused for inference cannot be trained; build a new model")
        return super().train(mode)


def _check_input(x: torch.Tensor, in_chans: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != in_chans:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidImageError(f"expected a B×{in_chans}×H×W tensor, got {shape}")
    if not x.is_floating_point():
        raise InvalidImageError(f"expected a floating-point image tensor, got {x.dtype}")
    h, w = x.shape[-2:]
    if h == 0 or w == 0 or h % 16 or w % 16:
        raise InvalidImageError(f"image height and width must be positive multiples of 16, got {h}×{w}")


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def litevit_classifier(num_classes: int = 1000, cfg: LiteViTConfig | None = None) -> LiteViT:
    """The ImageNet classification form of LiteViT (1000-way head by default), as counted in the paper."""
    return LiteViT(cfg, num_classes=num_classes)
