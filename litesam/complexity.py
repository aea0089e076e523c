"""Parameter and MAC counts, measured with ptflops as in the supplement's Listing 1.2.

The paper counts with ``ptflops.get_model_complexity_info``: once on the image encoder alone and once on a
wrapper that runs encoder → prompt encoder (one point) → mask decoder (``multimask_output=True``). This module
does the same, with the listing's slips fixed (:class:`OnePromptModel`).

Backends (ptflops 0.7.5 in this project, recorded in every report):

- ``"pytorch"`` (ptflops' default, what Listing 1.2 used): hooks on ``nn.Module`` types plus a few patched
  functionals. It counts convolutions, linear layers, norms, activations and pools (norms, activations and
  pools as one MAC per element; GELU modules twice, once per hook), and misses matmuls written with ``@``,
  ``einsum`` or ``F.scaled_dot_product_attention``.
- ``"aten"``: counts ``aten`` convolutions and matrix products (``mm``, ``bmm``, ``addmm``, ``matmul``) and
  nothing element-wise; it sees matmuls written with ``@`` only under ``torch.no_grad()`` (under
  ``torch.inference_mode()`` they dispatch differently), so :func:`count_macs` always counts under
  ``no_grad`` with inference mode switched off. ``F.scaled_dot_product_attention`` is not counted by it either.

Counting runs a real forward pass on a zero input and, for the ``pytorch`` backend, patches
``torch.nn.functional`` globally for its duration: do not count while other threads run the model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from importlib import metadata
from typing import Any

import torch
from torch import nn

from .errors import LiteSamError

__all__ = ["BACKENDS", "count_parameters", "count_macs", "OnePromptModel", "complexity_report"]

#: The ptflops backends :func:`count_macs` accepts.
BACKENDS = ("pytorch", "aten")


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` (each shared tensor once; buffers are not parameters)."""
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, input_shape: tuple[int, ...], backend: str = "pytorch") -> int:
    """Multiply-accumulates of one forward pass of ``module`` on a 1×``input_shape`` zero tensor, via ptflops.

    Args:
        module: the network. A deep copy is counted (ptflops switches modules to eval mode and attaches
            counting attributes), so ``module`` itself is left as it was.
        input_shape: the input without the batch axis, e.g. ``(3, 224, 224)``.
        backend: ``"pytorch"`` (ptflops' default) or ``"aten"`` (see the module docstring).
    Returns:
        MACs as an integer.
    Raises:
        ValueError: unknown backend.
        LiteSamError: ptflops could not count (the forward pass failed).
    """
    from ptflops import get_model_complexity_info

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    counted = copy.deepcopy(module)
    reference = next(iter(counted.parameters()), None)
    kwargs = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}

    def zeros(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros((1, *shape), **kwargs)

    with torch.inference_mode(False), torch.no_grad():
        macs, _ = get_model_complexity_info(
            counted,
            tuple(input_shape),
            as_strings=False,
            print_per_layer_stat=False,
            input_constructor=zeros,
            backend=backend,
        )
    if macs is None:
        raise LiteSamError(f"ptflops could not count {type(module).__name__} on input {tuple(input_shape)}")
    return int(macs)


class OnePromptModel(nn.Module):
    """Listing 1.2's ``Model_1prompt``: image encoder → prompt encoder with one point → mask decoder.

    Slips of the listing fixed here: the class calls its own ``super().__init__`` (the listing names another
    class); the point and its label are made on the input's device (no ``.cuda()``), the label is an integer
    foreground label (the listing draws it from ``randn``) and the point is the input's centre (the listing's
    ``randn`` coordinates are arbitrary; the value does not change the count); the model is an instance (the
    listing forgets to call ``sam_model_registry[...]``); the prompt encoder belongs to the model, so at 640
    its embedding grid is 40×40 (the listing reuses SAM's 64×64 one).

    Args:
        model: a Lite-SAM container with ``image_encoder``, ``prompt_encoder`` and ``mask_decoder``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B×3×S×S image → (low-res mask logits B×3×S/4×S/4, IoU predictions B×3)."""
        image_embedding, _ = self.model.image_encoder(inputs)
        batch, side = inputs.shape[0], inputs.shape[-1]
        coords = torch.full((batch, 1, 2), side / 2.0, device=inputs.device, dtype=inputs.dtype)
        labels = torch.ones((batch, 1), dtype=torch.int64, device=inputs.device)
        sparse_embeddings, dense_embeddings = self.model.prompt_encoder(
            points=(coords, labels), boxes=None, masks=None
        )
        low_res_masks, iou_predictions = self.model.mask_decoder(
            image_embeddings=image_embedding,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse_embeddings,
            dense_prompt_embeddings=dense_embeddings,
            multimask_output=True,
        )
        return low_res_masks, iou_predictions


def _resized(model: nn.Module, side: int) -> nn.Module:
    """A deep copy of ``model`` whose prompt encoder works on a ``side``×``side`` input (grid side/16)."""
    copied = copy.deepcopy(model)
    grid = side // 16
    prompt_encoder = copied.prompt_encoder
    prompt_encoder.input_image_size = (side, side)
    prompt_encoder.image_embedding_size = (grid, grid)
    prompt_encoder.mask_input_size = (4 * grid, 4 * grid)
    return copied


def complexity_report(
    model: nn.Module,
    resolutions: Iterable[int] | None = None,
    backends: Iterable[str] = BACKENDS,
) -> dict[str, Any]:
    """Parameters and MACs per component of a Lite-SAM model (or a SAM-family engine), JSON-serialisable.

    Every component is counted at every resolution. Lite-SAM's image encoder is resolution-agnostic; for the
    whole model (:class:`OnePromptModel`) a copy is counted whose prompt encoder is set to that resolution's
    grid (its weights do not depend on the grid). ``mask_decoder`` MACs are ``total − image_encoder`` and
    include the one-point prompt encoding. ``backbone`` MACs are ``image_encoder − neck − autoppn`` (ptflops
    counts are sums, so this is exact); an engine's "backbone" is its encoder before SAM's neck. Engines use
    ``F.scaled_dot_product_attention`` and ``einsum`` for attention, which neither backend counts: their
    MACs leave out the attention products (see the module docstring).

    Args:
        model: container with ``image_encoder`` (a Lite-SAM encoder with ``backbone``, ``neck``, ``autoppn``,
            or an engine with ``neck`` and ``autoppn`` possibly None), ``prompt_encoder``, ``mask_decoder``
            and ``img_size``; its encoder must not be fused.
        resolutions: square input sides for the counts (multiples of 16); default 224, 640 and 1024 for
            Lite-SAM and the input size for engines, whose position embeddings fix it.
        backends: ptflops backends to count with.
    Returns:
        ``{"ptflops_version", "backends", "img_size", "resolutions", "components": {name: {"params": int,
        "macs": {side: int}, "macs_<backend>": {side: int} for other backends}}}``; ``"macs"`` is the first
        backend's count. Sides are string keys (``"640"``). Components: ``image_encoder``,
        ``image_encoder.backbone``, ``image_encoder.neck``, ``image_encoder.autoppn`` (when there is one),
        ``prompt_encoder`` (params only), ``mask_decoder``, ``total``.
    Raises:
        LiteSamError: a fused encoder (its counts would not be comparable), an engine at another side than
            its input size, or ptflops failed.
    """
    backends = tuple(backends)
    if not backends or any(b not in BACKENDS for b in backends):
        raise ValueError(f"backends must be a non-empty selection of {BACKENDS}, got {backends}")
    encoder = model.image_encoder
    img_size = int(model.img_size)
    backbone = getattr(encoder, "backbone", None)
    if getattr(encoder, "fused", False) or getattr(backbone, "fused", False):
        raise LiteSamError("count complexity on an unfused model (fuse_for_inference changes the layers)")
    if resolutions is None:
        resolutions = (224, 640, 1024) if backbone is not None else (img_size,)
    resolutions = tuple(int(r) for r in resolutions)
    if backbone is None and resolutions != (img_size,):
        raise LiteSamError(f"an engine counts at its input size only ({img_size}), not at {resolutions}")
    keys = {b: "macs" if i == 0 else f"macs_{b}" for i, b in enumerate(backends)}
    heads = [("image_encoder.neck", encoder.neck)]
    if encoder.autoppn is not None:
        heads.append(("image_encoder.autoppn", encoder.autoppn))
    components: dict[str, dict[str, Any]] = {"image_encoder": {"params": count_parameters(encoder)}}
    components["image_encoder.backbone"] = {
        "params": count_parameters(encoder) - sum(count_parameters(m) for _, m in heads)
    }
    components.update({name: {"params": count_parameters(module)} for name, module in heads})
    components["prompt_encoder"] = {"params": count_parameters(model.prompt_encoder)}
    components["mask_decoder"] = {"params": count_parameters(model.mask_decoder)}
    components["total"] = {"params": count_parameters(model)}
    neck_in = _in_channels(encoder.neck)
    embed_dim = model.prompt_encoder.embed_dim
    for backend in backends:
        key = keys[backend]
        for name in ("image_encoder", "image_encoder.backbone", *(name for name, _ in heads)):
            components[name][key] = {}
        for side in resolutions:
            grid = side // 16
            whole = count_macs(encoder, (3, side, side), backend)
            components["image_encoder"][key][str(side)] = whole
            rest = whole
            for name, module in heads:
                channels = neck_in if name == "image_encoder.neck" else embed_dim
                macs = count_macs(module, (channels, grid, grid), backend)
                components[name][key][str(side)] = macs
                rest -= macs
            components["image_encoder.backbone"][key][str(side)] = rest
        components["total"][key] = {}
        components["mask_decoder"][key] = {}
        for side in resolutions:
            total = count_macs(OnePromptModel(_resized(model, side)), (3, side, side), backend)
            components["total"][key][str(side)] = total
            components["mask_decoder"][key][str(side)] = total - components["image_encoder"][key][str(side)]
    return {
        "ptflops_version": metadata.version("ptflops"),
        "backends": list(backends),
        "img_size": img_size,
        "resolutions": list(resolutions),
        "components": components,
    }


def _in_channels(neck: nn.Module) -> int:
    """Input channels of a neck (its first convolution's)."""
    return next(m for m in neck.modules() if isinstance(m, nn.Conv2d)).in_channels
