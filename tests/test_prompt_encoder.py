"""PromptEncoder: parameter count, SAM state-dict compatibility, shapes at 640 and 1024, parity with SAM."""

import pytest
import torch
from torch import nn

from litesam.errors import InvalidPromptError
from litesam.modeling.prompt_encoder import PromptEncoder
from tests.sam_reference import PromptEncoder as RefPromptEncoder

SIZES = [(640, 40), (1024, 64)]  # (input size S, embedding size S/16)
TOLERANCE = 1e-5


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Give every parameter a seeded random value (norms included), scaled so activations stay O(1)."""
    generator = torch.Generator().manual_seed(seed)

    def normal_(tensor: torch.Tensor, mean: float, std: float) -> None:
        with torch.no_grad():
            tensor.copy_(mean + std * torch.randn(tensor.shape, generator=generator))

    for sub in module.modules():
        if isinstance(sub, nn.Embedding):
            normal_(sub.weight, 0.0, 1.0)
        elif isinstance(sub, nn.ConvTranspose2d):
            normal_(sub.weight, 0.0, sub.weight.shape[0] ** -0.5)
            normal_(sub.bias, 0.0, 0.1)
        elif isinstance(sub, (nn.Linear, nn.Conv2d)):
            normal_(sub.weight, 0.0, sub.weight[0].numel() ** -0.5)
            normal_(sub.bias, 0.0, 0.1)
        elif hasattr(sub, "weight") and hasattr(sub, "bias") and sub.weight.ndim == 1:  # the norms
            normal_(sub.weight, 1.0, 0.2)
            normal_(sub.bias, 0.0, 0.1)
    return module


def build_pair(size: int, grid: int, seed: int = 0) -> tuple[RefPromptEncoder, PromptEncoder]:
    torch.manual_seed(seed)  # the random-Fourier matrix
    ref = randomize_(RefPromptEncoder(256, (grid, grid), (size, size), 16), seed)
    ours = PromptEncoder(256, (grid, grid), (size, size), 16)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def random_prompts(size: int, grid: int, batch: int, num_points: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    corners = torch.rand(batch, 2, 2, generator=g) * (size - 1)
    return {
        "coords": torch.rand(batch, num_points, 2, generator=g) * (size - 1),
        "labels": torch.randint(-1, 2, (batch, num_points), generator=g),
        "boxes": torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1),
        "masks": torch.randn(batch, 1, 4 * grid, 4 * grid, generator=g) * 4,
    }


def test_parameter_count_and_buffer():
    encoder = PromptEncoder(256, (64, 64), (1024, 1024), 16)
    assert sum(p.numel() for p in encoder.parameters()) == 6220
    buffers = dict(encoder.named_buffers())
    assert list(buffers) == ["pe_layer.positional_encoding_gaussian_matrix"]
    assert buffers["pe_layer.positional_encoding_gaussian_matrix"].shape == (2, 128)


def test_state_dict_names_match_sam():
    ref = RefPromptEncoder(256, (64, 64), (1024, 1024), 16)
    ours = PromptEncoder(256, (64, 64), (1024, 1024), 16)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }


@pytest.mark.parametrize("size,grid", SIZES)
def test_shapes(size, grid):
    _, encoder = build_pair(size, grid)
    p = random_prompts(size, grid, batch=3, num_points=2, seed=1)
    with torch.inference_mode():
        assert encoder.get_dense_pe().shape == (1, 256, grid, grid)
        cases = {
            "points": ((p["coords"], p["labels"]), None, None, 3),  # two points + one padding point
            "boxes": (None, p["boxes"], None, 2),
            "points+box": ((p["coords"], p["labels"]), p["boxes"], None, 4),
            "masks": (None, None, p["masks"], 0),
        }
        for name, (points, boxes, masks, tokens) in cases.items():
            sparse, dense = encoder(points, boxes, masks)
            assert sparse.shape == (3, tokens, 256), name
            assert dense.shape == (3, 256, grid, grid), name
            assert sparse.dtype == dense.dtype == torch.float32
        sparse, dense = encoder(None, None, None)
        assert sparse.shape == (1, 0, 256) and dense.shape == (1, 256, grid, grid)
    assert encoder.mask_input_size == (4 * grid, 4 * grid)


def test_no_mask_dense_embedding_is_a_shared_view():
    _, encoder = build_pair(640, 40)
    p = random_prompts(640, 40, batch=4, num_points=1, seed=2)
    _, dense = encoder((p["coords"], p["labels"]), None, None)
    assert dense.stride(0) == 0  # the decoder relies on this to share per-image work across prompts
    assert torch.equal(dense[3], dense[0])


@pytest.mark.parametrize("size,grid", SIZES)
def test_parity_with_sam(size, grid):
    ref, ours = build_pair(size, grid, seed=size)
    p = random_prompts(size, grid, batch=4, num_points=3, seed=size + 1)
    points = (p["coords"], p["labels"])
    cases = {
        "points": (points, None, None),
        "boxes": (None, p["boxes"], None),
        "points+box": (points, p["boxes"], None),
        "masks": (None, None, p["masks"]),
        "points+box+masks": (points, p["boxes"], p["masks"]),
        "nothing": (None, None, None),
    }
    with torch.inference_mode():
        assert torch.allclose(ours.get_dense_pe(), ref.get_dense_pe(), rtol=0, atol=TOLERANCE)
        for name, args in cases.items():
            ref_sparse, ref_dense = ref(*args)
            sparse, dense = ours(*args)
            assert sparse.shape == ref_sparse.shape and dense.shape == ref_dense.shape, name
            assert torch.allclose(sparse, ref_sparse, rtol=0, atol=TOLERANCE), name
            assert torch.allclose(dense, ref_dense, rtol=0, atol=TOLERANCE), name


def test_integer_coordinates_and_float_labels_are_accepted():
    ref, ours = build_pair(640, 40)
    coords = torch.tensor([[[10, 20], [300, 600]]])
    labels = torch.tensor([[1.0, 0.0]])
    with torch.inference_mode():
        assert torch.allclose(
            ours((coords, labels), None, None)[0], ref((coords, labels), None, None)[0], atol=TOLERANCE
        )


@pytest.mark.parametrize(
    "points,boxes,masks,message",
    [
        ((torch.zeros(2, 3, 2), torch.ones(2, 2)), None, None, "labels must be B×N"),
        ((torch.zeros(2, 3, 3), torch.ones(2, 3)), None, None, "B×N×2"),
        ((torch.zeros(3, 2), torch.ones(3)), None, None, "B×N×2"),
        (torch.zeros(2, 3, 2), None, None, "pair"),
        (None, torch.zeros(2, 2, 2), None, "B×4"),
        (None, None, torch.zeros(2, 1, 64, 64), "mask inputs"),
        ((torch.zeros(2, 1, 2), torch.ones(2, 1)), torch.zeros(3, 4), None, "batch sizes differ"),
    ],
)
def test_bad_prompts_raise(points, boxes, masks, message):
    _, encoder = build_pair(640, 40)
    with pytest.raises(InvalidPromptError, match=message):
        encoder(points, boxes, masks)
