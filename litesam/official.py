"""Reading official SAM-family checkpoint files: unwrapping, refusing look-alikes, comparing keys.

Official files are bare state dicts (Meta's ``sam_vit_*.pth``, ``mobile_sam.pt``) or a state dict under
``model`` (EfficientSAM) or ``state_dict``. Two families look like SAM but have another mask decoder and are
refused by name: SAM-HQ (an extra HQ output token and ViT-feature fusion, ``mask_decoder.hf_token`` …) and
EfficientSAM (``prompt_encoder.invalid_points``, ``mask_decoder.final_output_upscaling_layers`` …).
Which engine a file holds is decided in :mod:`litesam.build` by comparing its keys and shapes with each
engine's (:func:`key_problems`).
"""

from __future__ import annotations

import torch

from .errors import CheckpointError
from .modeling.tiny_vit import UNUSED_KEYS

__all__ = ["official_state_dict", "key_problems"]

#: The parts every SAM-family state dict has, as key prefixes.
SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")

#: Key prefixes that identify a look-alike family, with the reason it cannot run here.
LOOK_ALIKES = (
    (
        ("mask_decoder.hf_token.", "mask_decoder.hf_mlp.", "mask_decoder.compress_vit_feat."),
        "an SAM-HQ checkpoint: its mask decoder adds an HQ output token fed by early ViT features "
        "(mask_decoder.hf_token, hf_mlp, compress_vit_feat), which SAM's decoder does not have",
    ),
    (
        ("prompt_encoder.invalid_points.", "mask_decoder.final_output_upscaling_layers."),
        "an EfficientSAM checkpoint: its prompt encoder and mask decoder are EfficientSAM's own "
        "(prompt_encoder.invalid_points, mask_decoder.final_output_upscaling_layers), not SAM's",
    ),
)


def official_state_dict(contents: object, source: str) -> dict[str, torch.Tensor]:
    """The SAM-family state dict inside a loaded checkpoint file, TinyViT's classifier keys dropped.

    Args:
        contents: what ``torch.load`` returned for the file.
        source: the file, for messages.
    Raises:
        CheckpointError: not a mapping of names to tensors; a SAM-HQ or EfficientSAM file; or no
            ``image_encoder.*`` / ``prompt_encoder.*`` / ``mask_decoder.*`` keys (another network).
    """
    if isinstance(contents, dict):
        for wrapper in ("model", "state_dict"):
            if isinstance(contents.get(wrapper), dict):
                contents = contents[wrapper]
                break
    if not isinstance(contents, dict) or not contents or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in contents.items()
    ):
        raise CheckpointError(f"{source} does not hold a state dict (a mapping of parameter names to tensors)")
    for prefixes, what in LOOK_ALIKES:
        if any(k.startswith(prefixes) for k in contents):
            raise CheckpointError(f"{source} is {what}; it is not supported")
    missing_parts = [p.rstrip(".") for p in SAM_PARTS if not any(k.startswith(p) for k in contents)]
    if missing_parts:
        first = ", ".join(sorted(contents)[:5])
        raise CheckpointError(
            f"{source} is not a SAM-family checkpoint: it has no {' / '.join(missing_parts)} weights "
            f"(its {len(contents)} keys begin {first}, …)"
        )
    return {k: v for k, v in contents.items() if not k.startswith(UNUSED_KEYS)}


def key_problems(
    expected: dict[str, tuple[int, ...]], actual: dict[str, tuple[int, ...]]
) -> tuple[list[str], int]:
    """How a state dict (key → shape) differs from a model's: (sentences, number of differing keys).

    The sentences list missing keys, unexpected keys and shape mismatches (a few of each, with counts);
    both are empty when the state dict fits exactly.
    """
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if mismatched:
        shapes = [f"{k} {actual[k]} vs {expected[k]}" for k in mismatched[:5]]
        problems.append(f"shape mismatches {shapes} ({len(mismatched)} in all)")
    return problems, len(missing) + len(unexpected) + len(mismatched)


def _few(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', …' if len(keys) > limit else ''}] ({len(keys)} in all)"
