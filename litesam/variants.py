"""The registry of Lite-SAM variants and SAM-family engines: each one's settings, as data.

Variant settings are data (:class:`VariantConfig`), read alike by the CLI, the backend and the worker;
:mod:`litesam.build` builds a variant's network and loads its weights.
``litesam_r640`` and ``litesam_r1024`` are the paper's two models (same network, trained at different
input sizes); ``litesam_tiny`` is a small random-weight model for tests.

Engines (:data:`ENGINE_VARIANTS`) run official SAM-family checkpoints with our prompt encoder, mask decoder,
predictor and SegEvery: ``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h`` (Meta's ``sam_vit_b_01ec64.pth``,
``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``) and ``mobile_sam`` (``mobile_sam.pt``);
``sam_vit_tiny`` is a two-block ViT layout with random weights for tests. EfficientViT-SAM and RepViT-SAM
are not implemented (their encoders are whole other networks).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .errors import CheckpointError
from .modeling.autoppn import AutoPPNConfig
from .modeling.lite_sam import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from .modeling.litevit import LiteViTConfig
from .modeling.sam_vit import SamViTConfig
from .modeling.tiny_vit import TinyViTConfig
from .proposals import ProposalConfig


@dataclass(frozen=True)
class VariantConfig:
    """Hyper-parameters of one Lite-SAM variant.

    Attributes:
        name: registry name.
        image_size: side S of the square model input in pixels; the embedding is S/16 × S/16.
        encoder: image encoder layout; its type selects the network (LiteViT, SAM ViT or TinyViT).
        autoppn: AutoPPN head layout; None for engines, whose official checkpoints carry no head (a checkpoint
            with ``image_encoder.autoppn.*`` keys gets a default-layout head).
        proposals: default AutoPPN decoding for this input size.
        embed_dim: channels of the image embedding and of the prompt/mask decoder (SAM: 256).
        decoder_depth, decoder_heads, decoder_mlp_dim: two-way transformer (SAM-B: 2, 8, 2048).
        mask_in_chans: hidden channels of the prompt encoder's mask downscaling (SAM: 16).
        iou_head_hidden_dim: width of the IoU prediction head (SAM: 256).
        decoder_upscale_channels: channels of the mask decoder's two upscaling convolutions; None: SAM's
            ``(embed_dim/4, embed_dim/8)``.
        resize: image resizing, ``"opencv"`` (area averaging when shrinking, ours) or ``"pil_bilinear"``
            (SAM's ``ResizeLongestSide``, which engines match so their masks equal the official pipeline's).
        pixel_mean, pixel_std: RGB statistics on the 0–255 scale the input is normalised with.
        title: what the variant is, for people (logs, ``litesam info``, ``/health``).
    """

    name: str
    image_size: int
    encoder: LiteViTConfig | SamViTConfig | TinyViTConfig = field(default_factory=LiteViTConfig)
    autoppn: AutoPPNConfig | None = field(default_factory=AutoPPNConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    embed_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    mask_in_chans: int = 16
    iou_head_hidden_dim: int = 256
    decoder_upscale_channels: tuple[int, int] | None = None
    resize: str = "opencv"
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD
    title: str = "Lite-SAM"

    @property
    def is_engine(self) -> bool:
        """True for a SAM-family engine (runs official checkpoints), False for Lite-SAM."""
        return not isinstance(self.encoder, LiteViTConfig)


VARIANTS: dict[str, VariantConfig] = {
    "litesam_r640": VariantConfig(name="litesam_r640", image_size=640, proposals=ProposalConfig(top_k=100)),
    "litesam_r1024": VariantConfig(name="litesam_r1024", image_size=1024, proposals=ProposalConfig(top_k=200)),
    "litesam_tiny": VariantConfig(
        name="litesam_tiny",
        image_size=256,
        encoder=LiteViTConfig(
            stem_channels=(16, 32),
            channels=(32, 48, 64, 64),
            depths=(1, 1, 2, 1),
            mixers=("pool", "pool", "attn", "attn"),
            strides=(1, 2, 2, 1),
            mlp_ratio=2.0,
            head_dim=16,
            layer_scale_init=0.1,
        ),
        autoppn=AutoPPNConfig(hidden_channels=16),
        proposals=ProposalConfig(top_k=32),
        embed_dim=64,
        decoder_depth=2,
        decoder_heads=4,
        decoder_mlp_dim=256,
        mask_in_chans=4,
        iou_head_hidden_dim=64,
        # 32-channel mask features instead of SAM's C/8 = 8: measured on synthetic scenes (README, "Training").
        decoder_upscale_channels=(32, 32),
    ),
}
#: A student of another layout for distilling ``litesam_tiny`` (``litesam distill``): three LiteViT stages
#: instead of four, a deeper attention stage, and ``litesam_tiny``'s prompt encoder and mask decoder
#: (embed_dim 64), so the teacher's decoder copies into it.
_TINY = VARIANTS["litesam_tiny"]
VARIANTS["litesam_tiny_student"] = replace(
    _TINY,
    name="litesam_tiny_student",
    encoder=replace(_TINY.encoder, channels=(48, 64, 64), depths=(2, 2, 1), mixers=("pool", "attn", "attn"),
                    strides=(2, 2, 1)),
    title="Lite-SAM tiny student (three-stage LiteViT; distillation proofs)",
)


def _engine(name: str, encoder: SamViTConfig | TinyViTConfig, title: str, image_size: int = 1024) -> VariantConfig:
    """An engine variant: SAM's decoder, SAM's preprocessing, no AutoPPN head, top-200 proposals at 1024."""
    return VariantConfig(
        name=name,
        image_size=image_size,
        encoder=encoder,
        autoppn=None,
        proposals=ProposalConfig(top_k=200),
        resize="pil_bilinear",
        title=title,
    )


#: The SAM-family engines (see the module docstring); each official file is named in its title.
ENGINE_VARIANTS: dict[str, VariantConfig] = {
    "sam_vit_b": _engine("sam_vit_b", SamViTConfig.vit_b(), "SAM ViT-B (Meta, sam_vit_b_01ec64.pth)"),
    "sam_vit_l": _engine("sam_vit_l", SamViTConfig.vit_l(), "SAM ViT-L (Meta, sam_vit_l_0b3195.pth)"),
    "sam_vit_h": _engine("sam_vit_h", SamViTConfig.vit_h(), "SAM ViT-H (Meta, sam_vit_h_4b8939.pth)"),
    "mobile_sam": _engine("mobile_sam", TinyViTConfig(), "MobileSAM TinyViT-5M (mobile_sam.pt)"),
    "sam_vit_tiny": _engine(
        "sam_vit_tiny", SamViTConfig.tiny(), "two-block SAM ViT layout for tests (random weights)", image_size=256
    ),
}
VARIANTS.update(ENGINE_VARIANTS)

#: Layout of an AutoPPN head that a checkpoint brings to an engine.
ENGINE_AUTOPPN = AutoPPNConfig()


def get_variant(name: str) -> VariantConfig:
    """The registered variant called ``name``; a clear error lists the known names otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise CheckpointError(f"unknown variant {name!r}; known variants: {', '.join(VARIANTS)}") from None
