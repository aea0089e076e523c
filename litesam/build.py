"""Variants of Lite-SAM and of the SAM-family engines, how to build them, and how to save and load weights.

Variant settings are data (:class:`VariantConfig`), read alike by the CLI, the backend and the worker.
``litesam_r640`` and ``litesam_r1024`` are the paper's two models (same network, trained at different
input sizes); ``litesam_tiny`` is a small random-weight model for tests.

Engines (:data:`ENGINE_VARIANTS`) run official SAM-family checkpoints with our prompt encoder, mask decoder,
predictor and SegEvery: ``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h`` (Meta's ``sam_vit_b_01ec64.pth``,
``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``) and ``mobile_sam`` (``mobile_sam.pt``);
``sam_vit_tiny`` is a two-block ViT layout with random weights for tests. EfficientViT-SAM and RepViT-SAM
are not implemented (their encoders are whole other networks); their files are refused with the closest
engine named.

No pretrained Lite-SAM weights are published. A checkpoint is one of ours (``save_checkpoint``, which records
the variant inside) or an official SAM-family file, which :func:`build_model` recognises by its keys and
shapes (:mod:`litesam.official`); the prompt encoder and mask decoder of a Lite-SAM model can also be
initialised from an official file (``load_sam_weights``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CheckpointError
from .modeling.autoppn import AutoPPN, AutoPPNConfig
from .modeling.image_encoder import ImageEncoder, Neck
from .modeling.lite_sam import SAM_PIXEL_MEAN, SAM_PIXEL_STD, LiteSAM
from .modeling.litevit import LiteViT, LiteViTConfig
from .modeling.sam_vit import SamViT, SamViTConfig
from .modeling.tiny_vit import TinyViT, TinyViTConfig
from .official import key_problems, official_state_dict
from .modeling.mask_decoder import MaskDecoder
from .modeling.prompt_encoder import PromptEncoder
from .modeling.transformer import TwoWayTransformer
from .proposals import ProposalConfig

#: Marks a file written by :func:`save_checkpoint`.
CHECKPOINT_FORMAT = "litesam-checkpoint/1"

log = logging.getLogger(__name__)


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
        pred_iou_thresh, stability_score_thresh: SegEvery's default mask filters for this variant's weights:
            SAM's automatic-mask-generator values (0.88, 0.95) unless measured otherwise (a small model's
            masks are good enough to keep well below SAM's bar; see ``bench/calibrate_filters.py``).
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
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
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
        # Calibrated for the demo checkpoint (litesam/weights) on 60 synthetic scenes of seed 2 (neither the
        # training seed 0 nor the held-out seed 1): the pair with the highest instance recall whose kept masks
        # are ≥ 95 % correct (bench/calibrate_filters.py; README, "Training").
        pred_iou_thresh=0.8,
        stability_score_thresh=0.85,
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
VARIANTS["litesam_tiny_student"] = VariantConfig(
    name="litesam_tiny_student",
    image_size=256,
    encoder=LiteViTConfig(
        stem_channels=(16, 32),
        channels=(48, 64, 64),
        depths=(2, 2, 1),
        mixers=("pool", "attn", "attn"),
        strides=(2, 2, 1),
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
    decoder_upscale_channels=(32, 32),
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


def build_model(
    variant: str | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    fuse: bool = False,
) -> LiteSAM:
    """Build a variant in eval mode, with random weights or the weights of a checkpoint.

    Args:
        variant: registry name; may be omitted when ``checkpoint`` is given (the checkpoint records it, or
            its keys and shapes identify the engine).
        checkpoint: a file written by :func:`save_checkpoint`, or an official SAM-family checkpoint
            (``sam_vit_b_01ec64.pth``, ``mobile_sam.pt``, …; see :func:`load_checkpoint`). With ``variant``
            given, the file must hold that variant.
        device: where the model lives.
        fuse: apply the encoder's inference-only rewrites (LiteViT and TinyViT fold normalisations into
            convolutions; same outputs to float rounding). A fused model serves predictions only: it cannot
            be trained or saved.
    Raises:
        CheckpointError: unknown variant; unreadable, truncated or foreign checkpoint; variant mismatch; or a
            file that fits no engine (the message names the closest one and the missing / unexpected keys).
    """
    if variant is None and checkpoint is None:
        raise CheckpointError("give a variant name or a checkpoint")
    state = None
    if checkpoint is not None:
        variant, state = load_checkpoint(checkpoint, variant)
    cfg = get_variant(variant)
    model = _build(cfg, with_autoppn=None if state is None else _carries_autoppn(state))
    if state is not None:
        _load_state(model, state, f"checkpoint {checkpoint}")
    if fuse:
        model.image_encoder.fuse_for_inference()
    return model.to(device).eval()


def _carries_autoppn(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("image_encoder.autoppn.") for k in state)


def _build(cfg: VariantConfig, with_autoppn: bool | None = None) -> LiteSAM:
    """The model of ``cfg`` with random weights; ``with_autoppn`` adds (True) or omits (False) an engine's
    AutoPPN head, None keeps the variant's default. Lite-SAM always has its head."""
    embedding_side = cfg.image_size // 16
    if cfg.is_engine:
        autoppn_cfg = cfg.autoppn if with_autoppn is None else (ENGINE_AUTOPPN if with_autoppn else None)
        autoppn = None if autoppn_cfg is None else AutoPPN(cfg.embed_dim, autoppn_cfg)
        engine = SamViT if isinstance(cfg.encoder, SamViTConfig) else TinyViT
        image_encoder = engine(cfg.encoder, img_size=cfg.image_size, autoppn=autoppn)
    else:
        backbone = LiteViT(cfg.encoder)
        image_encoder = ImageEncoder(
            backbone=backbone,
            neck=Neck(backbone.out_channels, cfg.embed_dim),
            autoppn=AutoPPN(cfg.embed_dim, cfg.autoppn),
            img_size=cfg.image_size,
        )
    prompt_encoder = PromptEncoder(
        embed_dim=cfg.embed_dim,
        image_embedding_size=(embedding_side, embedding_side),
        input_image_size=(cfg.image_size, cfg.image_size),
        mask_in_chans=cfg.mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=cfg.embed_dim,
        transformer=TwoWayTransformer(
            depth=cfg.decoder_depth,
            embedding_dim=cfg.embed_dim,
            num_heads=cfg.decoder_heads,
            mlp_dim=cfg.decoder_mlp_dim,
        ),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        upscale_channels=cfg.decoder_upscale_channels,
    )
    return LiteSAM(
        image_encoder,
        prompt_encoder,
        mask_decoder,
        pixel_mean=cfg.pixel_mean,
        pixel_std=cfg.pixel_std,
        variant=cfg.name,
        resize=cfg.resize,
    )


def save_checkpoint(model: LiteSAM, path: str | Path, variant: str) -> Path:
    """Write the model's weights and its variant name to ``path`` (a ``torch.save`` file)."""
    get_variant(variant)
    encoder = model.image_encoder
    if getattr(encoder, "fused", False) or getattr(getattr(encoder, "backbone", None), "fused", False):
        raise CheckpointError("a model fused for inference cannot be saved; save the unfused model")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": CHECKPOINT_FORMAT, "variant": variant, "state_dict": state}, path)
    return path


def load_checkpoint(path: str | Path, variant: str | None = None) -> tuple[str, dict[str, torch.Tensor]]:
    """Read a checkpoint and tell which variant it holds; returns (variant, state_dict).

    One of ours records its variant. An official SAM-family file (a bare state dict, or one under ``model``
    / ``state_dict``) is recognised by its keys and shapes among :data:`ENGINE_VARIANTS`, and the engine found
    is logged. MobileSAM's files also hold TinyViT's ImageNet classifier (``image_encoder.norm_head.*``,
    ``image_encoder.head.*``), which the SAM encoder never uses: those keys are dropped; every other key loads.

    Raises:
        CheckpointError: missing, unreadable or truncated file; a SAM-HQ, EfficientSAM or other network's
            file; a state dict that fits no engine (naming the closest engine and the missing / unexpected /
            mis-shaped keys); or another variant than ``variant``.
    """
    contents = _read(path)
    if isinstance(contents, dict) and contents.get("format") == CHECKPOINT_FORMAT:
        stored = contents.get("variant")
        get_variant(stored)
        state = contents["state_dict"]
    else:
        state = official_state_dict(contents, str(path))
        stored = _recognise(state, str(path), variant)
        log.info("checkpoint %s: official weights of engine %s, %s", path, stored, VARIANTS[stored].title)
    if variant is not None and variant != stored:
        raise CheckpointError(f"{path} holds weights of variant {stored!r}, but variant {variant!r} was asked for")
    return stored, state


def checkpoint_variant(path: str | Path) -> str:
    """The variant a checkpoint holds (recorded in ours, recognised in an official file), without building it.

    Raises:
        CheckpointError: as :func:`load_checkpoint`.
    """
    return load_checkpoint(path)[0]


def _recognise(state: dict[str, torch.Tensor], source: str, wanted: str | None) -> str:
    """The engine whose keys and shapes ``state`` has exactly (only ``wanted``, when given)."""
    with_autoppn = _carries_autoppn(state)
    names = [wanted] if wanted in ENGINE_VARIANTS else list(ENGINE_VARIANTS)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    scored = []
    for name in names:
        expected = _expected_shapes(name, with_autoppn)
        problems, count = key_problems(expected, shapes)
        if not problems:
            return name
        matched = sum(1 for k, shape in shapes.items() if expected.get(k) == shape)
        scored.append((-matched, count, name, problems))  # closest: most keys that fit, then fewest that do not
    _, _, name, problems = min(scored)
    raise CheckpointError(
        f"{source} fits no engine; the closest is {name} ({VARIANTS[name].title}), which it does not fit: "
        + "; ".join(problems)
        + ". (EfficientViT-SAM and RepViT-SAM files are not supported; Lite-SAM weights load from files "
        "written by save_checkpoint.)"
    )


@functools.lru_cache(maxsize=None)
def _expected_shapes(name: str, with_autoppn: bool) -> dict[str, tuple[int, ...]]:
    """Key → shape of an engine's state dict, from a model built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = _build(get_variant(name), with_autoppn)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_sam_weights(model: LiteSAM, path: str | Path) -> None:
    """Initialise the prompt encoder and mask decoder from an official SAM (or MobileSAM) checkpoint.

    Only the ``prompt_encoder.*`` and ``mask_decoder.*`` keys are used, with a strict key check; the image
    encoder is left as it is. The model must use SAM's decoder settings (embed_dim 256, depth 2, mlp 2048).
    """
    contents = _read(path)
    if isinstance(contents, dict) and "state_dict" in contents and "format" not in contents:
        contents = contents["state_dict"]
    if not isinstance(contents, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    for prefix in ("prompt_encoder", "mask_decoder"):
        part = {k[len(prefix) + 1 :]: v for k, v in contents.items() if k.startswith(prefix + ".")}
        if not part:
            raise CheckpointError(f"{path} has no {prefix}.* weights; is it a SAM checkpoint?")
        _load_state(getattr(model, prefix), part, f"{prefix} of {path}")


def checkpoint_sha256(path: str | Path) -> str:
    """Hex sha256 of a checkpoint file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read(path: str | Path) -> object:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:  # memory-mapped: a 2.4 GiB ViT-H file is not copied into memory before its weights are loaded
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # files in torch's legacy (non-zip) format cannot be mapped: read them whole
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated, corrupt, or not a torch weights file): {error}"
        ) from error


def _load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    problems, _ = key_problems(expected, {k: tuple(v.shape) for k, v in state.items()})
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)
