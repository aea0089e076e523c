"""Two-way transformer of the mask decoder: prompt tokens and image tokens attend to each other.

Module, attribute and parameter names are Segment Anything's, so a SAM checkpoint's
``mask_decoder.transformer.*`` keys load with ``strict=True``, and outputs equal SAM's up to float rounding.

The arithmetic is arranged for the decoder's real workload: one image and ``B`` prompts of a few tokens
each (``N`` ≈ 7) against ``M = h·w`` image tokens (1,600 at 640, 4,096 at 1024):

* Image tokens are shared by every prompt until the first image-to-token attention, so the first layer's
  image-side projections are computed once (``prepare_image``) instead of once per prompt.
* After that, every prompt has its own ``M×C`` image tokens. Projecting them (``M×C`` by ``C×C/2``, three
  times per layer) dominates SAM's cost; when ``heads·N`` is smaller than the internal width the small side
  is projected into the ``C``-wide input space instead (``(x·Wᵀ)·k = x·(W·k)``), and the output projection
  is folded into the token values (softmax rows sum to one, so the bias can be folded in as well).

Prompts with different numbers of sparse tokens can run in one pass (training decodes point, box and point +
box prompts together): ``token_mask`` (``B×N`` bool, False for a padding token) hides padding tokens from every
attention that reads tokens as keys (token self-attention, image-to-token attention). A padding token's own
outputs are computed and meaningless; every other output equals its prompt's unpadded pass up to rounding.
"""

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from litesam import kernels
from litesam.modeling.common import MLPBlock


class PreparedImage(NamedTuple):
    """Image-side tensors of the first transformer layer, computed once per image embedding.

    ``Bi`` is 1 when every prompt shares the image tokens (no mask input), else the number of prompts.
    ``M = h·w`` tokens in row-major (y, x) order; ``C`` channels; ``H`` heads of width ``d``.
    """

    keys: Tensor  # Bi×M×C image tokens (image embedding plus dense prompt embedding)
    key_pe: Tensor  # 1×M×C or Bi×M×C positional encoding of the image tokens
    first_keys: Tensor  # Bi×H×M×d: layer 0 token-to-image key projection of keys + key_pe
    first_values: Tensor  # Bi×H×M×d: layer 0 token-to-image value projection of keys
    first_queries: Tensor  # Bi×H×M×d: layer 0 image-to-token query projection of keys + key_pe


class Attention(nn.Module):
    """Multi-head attention whose projections may narrow the width to ``embedding_dim // downsample_rate``.

    Inputs are ``B×N×C`` token tensors (``C = embedding_dim``). Besides the plain ``forward`` it offers the
    two cross-attention directions of the two-way transformer, computed without per-prompt projections of
    the (large) image side where that is cheaper.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must divide the internal width {self.internal_dim}")
        self.head_dim = self.internal_dim // num_heads
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def split_heads(self, x: Tensor) -> Tensor:
        """``B×N×(H·d)`` → ``B×H×N×d`` (a view)."""
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _head_weights(self, linear: nn.Linear) -> Tensor:
        """An input projection's weight per head: ``H×d×C``."""
        return linear.weight.view(self.num_heads, self.head_dim, self.embedding_dim)

    def _fold_pays(self, num_tokens: int) -> bool:
        """Whether projecting ``num_tokens`` small-side tokens per head into the ``C``-wide space is cheaper
        than projecting the image side to the internal width."""
        return self.num_heads * num_tokens < self.internal_dim

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """Plain attention: ``q`` ``B×Nq×C``; ``k``, ``v`` ``B×Nk×C`` (or ``1×Nk×C``, shared) → ``B×Nq×C``.

        ``key_mask``: ``B×Nk`` bool, False for keys no query may read (per-prompt keys only); None: all.
        """
        k_heads, v_heads = self.split_heads(self.k_proj(k)), self.split_heads(self.v_proj(v))
        return self.attend_projected(q, k_heads, v_heads, key_mask)

    def attend_projected(
        self, q: Tensor, k_heads: Tensor, v_heads: Tensor, key_mask: Tensor | None = None
    ) -> Tensor:
        """Attention with keys and values already projected and split: ``Bk×H×Nk×d`` with ``Bk`` 1 or ``B``.

        ``q``: ``B×Nq×C`` (not projected); ``key_mask`` as in ``forward`` (only with ``Bk = B``). Returns ``B×Nq×C``.
        """
        qh = self.split_heads(self.q_proj(q))
        b, h, n, d = qh.shape
        if k_heads.shape[0] == 1 and b > 1 and key_mask is None:
            # Shared keys: every prompt's queries become rows of one attention; keys are never copied.
            out = F.scaled_dot_product_attention(qh.transpose(0, 1).reshape(1, h, b * n, d), k_heads, v_heads)
            out = out.view(h, b, n, d).permute(1, 2, 0, 3)
        else:
            mask = None if key_mask is None else key_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(qh, k_heads, v_heads, attn_mask=mask).transpose(1, 2)
        return self.out_proj(out.reshape(b, n, h * d))

    def tokens_to_image(self, tokens: Tensor, image_keys: Tensor, image_values: Tensor) -> Tensor:
        """Tokens attend to per-prompt image tokens: equal to ``forward(tokens, image_keys, image_values)``.

        ``tokens``: ``B×N×C``; ``image_keys`` (with PE), ``image_values``: ``B×M×C``. Returns ``B×N×C``.
        """
        b, n, _ = tokens.shape
        if not self._fold_pays(n):
            return self.forward(tokens, image_keys, image_values)
        h, d, c = self.num_heads, self.head_dim, self.embedding_dim
        qh = self.split_heads(self.q_proj(tokens)) * d**-0.5  # B×H×N×d
        # score = q·(Wk·x + bk) = (q·Wk)·x + q·bk: the queries move to the input space, x stays unprojected.
        # The q·bk term is constant along the softmax axis (the image tokens), so it cancels and is skipped.
        q_in = torch.einsum("bhnd,hdc->bhnc", qh, self._head_weights(self.k_proj)).reshape(b, h * n, c)
        image_keys, image_values = image_keys.expand(b, -1, -1), image_values.expand(b, -1, -1)
        attn = kernels.bmm(q_in, image_keys.transpose(1, 2)).softmax(dim=-1)  # B×(H·N)×M
        # softmax(·)·(Wv·x + bv) = Wv·(softmax(·)·x) + bv, since every row of the softmax sums to one.
        mixed = kernels.bmm(attn, image_values).view(b, h, n, c)
        out = torch.einsum("bhnc,hdc->bnhd", mixed, self._head_weights(self.v_proj)).reshape(b, n, h * d)
        return self.out_proj(out + self.v_proj.bias)

    def image_to_tokens(
        self, residual: Tensor, image_queries: Tensor, tokens: Tensor, values: Tensor,
        token_mask: Tensor | None = None,
    ) -> Tensor:
        """Per-prompt image tokens attend to the prompt tokens; returns ``residual`` plus the attention output.

        Equal to ``residual + forward(image_queries, tokens, values, token_mask)``. ``image_queries`` (with PE):
        ``B×M×C``; ``tokens`` (with PE), ``values``: ``B×N×C``; ``residual``: ``B×M×C`` (or ``1×M×C``);
        ``token_mask``: ``B×N`` bool or None. Returns ``B×M×C``.
        """
        b, n, _ = tokens.shape
        h, d, c = self.num_heads, self.head_dim, self.embedding_dim
        kh = self.split_heads(self.k_proj(tokens)) * d**-0.5  # B×H×N×d
        if self._fold_pays(n):
            # score = (Wq·x + bq)·k = x·(Wqᵀ·k) + bq·k: the keys move to the input space.
            k_in = torch.einsum("bhnd,hdc->bhnc", kh, self._head_weights(self.q_proj)).reshape(b, h * n, c)
            k_bias = (kh * self.q_proj.bias.view(h, 1, d)).sum(-1).reshape(b, h * n, 1)
            scores = kernels.bmm(k_in, image_queries.expand(b, -1, -1).transpose(1, 2)).add_(k_bias)
        else:
            qh = self.split_heads(self.q_proj(image_queries))
            scores = kh @ qh.transpose(-1, -2)
        return self._add_token_values(residual, scores.reshape(b, h * n, -1), values, token_mask)

    def image_to_tokens_projected(
        self, residual: Tensor, query_heads: Tensor, tokens: Tensor, values: Tensor,
        token_mask: Tensor | None = None,
    ) -> Tensor:
        """``image_to_tokens`` with the image queries already projected and split (``Bi×H×M×d``, ``Bi`` 1 or B)."""
        b, n, _ = tokens.shape
        h, m, d = query_heads.shape[1:]
        kh = self.split_heads(self.k_proj(tokens)) * d**-0.5  # B×H×N×d
        if query_heads.shape[0] == 1 and b > 1:
            # Shared queries: all prompts' keys stacked in one product per head; nothing is copied B times.
            scores = torch.bmm(kh.transpose(0, 1).reshape(h, b * n, d), query_heads[0].transpose(1, 2))
            scores = scores.view(h, b, n, m).transpose(0, 1)
        else:
            scores = kh @ query_heads.transpose(-1, -2)
        return self._add_token_values(residual, scores.reshape(b, h * n, m), values, token_mask)

    def _add_token_values(
        self, residual: Tensor, scores: Tensor, values: Tensor, token_mask: Tensor | None = None
    ) -> Tensor:
        """``residual + out_proj(attention·v_proj(values))`` for scaled scores ``B×(H·N)×M`` (head-major rows).

        The softmax runs over each head's ``N`` rows; with the image axis innermost it vectorises, where a
        softmax over a last axis of ~7 tokens would not. Tokens where ``token_mask`` (``B×N``) is False get
        no attention.
        """
        b, n, _ = values.shape
        h, m = self.num_heads, scores.shape[-1]
        scores = scores.view(b, h, n, m)
        if token_mask is not None:
            scores = scores.masked_fill(~token_mask[:, None, :, None], float("-inf"))
        attn = scores.reshape(b * h, n, m).softmax(dim=1).view(b, h * n, m)
        vh = self.split_heads(self.v_proj(values))  # B×H×N×d
        if self._fold_pays(n):
            # Fold out_proj into the token values (H·N rows of width C); its bias is spread over the heads,
            # whose attention columns each sum to one.
            w_out = self.out_proj.weight.view(self.embedding_dim, h, self.head_dim)
            v_out = torch.einsum("bhnd,chd->bhnc", vh, w_out) + self.out_proj.bias / h
            return kernels.baddbmm(residual, attn.transpose(1, 2), v_out.reshape(b, h * n, self.embedding_dim))
        out = attn.view(b, h, n, m).transpose(-1, -2) @ vh  # B×H×M×d
        return residual + self.out_proj(out.transpose(1, 2).reshape(b, m, self.internal_dim))


class TwoWayAttentionBlock(nn.Module):
    """One layer: token self-attention, tokens→image cross-attention, token MLP, image→tokens cross-attention.

    Each sub-layer is followed by a residual sum and LayerNorm (``norm1`` … ``norm4``). The first layer of the
    transformer skips the positional encoding and the residual in its self-attention (SAM's design).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def _self_attention(self, queries: Tensor, query_pe: Tensor, token_mask: Tensor | None) -> Tensor:
        if self.skip_first_layer_pe:
            return self.norm1(self.self_attn(queries, queries, queries, token_mask))
        q = queries + query_pe
        return self.norm1(queries + self.self_attn(q, q, queries, token_mask))

    def _token_mlp(self, queries: Tensor) -> Tensor:
        return self.norm3(queries + self.mlp(queries))

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor, token_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``queries``, ``query_pe``: ``B×N×C``; ``keys``: ``B×M×C``; ``key_pe``: ``1×M×C`` or ``B×M×C``;
        ``token_mask``: ``B×N`` bool (False: a padding token) or None.

        Returns the updated ``(queries B×N×C, keys B×M×C)``.
        """
        queries = self._self_attention(queries, query_pe, token_mask)
        keys_pe = keys + key_pe
        queries = self.norm2(
            queries + self.cross_attn_token_to_image.tokens_to_image(queries + query_pe, keys_pe, keys)
        )
        queries = self._token_mlp(queries)
        keys = self.cross_attn_image_to_token.image_to_tokens(
            keys, keys_pe, queries + query_pe, queries, token_mask
        )
        return queries, self.norm4(keys)

    def prepare(self, keys: Tensor, key_pe: Tensor) -> PreparedImage:
        """Project the image side once for ``forward_prepared`` (``keys`` ``Bi×M×C``, ``key_pe`` ``1×M×C``)."""
        keys_pe = keys + key_pe
        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        return PreparedImage(
            keys=keys,
            key_pe=key_pe,
            first_keys=t2i.split_heads(t2i.k_proj(keys_pe)),
            first_values=t2i.split_heads(t2i.v_proj(keys)),
            first_queries=i2t.split_heads(i2t.q_proj(keys_pe)),
        )

    def forward_prepared(
        self, queries: Tensor, query_pe: Tensor, image: PreparedImage, token_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``forward`` with the image side from ``prepare``: same outputs, ``B×N×C`` and ``B×M×C``."""
        queries = self._self_attention(queries, query_pe, token_mask)
        t2i = self.cross_attn_token_to_image.attend_projected(
            queries + query_pe, image.first_keys, image.first_values
        )
        queries = self._token_mlp(self.norm2(queries + t2i))
        keys = self.cross_attn_image_to_token.image_to_tokens_projected(
            image.keys, image.first_queries, queries + query_pe, queries, token_mask
        )
        return queries, self.norm4(keys)


class TwoWayTransformer(nn.Module):
    """SAM's two-way transformer: ``depth`` two-way blocks, then a final tokens→image attention.

    Args:
        depth: number of ``TwoWayAttentionBlock`` layers (2 in SAM).
        embedding_dim: channel width ``C`` of tokens and image embedding (256).
        num_heads: attention heads (8); must divide ``C`` and ``C // attention_downsample_rate``.
        mlp_dim: hidden width of each block's token MLP (2048).
        activation: activation of the token MLP.
        attention_downsample_rate: cross-attention width is ``C // rate`` (2 → 128).
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def prepare_image(self, image_embedding: Tensor, image_pe: Tensor) -> PreparedImage:
        """Flatten the image side and run its prompt-independent first-layer projections.

        ``image_embedding``: ``Bi×C×h×w`` (``Bi = 1`` when shared by all prompts); ``image_pe``: ``1×C×h×w``
        (or ``Bi×C×h×w``). The result can be reused by ``forward_prepared`` for any number of prompt chunks.
        """
        # Bi×M×C, tokens in row-major (y, x) order; made contiguous once, as every prompt reads them.
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        return self.layers[0].prepare(keys, key_pe)

    def forward_prepared(
        self,
        image: PreparedImage,
        point_embedding: Tensor,
        num_outputs: int | None = None,
        token_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run the transformer for ``B×N×C`` prompt tokens against a prepared image.

        Returns ``(queries B×N'×C, keys B×M×C)``: the processed tokens and image tokens. Tokens attend
        independently in the final tokens→image attention, so with ``num_outputs`` only the first
        ``N' = num_outputs`` tokens (those the caller reads) go through it; by default all ``N`` do.
        ``token_mask`` (``B×N`` bool, False: a padding token no attention reads) lets prompts of different
        token counts share a pass (module docstring); None: every token is real.
        """
        queries, keys = self.layers[0].forward_prepared(point_embedding, point_embedding, image, token_mask)
        for layer in self.layers[1:]:
            queries, keys = layer(queries, keys, point_embedding, image.key_pe, token_mask)
        queries, query_pe = queries[:, :num_outputs], point_embedding[:, :num_outputs]
        attn = self.final_attn_token_to_image.tokens_to_image(queries + query_pe, keys + image.key_pe, keys)
        return self.norm_final_attn(queries + attn), keys

    def forward(
        self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor
    ) -> tuple[Tensor, Tensor]:
        """SAM's interface: ``image_embedding`` ``Bi×C×h×w`` (``Bi`` 1 or B), ``image_pe`` ``1×C×h×w`` or
        ``Bi×C×h×w``, ``point_embedding`` ``B×N×C`` → ``(queries B×N×C, keys B×h·w×C)``."""
        return self.forward_prepared(self.prepare_image(image_embedding, image_pe), point_embedding)
