"""MaskDecoder and TwoWayTransformer: parameter counts, SAM state-dict compatibility, shapes, parity with SAM."""

import pytest
import torch
from torch import nn

import litesam.modeling.mask_decoder as mask_decoder_module
from litesam.errors import InvalidImageError, InvalidPromptError
from litesam.modeling.mask_decoder import MaskDecoder
from litesam.modeling.transformer import TwoWayTransformer
from tests.sam_reference import MaskDecoder as RefMaskDecoder
from tests.sam_reference import TwoWayTransformer as RefTransformer
from tests.test_prompt_encoder import SIZES, TOLERANCE, build_pair, random_prompts, randomize_


def make_decoder(depth: int = 2, mlp_dim: int = 2048) -> MaskDecoder:
    return MaskDecoder(transformer_dim=256, transformer=TwoWayTransformer(depth, 256, 8, mlp_dim))


def make_reference(depth: int = 2, mlp_dim: int = 2048) -> RefMaskDecoder:
    return RefMaskDecoder(transformer_dim=256, transformer=RefTransformer(depth, 256, 8, mlp_dim))


@pytest.fixture(scope="module", params=SIZES, ids=["640", "1024"])
def setup(request):
    """Seeded random SAM prompt encoder and decoder, the same weights loaded (strict) into ours."""
    size, grid = request.param
    ref_encoder, encoder = build_pair(size, grid, seed=size)
    ref = randomize_(make_reference(), seed=size + 1)
    ours = make_decoder()
    ours.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(size + 2)
    image = torch.randn(1, 256, grid, grid, generator=g)
    return {
        "size": size,
        "grid": grid,
        "ref_encoder": ref_encoder,
        "encoder": encoder,
        "ref": ref,
        "ours": ours,
        "image": image,
    }


def run_both(setup, points, boxes, masks):
    """Reference path (SAM encoder + SAM decoder, all four masks) and our end-to-end path, both multimask modes."""
    with torch.inference_mode():
        ref_sparse, ref_dense = setup["ref_encoder"](points, boxes, masks)
        ref_masks, ref_iou = setup["ref"].predict_masks(
            setup["image"], setup["ref_encoder"].get_dense_pe(), ref_sparse, ref_dense
        )
        sparse, dense = setup["encoder"](points, boxes, masks)
        pe = setup["encoder"].get_dense_pe()
        multi = setup["ours"](setup["image"], pe, sparse, dense, multimask_output=True)
        single = setup["ours"](setup["image"], pe, sparse, dense, multimask_output=False)
    return (ref_masks, ref_iou), multi, single


def assert_matches(ref, multi, single):
    ref_masks, ref_iou = ref
    assert multi[0].shape == ref_masks[:, 1:].shape and single[0].shape == ref_masks[:, :1].shape
    assert multi[1].shape == ref_iou[:, 1:].shape and single[1].shape == ref_iou[:, :1].shape
    assert (multi[0] - ref_masks[:, 1:]).abs().max() <= TOLERANCE
    assert (multi[1] - ref_iou[:, 1:]).abs().max() <= TOLERANCE
    assert (single[0] - ref_masks[:, :1]).abs().max() <= TOLERANCE
    assert (single[1] - ref_iou[:, :1]).abs().max() <= TOLERANCE


@pytest.mark.parametrize(
    "depth,mlp_dim,expected", [(2, 2048, 4_058_340), (2, 1024, 3_007_716), (1, 2048, 2_478_820)]
)
def test_parameter_counts(depth, mlp_dim, expected):
    assert sum(p.numel() for p in make_decoder(depth, mlp_dim).parameters()) == expected


def test_state_dict_names_match_sam():
    ours, ref = make_decoder().state_dict(), make_reference().state_dict()
    assert list(ours) == list(ref)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}
    make_decoder(1, 1024).load_state_dict(make_reference(1, 1024).state_dict(), strict=True)


@pytest.mark.parametrize("kind", ["points", "boxes", "points+box", "masks", "points+masks"])
def test_parity_with_sam(setup, kind):
    p = random_prompts(setup["size"], setup["grid"], batch=3, num_points=2, seed=len(kind))
    points = (p["coords"], p["labels"]) if "points" in kind else None
    boxes = p["boxes"] if "box" in kind else None
    masks = p["masks"] if "masks" in kind else None
    assert_matches(*run_both(setup, points, boxes, masks))


def test_parity_with_many_point_tokens(setup):
    """18 tokens per prompt take the plain (unfolded) attention path."""
    p = random_prompts(setup["size"], setup["grid"], batch=2, num_points=12, seed=7)
    assert_matches(*run_both(setup, (p["coords"], p["labels"]), None, None))


def test_chunked_batches_equal_one_chunk(setup, monkeypatch):
    p = random_prompts(setup["size"], setup["grid"], batch=5, num_points=1, seed=8)
    points = (p["coords"], p["labels"])
    ours, encoder, pe = setup["ours"], setup["encoder"], setup["encoder"].get_dense_pe()
    with torch.inference_mode():
        for masks in (None, p["masks"]):  # shared and per-prompt dense embeddings
            sparse, dense = encoder(points, None, masks)
            whole = ours(setup["image"], pe, sparse, dense, True)
            monkeypatch.setattr(mask_decoder_module, "CHUNK_BYTES", 1)  # one prompt per chunk
            chunked = ours(setup["image"], pe, sparse, dense, True)
            monkeypatch.undo()
            assert torch.allclose(whole[0], chunked[0], rtol=0, atol=TOLERANCE)
            assert torch.allclose(whole[1], chunked[1], rtol=0, atol=TOLERANCE)
            for i in (0, 4):  # each prompt decoded alone gives the same result as in the batch
                alone = ours(setup["image"], pe, sparse[i : i + 1], dense[i : i + 1], True)
                assert torch.allclose(whole[0][i : i + 1], alone[0], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("one_prompt_per_chunk", [False, True])
def test_min_iou_skips_only_the_masks_of_prompts_it_drops(setup, monkeypatch, one_prompt_per_chunk):
    p = random_prompts(setup["size"], setup["grid"], batch=6, num_points=1, seed=9)
    ours, encoder, pe = setup["ours"], setup["encoder"], setup["encoder"].get_dense_pe()
    if one_prompt_per_chunk:
        monkeypatch.setattr(mask_decoder_module, "CHUNK_BYTES", 1)
    with torch.inference_mode():
        sparse, dense = encoder((p["coords"], p["labels"]), None, None)
        masks, iou = ours(setup["image"], pe, sparse, dense, True)
        best = iou.clamp(0, 1).max(dim=1).values
        threshold = float(best.median())  # some prompts pass, some do not
        skipped_masks, skipped_iou = ours(setup["image"], pe, sparse, dense, True, min_iou=threshold)
    needed = best >= threshold
    assert 0 < int(needed.sum()) < len(needed)
    assert torch.equal(skipped_iou, iou)
    assert torch.allclose(skipped_masks[needed], masks[needed], rtol=0, atol=TOLERANCE)
    assert bool((skipped_masks[~needed] == float("-inf")).all())


def test_shared_dense_embedding_forms_agree(setup):
    """A 1×C×h×w dense embedding, its stride-0 expansion and a materialised copy give the same masks."""
    p = random_prompts(setup["size"], setup["grid"], batch=3, num_points=1, seed=9)
    sparse, expanded = setup["encoder"]((p["coords"], p["labels"]), None, None)
    pe = setup["encoder"].get_dense_pe()
    with torch.inference_mode():
        results = [
            setup["ours"](setup["image"], pe, sparse, dense, True)
            for dense in (expanded, expanded[:1], expanded.contiguous())
        ]
    for masks, iou in results[1:]:
        assert torch.allclose(masks, results[0][0], rtol=0, atol=TOLERANCE)
        assert torch.allclose(iou, results[0][1], rtol=0, atol=TOLERANCE)


def test_one_embedding_per_prompt_equals_decoding_each_image_alone(setup, monkeypatch):
    """Prompts of two images decoded together (B×C×h×w embeddings) equal each image's prompts decoded alone,
    with shared (no mask input) and per-prompt dense embeddings, in one chunk and in many."""
    g = torch.Generator().manual_seed(11)
    images = [setup["image"], torch.randn(setup["image"].shape, generator=g)]
    p = random_prompts(setup["size"], setup["grid"], batch=5, num_points=1, seed=12)
    owner = torch.tensor([0, 1, 1, 0, 1])  # the image each prompt is on
    ours, encoder, pe = setup["ours"], setup["encoder"], setup["encoder"].get_dense_pe()
    with torch.inference_mode():
        for masks in (None, p["masks"]):
            sparse, dense = encoder((p["coords"], p["labels"]), None, masks)
            together = ours(torch.cat(images)[owner], pe, sparse, dense, True)
            monkeypatch.setattr(mask_decoder_module, "CHUNK_BYTES", 1)  # one prompt per chunk
            chunked = ours(torch.cat(images)[owner], pe, sparse, dense, True)
            monkeypatch.undo()
            assert torch.allclose(together[0], chunked[0], rtol=0, atol=TOLERANCE)
            for i, image in enumerate(images):
                on = owner == i
                alone = ours(image, pe, sparse[on], dense[on] if masks is not None else dense[:1], True)
                assert torch.allclose(together[0][on], alone[0], rtol=0, atol=TOLERANCE)
                assert torch.allclose(together[1][on], alone[1], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("shared_image", [True, False])
def test_transformer_parity_with_sam(shared_image):
    """SAM's transformer on a per-prompt image batch vs ours on one shared (1×C×h×w) or per-prompt image."""
    ref = randomize_(RefTransformer(2, 256, 8, 2048), seed=3)
    ours = TwoWayTransformer(2, 256, 8, 2048)
    ours.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(4)
    image = torch.randn(1, 256, 24, 16, generator=g)  # a non-square grid
    pe = torch.randn(1, 256, 24, 16, generator=g)
    tokens = torch.randn(3, 7, 256, generator=g)
    if not shared_image:
        image = image + torch.randn(3, 256, 1, 1, generator=g)
    with torch.inference_mode():
        ref_q, ref_k = ref(image.expand(3, -1, -1, -1), pe.expand(3, -1, -1, -1), tokens)
        q, k = ours(image, pe, tokens)
        first_q, first_k = ours.forward_prepared(ours.prepare_image(image, pe), tokens, num_outputs=2)
    assert q.shape == ref_q.shape == (3, 7, 256) and k.shape == ref_k.shape == (3, 24 * 16, 256)
    assert (q - ref_q).abs().max() <= TOLERANCE and (k - ref_k).abs().max() <= TOLERANCE
    assert first_q.shape == (3, 2, 256) and (first_q - ref_q[:, :2]).abs().max() <= TOLERANCE
    assert torch.equal(first_k, k)


def test_gradients_match_sam():
    """The rearranged arithmetic is trainable: with gradients on (the decoder's training orientation of the
    mask product), masks and parameter gradients equal SAM's (tiny 8×8 grid)."""
    ref = randomize_(make_reference(), seed=11)
    ours = make_decoder()
    ours.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(12)
    image, pe = torch.randn(1, 256, 8, 8, generator=g), torch.randn(1, 256, 8, 8, generator=g)
    sparse, dense = torch.randn(3, 7, 256, generator=g), torch.randn(1, 256, 1, 1, generator=g).expand(
        3, -1, 8, 8
    )
    grads, outputs = [], []
    for model in (ref, ours):
        masks, iou = model(image, pe, sparse, dense, multimask_output=True)
        (masks.square().mean() + iou.sum()).backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
        outputs.append(masks.detach())
    assert (outputs[1] - outputs[0]).abs().max() <= TOLERANCE
    for name, ref_grad in grads[0].items():
        # Parameters that cannot affect these outputs get no gradient here (SAM's are zero up to rounding).
        grad = grads[1][name] if grads[1][name] is not None else torch.zeros_like(ref_grad)
        assert (grad - ref_grad).abs().max() <= TOLERANCE, name


def test_prompts_of_every_kind_in_one_padded_pass_equal_their_own_passes():
    """Training's one decoder pass: point (point + padding point), box (two corners) and point + box prompts,
    each on its own image embedding, padded to three sparse tokens with ``sparse_mask``, with every output:
    each kind's masks, predicted IoUs and the parameter and embedding gradients of a loss that reads each
    kind's own outputs equal one pass per kind (tiny 8×8 grid, gradients on)."""
    _, encoder = build_pair(128, 8, seed=21)
    decoder = randomize_(make_decoder(), seed=22)
    g = torch.Generator().manual_seed(23)
    embeddings = torch.randn(6, 256, 8, 8, generator=g)
    points = torch.rand(6, 1, 2, generator=g) * 127
    boxes = torch.cat([points[:, 0] - 20, points[:, 0] + 20], dim=1).clamp(0, 127)
    ones = torch.ones(2, 1, dtype=torch.int64)
    kinds = {  # kind: (prompt rows, points, boxes, outputs the kind reads)
        "point": (slice(0, 2), (points[0:2], ones), None, slice(1, 4)),
        "box": (slice(2, 4), None, boxes[2:4], slice(0, 1)),
        "proposal": (slice(4, 6), (points[4:6], ones), boxes[4:6], slice(1, 4)),
    }
    pe = encoder.get_dense_pe()

    def loss_and_grads(outputs):
        loss = sum((masks.square().mean() + iou.sum()) * (k + 1) for k, (masks, iou) in enumerate(outputs))
        tensors = [leaf, *decoder.parameters()]
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        return [torch.zeros_like(t) if grad is None else grad for grad, t in zip(grads, tensors)]

    leaf = embeddings.clone().requires_grad_()
    alone = []
    for rows, kind_points, kind_boxes, outputs in kinds.values():
        sparse, dense = encoder(kind_points, kind_boxes, None)
        alone.append(decoder(leaf[rows], pe, sparse, dense, multimask_output=outputs != slice(0, 1)))
    alone_grads = loss_and_grads(alone)

    parts = [encoder(kind_points, kind_boxes, None)[0] for _, kind_points, kind_boxes, _ in kinds.values()]
    assert [part.shape[1] for part in parts] == [2, 2, 3]
    sparse = torch.cat([torch.nn.functional.pad(part, (0, 0, 0, 3 - part.shape[1])) for part in parts])
    sparse_mask = torch.cat([torch.arange(3).expand(len(part), 3) < part.shape[1] for part in parts])
    dense = encoder(kinds["point"][1], None, None)[1][:1].expand(6, -1, -1, -1)
    leaf = embeddings.clone().requires_grad_()
    masks, iou = decoder(leaf, pe, sparse, dense, True, sparse_mask=sparse_mask, every_output=True)
    assert masks.shape == (6, 4, 32, 32) and iou.shape == (6, 4)
    together = [(masks[rows, outputs], iou[rows, outputs]) for rows, _, _, outputs in kinds.values()]
    for (masks_alone, iou_alone), (masks_together, iou_together) in zip(alone, together):
        assert (masks_together - masks_alone).abs().max() <= TOLERANCE
        assert (iou_together - iou_alone).abs().max() <= TOLERANCE
    for grad, grad_alone in zip(loss_and_grads(together), alone_grads):
        assert (grad - grad_alone).abs().max() <= TOLERANCE * max(1.0, float(grad_alone.abs().max()))
    with pytest.raises(InvalidPromptError, match="sparse_mask"):
        decoder(leaf, pe, sparse, dense, True, sparse_mask=sparse_mask[:, :2])


@pytest.mark.parametrize("size,grid", SIZES)
@pytest.mark.parametrize("depth,mlp_dim", [(2, 2048), (1, 1024)])
def test_shapes(size, grid, depth, mlp_dim):
    _, encoder = build_pair(size, grid)
    decoder = randomize_(make_decoder(depth, mlp_dim), seed=5)
    p = random_prompts(size, grid, batch=2, num_points=1, seed=6)
    image = torch.randn(1, 256, grid, grid)
    with torch.inference_mode():
        sparse, dense = encoder((p["coords"], p["labels"]), p["boxes"], None)
        for multimask, outputs in ((True, 3), (False, 1)):
            masks, iou = decoder(image, encoder.get_dense_pe(), sparse, dense, multimask)
            assert masks.shape == (2, outputs, 4 * grid, 4 * grid) and masks.dtype == torch.float32
            assert iou.shape == (2, outputs) and iou.dtype == torch.float32
            assert torch.isfinite(masks).all() and torch.isfinite(iou).all()
        masks, iou = decoder(image, encoder.get_dense_pe(), sparse[:0], dense[:0], True)
        assert masks.shape == (0, 3, 4 * grid, 4 * grid) and iou.shape == (0, 3)


def test_bad_inputs_raise():
    decoder = make_decoder()
    image, pe = torch.zeros(1, 256, 8, 8), torch.zeros(1, 256, 8, 8)
    sparse, dense = torch.zeros(2, 3, 256), torch.zeros(2, 256, 8, 8)
    with pytest.raises(InvalidImageError, match="one image"):
        decoder(image.expand(3, -1, -1, -1), pe, sparse, dense, True)  # neither 1 nor one per prompt
    with pytest.raises(InvalidImageError, match="image_pe"):
        decoder(image, torch.zeros(1, 256, 4, 4), sparse, dense, True)
    with pytest.raises(InvalidPromptError, match="sparse prompt embeddings"):
        decoder(image, pe, torch.zeros(2, 3, 128), dense, True)
    with pytest.raises(InvalidPromptError, match="dense prompt embeddings"):
        decoder(image, pe, sparse, torch.zeros(3, 256, 8, 8), True)


@pytest.mark.parametrize("activation", [nn.GELU, nn.ReLU])  # GELU: fused into the product; others after it
def test_upscale_channels_set_the_mask_feature_width(activation):
    """A decoder with its own upscaling widths (litesam_tiny: 32/32 at C = 64) keeps the channels-last
    upscaling equal to the transposed-convolution stack on the map, and its masks' shapes."""
    decoder = randomize_(
        MaskDecoder(
            transformer_dim=64, transformer=TwoWayTransformer(2, 64, 4, 256), upscale_channels=(32, 24),
            activation=activation,
        ),
        seed=7,
    )
    assert [decoder.output_upscaling[i].out_channels for i in (0, 3)] == [32, 24]
    assert all(mlp.layers[-1].out_features == 24 for mlp in decoder.output_hypernetworks_mlps)
    grid = 8
    keys = torch.randn(2, grid * grid, 64, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        rows = decoder._upscale(keys)  # B×16M×C2, rows (y, x, ky1, kx1, ky2, kx2)
        maps = decoder.output_upscaling(keys.transpose(1, 2).reshape(2, 64, grid, grid))  # B×C2×4h×4w
        as_map = rows.view(2, grid, grid, 2, 2, 2, 2, 24).permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(2, 24, 4 * grid, 4 * grid)
        assert (as_map - maps).abs().max() <= TOLERANCE
        sparse = torch.randn(3, 2, 64)
        dense = torch.randn(1, 64, grid, grid).expand(3, -1, -1, -1)
        masks, iou = decoder(torch.randn(1, 64, grid, grid), torch.randn(1, 64, grid, grid), sparse, dense, True)
    assert masks.shape == (3, 3, 4 * grid, 4 * grid) and iou.shape == (3, 3)
