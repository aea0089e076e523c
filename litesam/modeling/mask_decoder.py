"""Mask decoder: predicts mask logits and IoU scores from one image embedding and a batch of prompts.

Attribute and parameter names are Segment Anything's, so a SAM checkpoint's ``mask_decoder.*`` keys load with
``strict=True``; outputs equal SAM's ``MaskDecoder`` up to float rounding. With SAM-B settings
(``TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048)``) it has 4,058,340 parameters.

For speed on a CPU the decoder never copies the image embedding once per prompt: the per-image work of the
transformer's first layer is done once (when no mask input makes the dense embedding prompt-specific), and
prompts run in chunks so that per-call temporaries stay a few MiB (the allocator hands large blocks back to
the OS, and they are page-faulted in afresh on every allocation). In inference that per-image work is also
kept for the last few image embeddings (:class:`_SharedImages`): a further click on the same image skips it.
"""

import threading
import weakref
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from litesam import kernels
from litesam.errors import InvalidImageError, InvalidPromptError
from litesam.modeling.common import LayerNorm2d, write_count
from litesam.modeling.transformer import PreparedImage, TwoWayTransformer

# Prompts per chunk are chosen so that the largest temporary (the upscaled mask features, 16·h·w × C/8
# floats per prompt: 8 MiB at 1024, 3.3 MB at 640) stays within this; measured best among 4–32 MiB.
CHUNK_BYTES = 16 * 2**20
#: Image embeddings whose prepared image side a decoder keeps in inference (4 MB each at r640, 10 at r1024).
SHARED_IMAGES = 4


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them, on the last axis: ``…×input_dim`` → ``…×output_dim``."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        widths = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class MaskDecoder(nn.Module):
    """SAM's mask decoder.

    Args:
        transformer_dim: channel width ``C`` of the embeddings (256).
        transformer: the ``TwoWayTransformer`` run between output/prompt tokens and image tokens.
        num_multimask_outputs: masks returned when ``multimask_output`` is true (3); one more mask token
            serves single-mask output.
        activation: activation of the mask upscaling.
        iou_head_depth, iou_head_hidden_dim: layers and width of the IoU prediction MLP (3, 256).
        upscale_channels: output channels of the two transposed convolutions; None: SAM's ``(C/4, C/8)``.
            The second is also the width of the per-mask hypernetwork outputs (the mask features' width).
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        upscale_channels: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)

        # Two 2×2 stride-2 transposed convolutions: ×4 resolution, C → C1 → C2 channels (SAM: C/4, C/8).
        c1, c2 = upscale_channels or (transformer_dim // 4, transformer_dim // 8)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, c1, kernel_size=2, stride=2),
            LayerNorm2d(c1),
            activation(),
            nn.ConvTranspose2d(c1, c2, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, c2, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )
        self._shared_images = _SharedImages(SHARED_IMAGES)

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        min_iou: float | None = None,
        *,
        sparse_mask: Tensor | None = None,
        every_output: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Predict masks for ``B`` prompts on one image, or on one embedding per prompt.

        Args:
            image_embeddings: ``1×C×h×w`` float32 embedding of the image all prompts are on, or ``B×C×h×w``:
                prompt ``i`` on embedding ``i`` (prompts of several images decoded together, as in training).
            image_pe: ``1×C×h×w`` positional encoding of the embedding grid (``PromptEncoder.get_dense_pe()``).
            sparse_prompt_embeddings: ``B×N×C`` point and box tokens from the prompt encoder (``N`` may be 0).
            dense_prompt_embeddings: ``B×C×h×w`` mask-input embeddings, or ``1×C×h×w`` shared by all prompts.
                A batch that is a stride-0 expansion (the prompt encoder's no-mask embedding) counts as shared.
            multimask_output: true → the ``num_multimask_outputs`` ambiguity masks; false → the single mask.
            min_iou: if set, the masks of a prompt none of whose returned outputs has a predicted IoU (clipped
                to [0, 1]) ≥ ``min_iou`` are not computed: their logits are −inf (empty masks). For callers that
                drop such masks anyway (SegEvery's first filter): the upscaling, half of a prompt's cost, is
                skipped for them. Predicted IoUs and the other prompts' masks are unchanged.
            sparse_mask: ``B×N`` bool, False for padding sparse tokens (prompts of different token counts
                decoded in one pass, as training does; :mod:`litesam.modeling.transformer`); None: all real.
            every_output: return every mask token's output (``T = 1 + num_multimask_outputs``: the single
                mask first, then the ambiguity masks), whatever ``multimask_output`` says, for callers that
                pick per prompt.

        Returns:
            ``masks``: ``B×T×4h×4w`` float32 mask logits (``T`` = 3 or 1), covering the padded input frame at
            a quarter of its resolution; ``iou_pred``: ``B×T`` float32 predicted mask IoU.
        """
        self._check_inputs(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        b = sparse_prompt_embeddings.shape[0]
        _, c, h, w = image_embeddings.shape
        if every_output:
            selected = slice(0, self.num_mask_tokens)
        else:
            selected = slice(1, self.num_mask_tokens) if multimask_output else slice(0, 1)
        hyper_mlps = self.output_hypernetworks_mlps[selected]

        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
        token_mask = None
        if sparse_mask is not None:
            if sparse_mask.dtype != torch.bool or sparse_mask.shape != sparse_prompt_embeddings.shape[:2]:
                raise InvalidPromptError(
                    f"sparse_mask must be a B×N bool tensor of shape {tuple(sparse_prompt_embeddings.shape[:2])}, "
                    f"got {sparse_mask.dtype} {tuple(sparse_mask.shape)}"
                )
            token_mask = torch.cat([sparse_mask.new_ones((b, len(output_tokens))), sparse_mask], dim=1)
        dense = dense_prompt_embeddings
        per_prompt_image = image_embeddings.shape[0] > 1
        shared = not per_prompt_image and (dense.shape[0] == 1 or dense.stride(0) == 0)
        if shared:
            image = self._shared_images.prepare(self.transformer, image_embeddings, dense, image_pe)

        masks = tokens.new_empty((b, len(hyper_mlps), 4 * h, 4 * w))
        iou_pred = tokens.new_empty((b, len(hyper_mlps)))
        mask_channels = self.output_upscaling[3].out_channels
        chunk = max(1, CHUNK_BYTES // (16 * h * w * mask_channels * tokens.element_size()))
        for start in range(0, b, chunk):
            part = slice(start, start + chunk)
            if not shared:
                embedding = image_embeddings[part] if per_prompt_image else image_embeddings
                prompt_dense = dense[part] if dense.shape[0] > 1 else dense
                image = self.transformer.prepare_image(embedding + prompt_dense, image_pe)
            # Only the IoU token and the mask tokens up to the last selected one are read.
            hs, keys = self.transformer.forward_prepared(
                image, tokens[part], 1 + selected.stop, None if token_mask is None else token_mask[part]
            )
            part_iou = self.iou_prediction_head(hs[:, 0])[:, selected]
            iou_pred[part] = part_iou
            mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens][:, selected]
            hyper_in = torch.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(hyper_mlps)], dim=1)
            # The upscaling computes in its weights' dtype (bfloat16 on litesam.inference's bf16 path).
            upscale_dtype = self.output_upscaling[0].weight.dtype
            hyper_in, keys = hyper_in.to(upscale_dtype), keys.to(upscale_dtype)
            needed = None if min_iou is None else (part_iou.clamp(0.0, 1.0) >= min_iou).any(dim=1)
            if needed is None or bool(needed.all()):
                self._write_masks(hyper_in, self._upscale(keys), h, w, masks[part])
                continue
            masks[part][~needed] = float("-inf")
            rows = needed.nonzero().flatten()
            if len(rows):
                kept = masks.new_empty((len(rows), *masks.shape[1:]))
                self._write_masks(hyper_in[rows], self._upscale(keys[rows]), h, w, kept)
                masks[part][rows] = kept
        return masks, iou_pred

    def _check_inputs(
        self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor
    ) -> None:
        c = self.transformer_dim
        if (
            image_embeddings.ndim != 4
            or image_embeddings.shape[1] != c
            or image_embeddings.shape[0] not in (1, sparse.shape[0])
        ):
            raise InvalidImageError(
                f"image_embeddings must be 1×{c}×h×w (one image) or B×{c}×h×w (one per prompt, "
                f"B = {sparse.shape[0]}), got shape {tuple(image_embeddings.shape)}"
            )
        grid = tuple(image_embeddings.shape[2:])
        if tuple(image_pe.shape) != (1, c, *grid):
            raise InvalidImageError(
                f"image_pe must be 1×{c}×{grid[0]}×{grid[1]}, got shape {tuple(image_pe.shape)}"
            )
        if sparse.ndim != 3 or sparse.shape[2] != c:
            raise InvalidPromptError(
                f"sparse prompt embeddings must be B×N×{c}, got shape {tuple(sparse.shape)}"
            )
        if (
            dense.ndim != 4
            or tuple(dense.shape[1:]) != (c, *grid)
            or dense.shape[0] not in (1, sparse.shape[0])
        ):
            raise InvalidPromptError(
                f"dense prompt embeddings must be B×{c}×{grid[0]}×{grid[1]} with B = {sparse.shape[0]} "
                f"(or 1, shared), got shape {tuple(dense.shape)}"
            )

    def _upscale(self, keys: Tensor) -> Tensor:
        """``B×M×C`` image tokens → ``B×16M×C2`` upscaled features, rows ordered (y, x, ky1, kx1, ky2, kx2).

        Output pixel ``(4y + 2·ky1 + ky2, 4x + 2·kx1 + kx2)``; equal to ``output_upscaling`` on the
        ``B×C×h×w`` map, but computed on channels-last rows without layout changes.
        """
        up1, norm, act1, up2, act2 = self.output_upscaling
        b, m, c = keys.shape
        x = act1(norm.forward_channels_last(_stride2_transposed_conv(keys.reshape(b * m, c), up1)))
        if type(act2) is nn.GELU and act2.approximate == "none":  # SAM's: fused into the product
            return _stride2_transposed_conv(x, up2, kernels.linear_gelu).view(b, 16 * m, -1)
        return act2(_stride2_transposed_conv(x, up2)).view(b, 16 * m, -1)

    @staticmethod
    def _write_masks(hyper_in: Tensor, features: Tensor, h: int, w: int, out: Tensor) -> None:
        """Mask logits ``hyper_in`` (``B×T×C2``) · ``features`` (from ``_upscale``) into ``out`` ``B×T×4h×4w``."""
        b, t, _ = hyper_in.shape
        if torch.is_grad_enabled() and features.requires_grad:
            # Training: pixels × masks, so that the gradient reaching ``features`` is a plain product
            # (B×16M×T · B×T×C2) rather than a transposed one that autograd copies before the upscaling's
            # backward (litesam_tiny's training step: 3 % faster at two threads, 1 % at one).
            logits = torch.bmm(features, hyper_in.transpose(1, 2)).view(b, h, w, 2, 2, 2, 2, t)
            out.view(b, t, h, 2, 2, w, 2, 2).copy_(logits.permute(0, 7, 1, 3, 5, 2, 4, 6))
        else:
            # Inference: masks × pixels, 1.2–1.5× faster than the other orientation in forward only. The two
            # kx2 columns of a pixel pair are adjacent in both layouts, so the permuted copy moves them as one
            # 8-byte element: 12× faster than float by float (a 5-prompt r640 chunk, one core, AMD Zen 5).
            logits = torch.bmm(hyper_in, features.transpose(1, 2)).to(out.dtype)
            pairs = logits.view(torch.float64).view(b, t, h, w, 2, 2, 2)
            out.view(torch.float64).view(b, t, h, 2, 2, w, 2).copy_(pairs.permute(0, 1, 2, 4, 6, 3, 5))


def _stride2_transposed_conv(x: Tensor, conv: nn.ConvTranspose2d, product=kernels.linear) -> Tensor:
    """A 2×2, stride-2 transposed convolution on channels-last pixel rows: ``R×C_in`` → ``4R×C_out``.

    Each input pixel maps to its own 2×2 output block, so the convolution is one matrix product per pixel
    (on the process's float32 kernel, :mod:`litesam.kernels`); output rows are ordered (input row, ky, kx).
    ``product``: ``kernels.linear``, or ``kernels.linear_gelu`` for the convolution followed by an erf GELU.
    """
    c_in, c_out, kh, kw = conv.weight.shape
    weight = conv.weight.permute(2, 3, 1, 0).reshape(kh * kw * c_out, c_in)  # rows (ky, kx, c_out)
    return product(x, weight, conv.bias.repeat(kh * kw)).view(-1, c_out)


class _SharedImages:
    """The transformer's prompt-independent image side (``TwoWayTransformer.prepare_image`` of the embedding
    plus the no-mask embedding) for the last ``size`` image embeddings decoded in inference, so that further
    clicks on an image skip it (at r640 / r1024 on one core: 4.3 / 14.5 ms of a 20 / 51 ms click decode).

    Kept only where it cannot go stale unnoticed: with gradients off, for a dense prompt embedding that is a
    broadcast channel vector (the no-mask embedding; a mask input's differs per call and is never kept), and
    reused only for the same embedding tensor (a weak reference: it is not kept alive), the same dense vector
    and positional encoding (both kept alive, so their memory cannot be reused by other tensors), the same
    first-layer parameter tensors, and unchanged write counts of all of them
    (:func:`litesam.modeling.common.write_count`; an inference-mode embedding has none and is taken as
    read-only, as the predictor's embeddings are), in the same inference mode. Thread-safe; the values equal
    a fresh ``prepare_image`` exactly (the same operations on the same inputs).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[int, tuple] = OrderedDict()  # id(embedding) → entry
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"size": self.size}  # a copied or pickled decoder starts with nothing kept

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["size"])

    def prepare(
        self, transformer: TwoWayTransformer, embeddings: Tensor, dense: Tensor, image_pe: Tensor
    ) -> PreparedImage:
        """``prepare_image(embeddings + dense[:1], image_pe)`` of a 1×C×h×w embedding: kept or computed."""
        if torch.is_grad_enabled() or self.size == 0 or dense.stride(2) or dense.stride(3):
            return transformer.prepare_image(embeddings + dense[:1], image_pe)
        parameters = tuple(transformer.layers[0].parameters())
        stamp = (
            torch.is_inference_mode_enabled(),
            write_count(embeddings),
            (dense.data_ptr(), dense.dtype, dense.shape[1], dense.stride(1), write_count(dense)),
            write_count(image_pe),
            tuple(write_count(p) for p in parameters),
        )
        with self._lock:
            entry = self._entries.get(id(embeddings))
            if entry is not None:
                reference, kept_stamp, kept_alive, prepared = entry
                if (
                    reference() is embeddings
                    and kept_stamp == stamp
                    and kept_alive[1] is image_pe
                    and all(a is b for a, b in zip(kept_alive[2], parameters, strict=True))
                ):
                    self._entries.move_to_end(id(embeddings))
                    return prepared
        prepared = transformer.prepare_image(embeddings + dense[:1], image_pe)
        with self._lock:
            kept_alive = (dense, image_pe, parameters)
            self._entries[id(embeddings)] = (weakref.ref(embeddings), stamp, kept_alive, prepared)
            self._entries.move_to_end(id(embeddings))
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return prepared
