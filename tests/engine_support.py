"""Reference SAM-family models for the engine tests, with seeded random weights, and files in official formats.

No official weights exist here, so every "official checkpoint" in the tests is the state dict of a model built
by the reference code itself (Meta's ``segment_anything``, MobileSAM's ``mobile_sam``), with random weights,
saved with ``torch.save`` exactly as those projects publish theirs (a bare state dict).
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import torch

from tests import sam_reference as ref


def randomise(module: torch.nn.Module, seed: int, scale: float = 0.02) -> torch.nn.Module:
    """Perturb every parameter (noise of std ``scale``; relative-position tables and attention biases get
    0.5 so that they matter) and give BatchNorms non-trivial running statistics; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            std = 0.5 if name.endswith(("rel_pos_h", "rel_pos_w", "attention_biases")) else scale
            p.add_(torch.randn(p.shape, generator=generator) * std)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=generator) + 0.5)
    return module.eval()  # MobileSAM's attention caches its biases on eval(): call it after the weights change


def tiny_vit_sam(seed: int = 0) -> torch.nn.Module:
    """Meta's ``Sam`` with the ``sam_vit_tiny`` layout (ViT 64 channels, 2 blocks, block 1 global, input 256)."""
    torch.manual_seed(seed)
    encoder = ref.ImageEncoderViT(
        img_size=256,
        patch_size=16,
        embed_dim=64,
        depth=2,
        num_heads=2,
        mlp_ratio=4,
        out_chans=256,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=14,
        global_attn_indexes=(1,),
    )
    sam = ref.Sam(
        image_encoder=encoder,
        prompt_encoder=ref.PromptEncoder(
            embed_dim=256, image_embedding_size=(16, 16), input_image_size=(256, 256), mask_in_chans=16
        ),
        mask_decoder=ref.MaskDecoder(
            num_multimask_outputs=3,
            transformer=ref.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return randomise(sam, seed)


def meta_sam(kind: str, seed: int = 0) -> torch.nn.Module:
    """Meta's ``sam_model_registry[kind]()`` (``vit_b``, ``vit_l``, ``vit_h``), randomised."""
    torch.manual_seed(seed)
    return randomise(ref.sam_model_registry[kind](), seed)


def mobile_sam(seed: int = 0) -> torch.nn.Module:
    """MobileSAM's ``sam_model_registry["vit_t"]()``, randomised (BatchNorm statistics included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's deprecation and registry warnings
        package = ref.mobile_sam()
    torch.manual_seed(seed)
    return randomise(package.sam_model_registry["vit_t"](), seed)


def save_official(model: torch.nn.Module, path: Path) -> Path:
    """Write ``model.state_dict()`` as the official files are: a bare ``torch.save`` of the state dict."""
    torch.save(model.state_dict(), path)
    return path


def assert_predictors_agree(reference_predictor, ours, image, prompts) -> None:
    """The reference ``SamPredictor`` and our predictor on the same weights give the same embedding (max |Δ|
    ≤ 1e-4 of its largest value), the same masks (≥ 99.99 % of pixels) and scores within 1e-4 for each
    prompt set. Our scores are clipped to [0, 1] (SAM returns them unclipped), so theirs are clipped too."""
    import numpy as np

    from litesam.predictor import LiteSamPredictor

    reference_predictor.set_image(image)
    predictor = LiteSamPredictor(ours)
    embedding = predictor.set_image(image)
    expected = reference_predictor.features
    assert embedding.input_size == tuple(reference_predictor.input_size)
    assert (embedding.features - expected).abs().max() <= 1e-4 * expected.abs().max()
    for prompt in prompts:
        masks, scores, _ = reference_predictor.predict(**prompt)
        our_masks, our_scores, _ = predictor.predict(**prompt)
        assert our_masks.shape == masks.shape
        assert (our_masks == masks).mean() >= 0.9999, prompt
        np.testing.assert_allclose(our_scores, np.clip(scores, 0.0, 1.0), rtol=0, atol=1e-4)


def parity_prompts(height: int, width: int) -> list[dict]:
    """A point (three masks), two points and a box (one mask), and a box alone, on an H×W image."""
    import numpy as np

    return [
        {"point_coords": np.array([[width * 0.3, height * 0.4]]), "point_labels": np.array([1])},
        {
            "point_coords": np.array([[width * 0.7, height * 0.75], [width * 0.2, height * 0.2]]),
            "point_labels": np.array([1, 0]),
            "box": np.array([width * 0.5, height * 0.55, width * 0.95, height * 0.95]),
            "multimask_output": False,
        },
        {"box": np.array([width * 0.1, height * 0.1, width * 0.6, height * 0.7]), "multimask_output": False},
    ]
