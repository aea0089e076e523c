"""Building a variant's network (:func:`build_model`), and saving and loading its weights.

The variants themselves (their settings) are the registry of :mod:`litesam.variants`.

No pretrained Lite-SAM weights are published. A checkpoint is one of ours (``save_checkpoint``, which records
the variant inside, and optionally the SegEvery mask filters calibrated for its weights:
:func:`write_calibrated_filters`, ``litesam calibrate``) or an official SAM-family file, which
:func:`build_model` recognises by its keys and shapes (:mod:`litesam.official`); the prompt encoder and mask decoder of a Lite-SAM model can also be
initialised from an official file (``load_sam_weights``). EfficientViT-SAM and RepViT-SAM files are refused
with the closest engine named.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from pathlib import Path

import torch

from .errors import CheckpointError
from .modeling.autoppn import AutoPPN
from .modeling.image_encoder import ImageEncoder, Neck
from .modeling.lite_sam import LiteSAM
from .modeling.litevit import LiteViT
from .modeling.mask_decoder import MaskDecoder
from .modeling.prompt_encoder import PromptEncoder
from .modeling.sam_vit import SamViT, SamViTConfig
from .modeling.tiny_vit import TinyViT
from .modeling.transformer import TwoWayTransformer
from .official import key_problems, official_state_dict
from .variants import ENGINE_AUTOPPN, ENGINE_VARIANTS, VARIANTS, VariantConfig, get_variant

#: Marks a file written by :func:`save_checkpoint`.
CHECKPOINT_FORMAT = "litesam-checkpoint/1"
#: The key of one of our checkpoints that holds its calibrated SegEvery filters (optional):
#: ``{"pred_iou_thresh": float, "stability_score_thresh": float, "calibration": {how they were chosen}}``,
#: with ``"proposal_score_thresh": float`` (AutoPPN's) where the model was calibrated on its proposals.
FILTERS_KEY = "segevery_filters"
#: The filter names a checkpoint carries (keyword arguments of :meth:`SegEveryConfig.for_variant`).
FILTER_NAMES = ("pred_iou_thresh", "stability_score_thresh")
#: The filter names a checkpoint may carry besides (checkpoints calibrated before it was chosen lack it).
OPTIONAL_FILTER_NAMES = ("proposal_score_thresh",)

log = logging.getLogger(__name__)


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
    state = filters = None
    if checkpoint is not None:
        variant, state, filters = _load(checkpoint, variant)
    cfg = get_variant(variant)
    model = _build(cfg, with_autoppn=None if state is None else _carries_autoppn(state))
    if state is not None:
        _load_state(model, state, f"checkpoint {checkpoint}")
    model.segevery_filters = filters
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
    """Write the model's weights and its variant name to ``path`` (a ``torch.save`` file).

    Calibrated SegEvery filters are not written: they belong to the weights they were measured on, and a
    model saved here has usually been trained since (calibrate the new weights: ``litesam calibrate``)."""
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
    stored, state, _ = _load(path, variant)
    return stored, state


def write_calibrated_filters(
    checkpoint: str | Path, output: str | Path, filters: dict[str, float], calibration: dict
) -> Path:
    """Write ``checkpoint`` to ``output`` (which may be the same file) carrying calibrated SegEvery filters.

    One of our checkpoints keeps everything else it holds (weights, label, recipe); an official SAM-family
    file becomes one of ours (its weights under the recognised engine variant). The file is replaced
    atomically, so a failed write leaves the old one.

    Args:
        filters: ``pred_iou_thresh`` and ``stability_score_thresh`` (and optionally ``proposal_score_thresh``),
            each in [0, 1].
        calibration: how they were chosen (rule, scenes, recall, precision), stored beside them.
    Raises:
        CheckpointError: an unreadable checkpoint, filters out of range, or an output that cannot be written.
    """
    entry = {**_checked_filters(filters, "filters"), "calibration": calibration}
    contents = _read(checkpoint)
    if _is_ours(contents):
        contents = {k: v for k, v in contents.items() if k != FILTERS_KEY}
    else:
        variant, state, _ = _parse(contents, checkpoint)
        contents = {"format": CHECKPOINT_FORMAT, "variant": variant, "state_dict": dict(state)}
    output = Path(output)
    partial = output.with_name(output.name + ".partial")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        torch.save({**contents, FILTERS_KEY: entry}, partial)
        os.replace(partial, output)
    except (OSError, RuntimeError) as error:  # torch.save reports a file it cannot open as a RuntimeError
        if partial.is_file():
            partial.unlink()
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).split("strerror: ")[-1]
        raise CheckpointError(f"cannot write {output}: {reason}") from None
    return output


def _load(path: str | Path, variant: str | None = None) -> tuple[str, dict[str, torch.Tensor], dict | None]:
    """(variant, state dict, calibrated filters or None) of a checkpoint; see :func:`load_checkpoint`."""
    return _parse(_read(path), path, variant)


def _is_ours(contents: object) -> bool:
    return isinstance(contents, dict) and contents.get("format") == CHECKPOINT_FORMAT


def _parse(
    contents: object, path: str | Path, variant: str | None = None
) -> tuple[str, dict[str, torch.Tensor], dict | None]:
    """:func:`_load` of a checkpoint file's loaded ``contents``."""
    filters = None
    if _is_ours(contents):
        stored = contents.get("variant")
        get_variant(stored)
        state = contents["state_dict"]
        if contents.get(FILTERS_KEY) is not None:
            filters = _checked_filters(contents[FILTERS_KEY], f"{path}: {FILTERS_KEY}")
    else:
        state = official_state_dict(contents, str(path))
        stored = _recognise(state, str(path), variant)
        log.info("checkpoint %s: official weights of engine %s, %s", path, stored, VARIANTS[stored].title)
    if variant is not None and variant != stored:
        raise CheckpointError(f"{path} holds weights of variant {stored!r}, but variant {variant!r} was asked for")
    return stored, state, filters


def _checked_filters(entry: object, source: str) -> dict[str, float]:
    """:data:`FILTER_NAMES` of ``entry`` and those of :data:`OPTIONAL_FILTER_NAMES` it has, each a number in
    [0, 1]."""
    if not isinstance(entry, dict):
        raise CheckpointError(f"{source} must be a mapping of {', '.join(FILTER_NAMES)}")
    checked = {}
    for name in FILTER_NAMES + tuple(n for n in OPTIONAL_FILTER_NAMES if n in entry):
        value = entry.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and 0.0 <= value <= 1.0
        ):
            raise CheckpointError(f"{source}: {name} must be a number in [0, 1], got {value!r}")
        checked[name] = float(value)
    return checked


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
