"""Variants of Lite-SAM, how to build them, and how to save and load their weights.

Variant settings are data (:class:`VariantConfig`), read alike by the CLI, the backend and the worker.
``litesam_r640`` and ``litesam_r1024`` are the paper's two models (same network, trained at different
input sizes); ``litesam_tiny`` is a small random-weight model for tests.

No pretrained Lite-SAM weights are published. A checkpoint is either one of ours (``save_checkpoint``,
which records the variant inside) or an official SAM checkpoint, from which the prompt encoder and mask
decoder can be initialised (``load_sam_weights``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CheckpointError
from .modeling.autoppn import AutoPPN, AutoPPNConfig
from .modeling.image_encoder import ImageEncoder, Neck
from .modeling.lite_sam import LiteSAM
from .modeling.litevit import LiteViT, LiteViTConfig
from .modeling.mask_decoder import MaskDecoder
from .modeling.prompt_encoder import PromptEncoder
from .modeling.transformer import TwoWayTransformer
from .proposals import ProposalConfig

#: Marks a file written by :func:`save_checkpoint`.
CHECKPOINT_FORMAT = "litesam-checkpoint/1"


@dataclass(frozen=True)
class VariantConfig:
    """Hyper-parameters of one Lite-SAM variant.

    Attributes:
        name: registry name.
        image_size: side S of the square model input in pixels; the embedding is S/16 × S/16.
        encoder: LiteViT layout.
        autoppn: AutoPPN head layout.
        proposals: default AutoPPN decoding for this input size.
        embed_dim: channels of the image embedding and of the prompt/mask decoder (SAM: 256).
        decoder_depth, decoder_heads, decoder_mlp_dim: two-way transformer (SAM-B: 2, 8, 2048).
        mask_in_chans: hidden channels of the prompt encoder's mask downscaling (SAM: 16).
        iou_head_hidden_dim: width of the IoU prediction head (SAM: 256).
    """

    name: str
    image_size: int
    encoder: LiteViTConfig = field(default_factory=LiteViTConfig)
    autoppn: AutoPPNConfig = field(default_factory=AutoPPNConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    embed_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    mask_in_chans: int = 16
    iou_head_hidden_dim: int = 256


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
    ),
}


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
    """Build a variant in eval mode, with random weights or the weights of one of our checkpoints.

    Args:
        variant: registry name; may be omitted when ``checkpoint`` is given (the checkpoint records it).
        checkpoint: path to a file written by :func:`save_checkpoint`; its variant must equal ``variant``.
        device: where the model lives.
        fuse: fold the encoder's normalisations into its convolutions for faster inference (same outputs to
            float rounding). A fused model serves predictions only: it cannot be trained or saved.
    Raises:
        CheckpointError: unknown variant, unreadable checkpoint, variant mismatch, or key mismatch.
    """
    if variant is None and checkpoint is None:
        raise CheckpointError("give a variant name or a checkpoint")
    state = None
    if checkpoint is not None:
        stored_variant, state = load_checkpoint(checkpoint, variant)
        variant = stored_variant
    model = _build(get_variant(variant))
    if state is not None:
        _load_state(model, state, f"checkpoint {checkpoint}")
    if fuse:
        model.image_encoder.fuse_for_inference()
    return model.to(device).eval()


def _build(cfg: VariantConfig) -> LiteSAM:
    embedding_side = cfg.image_size // 16
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
    )
    return LiteSAM(image_encoder, prompt_encoder, mask_decoder, variant=cfg.name)


def save_checkpoint(model: LiteSAM, path: str | Path, variant: str) -> Path:
    """Write the model's weights and its variant name to ``path`` (a ``torch.save`` file)."""
    get_variant(variant)
    if model.image_encoder.backbone.fused:
        raise CheckpointError("a model fused for inference cannot be saved; save the unfused model")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": CHECKPOINT_FORMAT, "variant": variant, "state_dict": state}, path)
    return path


def load_checkpoint(path: str | Path, variant: str | None = None) -> tuple[str, dict[str, torch.Tensor]]:
    """Read one of our checkpoints; returns (variant, state_dict).

    Raises:
        CheckpointError: missing or unreadable file, not our format, or another variant than ``variant``.
    """
    contents = _read(path)
    if not isinstance(contents, dict) or contents.get("format") != CHECKPOINT_FORMAT:
        hint = ""
        if isinstance(contents, dict) and any(str(k).startswith("mask_decoder.") for k in contents):
            hint = " It looks like an official SAM checkpoint: use load_sam_weights() for those."
        raise CheckpointError(f"{path} is not a Lite-SAM checkpoint written by save_checkpoint().{hint}")
    stored = contents.get("variant")
    get_variant(stored)
    if variant is not None and variant != stored:
        raise CheckpointError(f"{path} holds weights of variant {stored!r}, but variant {variant!r} was asked for")
    return stored, contents["state_dict"]


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
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error


def _load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys {_few(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_few(unexpected)}")
        if mismatched:
            shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched[:5]]
            problems.append(f"shape mismatches {shapes}")
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def _few(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', …' if len(keys) > limit else ''}] ({len(keys)} in all)"
