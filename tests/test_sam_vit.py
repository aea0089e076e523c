"""SAM ViT engine: the same keys, shapes and parameter counts as Meta's ImageEncoderViT, and the same outputs."""

from functools import partial

import pytest
import torch

from litesam.build import _build
from litesam.variants import get_variant
from litesam.modeling import sam_vit
from litesam.modeling.sam_vit import SamViT, SamViTConfig
from tests import sam_reference as ref
from tests.engine_support import randomise

META_LAYOUTS = {
    "vit_b": (SamViTConfig.vit_b(), "sam_vit_b"),
    "vit_l": (SamViTConfig.vit_l(), "sam_vit_l"),
    "vit_h": (SamViTConfig.vit_h(), "sam_vit_h"),
}


def _meta_encoder(cfg: SamViTConfig, img_size: int) -> torch.nn.Module:
    """Meta's ImageEncoderViT with the arguments ``build_sam._build_sam`` passes, for this layout."""
    return ref.ImageEncoderViT(
        img_size=img_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        out_chans=cfg.out_chans,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=cfg.window_size,
        global_attn_indexes=cfg.global_attn_indexes,
    )


@pytest.mark.parametrize("kind", list(META_LAYOUTS))
def test_full_layouts_have_metas_keys_shapes_and_parameter_counts(kind):
    cfg, variant = META_LAYOUTS[kind]
    with torch.device("meta"):  # shapes only: ViT-H has 632 M parameters
        meta = ref.sam_model_registry[kind]()
        ours = _build(get_variant(variant))
    reference = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == reference
    assert sum(p.numel() for p in ours.image_encoder.parameters()) == sum(
        p.numel() for p in meta.image_encoder.parameters()
    )
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in meta.parameters())


@pytest.mark.parametrize(
    "cfg, img_size, batch",
    [
        # 16×16 tokens: windows padded 16 → 28, a global block in the middle.
        (SamViTConfig(embed_dim=96, depth=3, num_heads=3, global_attn_indexes=(1,)), 256, 1),
        # 28×28 tokens (no padding), global first, two images at once.
        (SamViTConfig(embed_dim=64, depth=2, num_heads=4, global_attn_indexes=(0,)), 448, 2),
    ],
)
def test_reduced_encoders_equal_metas(cfg, img_size, batch):
    torch.manual_seed(0)
    meta = randomise(_meta_encoder(cfg, img_size), seed=1)
    ours = SamViT(cfg, img_size=img_size).eval()
    ours.load_state_dict(meta.state_dict(), strict=True)
    x = torch.randn(batch, 3, img_size, img_size)
    with torch.inference_mode():
        expected = meta(x)
        embedding, proposals = ours(x)
    assert proposals is None
    assert embedding.shape == (batch, 256, img_size // 16, img_size // 16)
    assert (embedding - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_global_attention_in_head_chunks_equals_one_pass(monkeypatch):
    cfg = SamViTConfig(embed_dim=64, depth=1, num_heads=4, global_attn_indexes=(0,))
    torch.manual_seed(0)
    encoder = randomise(SamViT(cfg, img_size=256), seed=2)
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        whole, _ = encoder(x)
        monkeypatch.setattr(sam_vit, "ATTENTION_CHUNK_BYTES", 4 * 256 * 256)  # one head's 256×256 logits
        chunked, _ = encoder(x)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


def test_relative_position_terms_equal_metas_decomposition():
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

    torch.manual_seed(0)
    q = torch.randn(3, 5 * 7, 8)
    rel_h, rel_w = torch.randn(9, 8), torch.randn(13, 8)
    expected = add_decomposed_rel_pos(torch.zeros(3, 35, 35), q, rel_h, rel_w, (5, 7), (5, 7))
    along_h, along_w = sam_vit.relative_position_terms(q, rel_h, rel_w, (5, 7))
    summed = (along_h[..., :, None] + along_w[..., None, :]).reshape(3, 35, 35)
    torch.testing.assert_close(summed, expected)
