"""Prompt encoder: turns points, boxes and mask inputs into the mask decoder's sparse and dense embeddings.

Coordinates are ``(x, y)`` in pixels of the *input frame* (the resized image, placed at the top left of the
padded ``S×S`` model input); boxes are ``XYXY`` in the same units. Attribute and buffer names are Segment
Anything's, so a SAM checkpoint's ``prompt_encoder.*`` keys load with ``strict=True``.
"""

import math

import torch
from torch import nn

from litesam.errors import InvalidPromptError
from litesam.modeling.common import LayerNorm2d, write_count

# Labels of point prompts. Any other label value gets only its positional encoding (SAM behaves the same).
PAD_LABEL = -1
BACKGROUND_LABEL = 0
FOREGROUND_LABEL = 1


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of 2-D positions.

    A position ``p`` in ``[0, 1]²`` (``(x, y)`` order) maps to ``[sin(2π·u), cos(2π·u)]`` with
    ``u = (2p - 1) @ G``, where ``G`` is a fixed ``2×num_pos_feats`` Gaussian matrix stored as the buffer
    ``positional_encoding_gaussian_matrix`` (saved in the state dict, not a parameter). Output width is
    ``2·num_pos_feats``.
    """

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((2, num_pos_feats)))

    def _encode(self, unit_coords: torch.Tensor) -> torch.Tensor:
        """``…×2`` float coordinates in ``[0, 1]`` (x, y) → ``…×(2·num_pos_feats)`` float32 features."""
        phase = (2.0 * unit_coords - 1.0) @ self.positional_encoding_gaussian_matrix
        phase = (2.0 * math.pi) * phase
        return torch.cat([phase.sin(), phase.cos()], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the centres of an ``h×w`` grid of cells: ``(2·num_pos_feats)×h×w`` float32."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w)], dim=-1)  # h×w×2, (x, y)
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode ``B×N×2`` (x, y) pixel coordinates of an ``(H, W)`` frame: returns ``B×N×(2·num_pos_feats)``.

        Coordinates are divided by ``(W, H)``; they are not shifted here (callers add the half-pixel offset).
        """
        h, w = image_size
        dtype = torch.promote_types(coords.dtype, torch.float32)  # float64 prompts are divided in float64
        frame = torch.tensor([w, h], dtype=dtype, device=coords.device)
        return self._encode((coords.to(dtype) / frame).to(torch.float32))


class PromptEncoder(nn.Module):
    """Embeds point, box and mask prompts for the mask decoder.

    Args:
        embed_dim: channel width ``C`` of every embedding (256 in SAM).
        image_embedding_size: ``(h, w)`` of the image embedding (``S/16``: 64×64 at 1024, 40×40 at 640).
        input_image_size: ``(S, S)`` size of the padded model input, in input-frame pixels.
        mask_in_chans: hidden channels of the mask-input downscaler (16 in SAM).
        activation: activation class of the mask-input downscaler.

    With SAM's settings (256, 16) the module has exactly 6,220 parameters.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)

        # 0: background point, 1: foreground point, 2: box top-left corner, 3: box bottom-right corner.
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(
            [nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)]
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self._dense_pe: tuple | None = None  # (stamp, Gaussian matrix, encoding) of get_dense_pe

    def set_input_size(
        self, input_image_size: tuple[int, int], image_embedding_size: tuple[int, int]
    ) -> None:
        """Embed prompts for another input side: ``(S', S')`` input pixels, ``(S'/16, S'/16)`` cells.

        Nothing learned depends on the sizes (the random Fourier features take coordinates normalised by the
        input size), so the same weights serve any side.
        """
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of every image-embedding cell: ``1×C×h×w`` float32 (same frame as the points).

        Computed once and kept (1.1 / 2.5 ms a call at r640 / r1024 on one core, paid by every click
        otherwise), so callers must not write into it. It is computed again when the grid size or the
        Gaussian matrix changes (another tensor, or an in-place write), and one made in inference mode is
        never handed out outside it (such a tensor cannot enter autograd).
        """
        gaussian = self.pe_layer.positional_encoding_gaussian_matrix
        stamp = (self.image_embedding_size, write_count(gaussian), torch.is_inference_mode_enabled())
        kept = self._dense_pe
        if kept is None or kept[0] != stamp or kept[1] is not gaussian:
            kept = self._dense_pe = (stamp, gaussian, self.pe_layer(self.image_embedding_size).unsqueeze(0))
        return kept[2]

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """``B×N×2`` (x, y) input-frame px and ``B×N`` labels → ``B×(N+pad)×C``."""
        embedding = self.pe_layer.forward_with_coords(coords + 0.5, self.input_image_size)  # pixel centres
        if pad:
            # Without a box, SAM appends one padding point so the token count matches its training.
            b = coords.shape[0]
            embedding = torch.cat([embedding, embedding.new_zeros(b, 1, self.embed_dim)], dim=1)
            labels = torch.cat([labels, labels.new_full((b, 1), PAD_LABEL)], dim=1)
        labels = labels.unsqueeze(-1)
        embedding = torch.where(labels == PAD_LABEL, self.not_a_point_embed.weight, embedding)
        embedding = embedding + (labels == BACKGROUND_LABEL) * self.point_embeddings[0].weight
        return embedding + (labels == FOREGROUND_LABEL) * self.point_embeddings[1].weight

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``B×4`` XYXY input-frame px → ``B×2×C`` (one token per corner)."""
        corners = boxes.reshape(-1, 2, 2) + 0.5  # pixel centres
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embed = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return embedding + corner_embed

    def _batch_size(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> int:
        """Check prompt shapes (raising ``InvalidPromptError``) and return their common batch size ``B``."""
        sizes = {}
        if points is not None:
            if not isinstance(points, (tuple, list)) or len(points) != 2:
                raise InvalidPromptError("points must be a (coords B×N×2, labels B×N) pair of tensors")
            coords, labels = points
            if coords.ndim != 3 or coords.shape[-1] != 2:
                raise InvalidPromptError(
                    f"point coords must be B×N×2 (x, y), got shape {tuple(coords.shape)}"
                )
            if tuple(labels.shape) != tuple(coords.shape[:2]):
                raise InvalidPromptError(
                    f"point labels must be B×N = {tuple(coords.shape[:2])} to match the coords, "
                    f"got shape {tuple(labels.shape)}"
                )
            sizes["points"] = coords.shape[0]
        if boxes is not None:
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise InvalidPromptError(f"boxes must be B×4 XYXY, got shape {tuple(boxes.shape)}")
            sizes["boxes"] = boxes.shape[0]
        if masks is not None:
            expected = (1, *self.mask_input_size)
            if masks.ndim != 4 or tuple(masks.shape[1:]) != expected:
                raise InvalidPromptError(
                    f"mask inputs must be B×{expected[0]}×{expected[1]}×{expected[2]} logits, "
                    f"got shape {tuple(masks.shape)}"
                )
            sizes["masks"] = masks.shape[0]
        if len(set(sizes.values())) > 1:
            raise InvalidPromptError(f"prompt batch sizes differ: {sizes}")
        return next(iter(sizes.values()), 1)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed a batch of ``B`` prompts.

        Args:
            points: ``(coords, labels)``: coords ``B×N×2`` float (x, y) input-frame px; labels ``B×N`` int
                (1 foreground, 0 background, -1 padding). ``None`` for no points.
            boxes: ``B×4`` float XYXY input-frame px, or ``None``.
            masks: ``B×1×4h×4w`` float mask logits (e.g. a previous low-res prediction), or ``None``.

        Returns:
            ``sparse``: ``B×N'×C`` float32, one token per point (plus one padding point when there is no
            box) and two per box; ``N' = 0`` when there are neither. ``dense``: ``B×C×h×w`` float32; without
            mask inputs it is one learned vector expanded over the batch and grid (a stride-0 view, which
            the mask decoder uses to share per-image work across prompts).
        """
        b = self._batch_size(points, boxes, masks)
        device = self.no_mask_embed.weight.device
        tokens = []
        if points is not None:
            coords, labels = points
            tokens.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            tokens.append(self._embed_boxes(boxes))
        if tokens:
            sparse = torch.cat(tokens, dim=1) if len(tokens) > 1 else tokens[0]
        else:
            sparse = torch.empty((b, 0, self.embed_dim), device=device)

        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, h, w)
        return sparse, dense
