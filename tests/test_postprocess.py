import numpy as np
import pytest
import torch
import torch.nn.functional as F

from litesam.masks import batched_mask_to_box
from litesam.postprocess import BAND, MaskUpscaler, mask_area_and_box, upscale_masks
from litesam.predictor import LiteSamPredictor
from litesam.transforms import ResizeLongestSide
from tests.tiny import synthetic_image, tiny_model


def _two_pass(low_res, img_size, input_size, original_size):
    """SAM's postprocessing (as LiteSAM.postprocess_masks) for C×4h×4w logits: C×H×W float32 logits."""
    masks = F.interpolate(low_res[None], (img_size, img_size), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)[0]


# (S, original H×W): up- and down-scaling, sizes that are and are not multiples of the band, one-pixel sides.
GEOMETRIES = [(256, (120, 160)), (256, (90, 140)), (256, (1000, 3)), (64, (1, 1)), (64, (30, 40)), (256, (700, 520))]


@pytest.mark.parametrize("img_size, original", GEOMETRIES)
def test_binary_masks_equal_two_bilinear_passes_thresholded(img_size, original):
    input_size = ResizeLongestSide.get_preprocess_shape(*original, img_size)
    low_res = torch.randn(3, img_size // 4, img_size // 4, generator=torch.Generator().manual_seed(1)) * 4
    reference = _two_pass(low_res, img_size, input_size, original)
    masks = upscale_masks(low_res, img_size, input_size, original, threshold=0.0)
    assert masks.shape == (3, *original) and masks.dtype == bool
    # Equal everywhere except where the logit is within float32 rounding of the threshold.
    decided = reference.abs().numpy() > 1e-5
    np.testing.assert_array_equal(masks[decided], (reference > 0).numpy()[decided])
    assert decided.mean() > 0.99


def test_threshold_is_applied_to_the_logits():
    original, img_size = (50, 70), 256
    input_size = ResizeLongestSide.get_preprocess_shape(*original, img_size)
    low_res = torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(2)) * 3
    reference = _two_pass(low_res, img_size, input_size, original)[0]
    mask = MaskUpscaler((64, 64), img_size, input_size, original).binary(low_res[0], threshold=1.5)
    decided = (reference - 1.5).abs() > 1e-5
    np.testing.assert_array_equal(mask[decided.numpy()], (reference > 1.5).numpy()[decided.numpy()])
    assert 0 < int(mask.sum()) < mask.size


def test_bands_cover_every_row_of_a_tall_image():
    original = (3 * BAND + 5, 17)
    input_size = ResizeLongestSide.get_preprocess_shape(*original, 64)
    low_res = torch.full((1, 16, 16), -1.0)
    low_res[0, -1, :] = 50.0  # only the bottom low-res row is on: the mask must reach the last output row
    mask = upscale_masks(low_res, 64, input_size, original)[0]
    assert mask[-1].all() and not mask[0].any()


def test_area_and_box_match_torch_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = np.zeros((37, 53), dtype=bool)
        y0, x0 = rng.integers(0, 30), rng.integers(0, 45)
        mask[y0 : y0 + rng.integers(1, 8), x0 : x0 + rng.integers(1, 9)] = True
        mask[rng.integers(0, 37), rng.integers(0, 53)] = True
        area, box = mask_area_and_box(mask)
        assert area == int(mask.sum())
        assert box == tuple(batched_mask_to_box(torch.from_numpy(mask)).tolist())


def test_area_and_box_of_an_empty_mask():
    assert mask_area_and_box(np.zeros((4, 5), dtype=bool)) == (0, (0, 0, 0, 0))


def test_predictor_masks_equal_sam_postprocessing():
    model = tiny_model()
    image = synthetic_image(120, 160, seed=4)
    predictor = LiteSamPredictor(model)
    embedding = predictor.set_image(image)
    masks, _, low_res = predictor.predict(np.array([[60.0, 50.0]]), np.array([1]))
    reference = model.postprocess_masks(
        torch.from_numpy(low_res)[None], embedding.input_size, embedding.original_size
    )[0]
    decided = reference.abs().numpy() > 1e-5
    np.testing.assert_array_equal(masks[decided], (reference > model.mask_threshold).numpy()[decided])
