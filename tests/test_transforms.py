"""ResizeLongestSide: sizes and prompt mapping equal SAM's; cv2 image resizing gives sane output."""

import numpy as np
import pytest
import torch

from litesam.errors import InvalidImageError, InvalidPromptError
from litesam.transforms import ResizeLongestSide
from tests.sam_reference import ResizeLongestSide as RefResize

# (H, W) original sizes: square, landscape, portrait, odd, tiny, and extreme aspect ratios.
ORIGINAL_SIZES = [
    (1024, 1024),
    (480, 640),
    (640, 480),
    (1080, 1920),
    (1920, 1080),
    (333, 517),
    (517, 333),
    (1, 1),
    (1, 7),
    (7, 1),
    (3, 5000),
    (5000, 3),
    (1, 20000),
    (999, 1001),
    (4001, 3999),
    (720, 1280),
    (101, 103),
    (640, 1024),
]
TARGETS = [640, 1024, 1000, 33]


@pytest.mark.parametrize("target", TARGETS)
def test_preprocess_shape_equals_sam(target):
    for h, w in ORIGINAL_SIZES:
        assert ResizeLongestSide.get_preprocess_shape(h, w, target) == RefResize.get_preprocess_shape(
            h, w, target
        )
        new_h, new_w = ResizeLongestSide.get_preprocess_shape(h, w, target)
        assert max(new_h, new_w) == target


@pytest.mark.parametrize("target", TARGETS)
def test_coordinate_and_box_mapping_equals_sam(target):
    ours, ref = ResizeLongestSide(target), RefResize(target)
    rng = np.random.default_rng(target)
    for h, w in ORIGINAL_SIZES:
        coords = rng.uniform(0, 1, (5, 3, 2)) * [w, h]
        boxes = np.sort(rng.uniform(0, 1, (4, 2, 2)) * [w, h], axis=1).reshape(4, 4)
        coords_before = coords.copy()

        mapped = ours.apply_coords(coords, (h, w))
        assert mapped.dtype == np.float64 and np.array_equal(mapped, ref.apply_coords(coords, (h, w)))
        assert np.array_equal(coords, coords_before)  # input untouched
        mapped_boxes = ours.apply_boxes(boxes, (h, w))
        assert mapped_boxes.shape == (4, 4) and np.array_equal(mapped_boxes, ref.apply_boxes(boxes, (h, w)))

        coords_t, boxes_t = torch.from_numpy(coords), torch.from_numpy(boxes)
        mapped_t = ours.apply_coords_torch(coords_t, (h, w))
        assert mapped_t.dtype == torch.float32 and torch.equal(
            mapped_t, ref.apply_coords_torch(coords_t, (h, w))
        )
        assert torch.equal(coords_t, torch.from_numpy(coords_before))
        assert torch.equal(ours.apply_boxes_torch(boxes_t, (h, w)), ref.apply_boxes_torch(boxes_t, (h, w)))


def test_integer_inputs_and_leading_axes():
    ours, ref = ResizeLongestSide(1024), RefResize(1024)
    coords = np.array([[10, 20], [399, 299]])
    assert np.array_equal(ours.apply_coords(coords, (300, 400)), ref.apply_coords(coords, (300, 400)))
    boxes = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    mapped = ours.apply_boxes(boxes, (300, 400))
    assert mapped.shape == (2, 3, 4)  # leading axes are kept (SAM flattens them)
    assert np.array_equal(mapped.reshape(-1, 4), ref.apply_boxes(boxes, (300, 400)))
    box = np.array([1.0, 2.0, 3.0, 4.0])
    assert np.array_equal(ours.apply_boxes(box, (300, 400)), ref.apply_boxes(box, (300, 400))[0])
    boxes_t = torch.arange(8).reshape(2, 4)
    assert torch.equal(
        ours.apply_boxes_torch(boxes_t, (300, 400)), ref.apply_boxes_torch(boxes_t, (300, 400))
    )


@pytest.mark.parametrize("shape", [(480, 640), (1080, 1920), (333, 517), (5, 3000), (100, 100), (2000, 2000)])
@pytest.mark.parametrize("target", [640, 1024])
def test_apply_image_shape_and_dtype(shape, target):
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    resized = ResizeLongestSide(target).apply_image(image)
    assert resized.shape == (*ResizeLongestSide.get_preprocess_shape(*shape, target), 3)
    assert resized.dtype == np.uint8 and resized.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("shape", [(300, 200), (2000, 1500)])  # enlarging and shrinking
def test_apply_image_content(shape):
    h, w = shape
    resize = ResizeLongestSide(640)
    constant = np.full((h, w, 3), (12, 200, 77), dtype=np.uint8)
    assert (resize.apply_image(constant) == (12, 200, 77)).all()

    # Left half red, right half blue: colours stay on their side, and the channel order is kept.
    halves = np.zeros((h, w, 3), dtype=np.uint8)
    halves[:, : w // 2, 0] = 255
    halves[:, w // 2 :, 2] = 255
    out = resize.apply_image(halves)
    new_w = out.shape[1]
    assert (out[:, : new_w // 2 - 2, 0] == 255).all() and (out[:, : new_w // 2 - 2, 2] == 0).all()
    assert (out[:, new_w // 2 + 2 :, 2] == 255).all() and (out[:, new_w // 2 + 2 :, 0] == 0).all()

    # A horizontal ramp stays non-decreasing and keeps its mean.
    ramp = np.broadcast_to(np.linspace(0, 255, w).astype(np.uint8)[None, :, None], (h, w, 3)).copy()
    out = resize.apply_image(ramp)
    assert (np.diff(out[:, :, 1].astype(int), axis=1) >= 0).all()
    assert abs(out.mean() - ramp.mean()) < 2.0


def test_shrinking_averages_instead_of_aliasing():
    """A one-pixel checkerboard shrunk 4× becomes flat grey (area averaging), not a moiré of 0s and 255s."""
    checker = ((np.indices((2048, 2048)).sum(axis=0) % 2) * 255).astype(np.uint8)
    out = ResizeLongestSide(512).apply_image(np.repeat(checker[:, :, None], 3, axis=2))
    assert np.abs(out.astype(int) - 127).max() <= 1


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((10, 10), dtype=np.uint8),
        np.zeros((10, 10, 4), dtype=np.uint8),
        np.zeros((10, 10, 3), dtype=np.float32),
        np.zeros((0, 10, 3), dtype=np.uint8),
        [[0, 0, 0]],
    ],
)
def test_bad_images_raise(image):
    with pytest.raises(InvalidImageError):
        ResizeLongestSide(640).apply_image(image)


def test_bad_prompts_raise():
    resize = ResizeLongestSide(640)
    with pytest.raises(InvalidPromptError, match="coords"):
        resize.apply_coords(np.zeros((2, 3)), (100, 100))
    with pytest.raises(InvalidPromptError, match="boxes"):
        resize.apply_boxes(np.zeros((2, 2)), (100, 100))
    with pytest.raises(InvalidPromptError, match="coords"):
        resize.apply_coords_torch(torch.zeros(2, 3), (100, 100))
    with pytest.raises(InvalidPromptError, match="boxes"):
        resize.apply_boxes_torch(torch.zeros(2, 5), (100, 100))
    with pytest.raises(InvalidPromptError, match="original_size"):
        resize.apply_coords(np.zeros((2, 2)), (0, 100))
    with pytest.raises(InvalidPromptError, match="original_size"):
        resize.apply_boxes(np.zeros((2, 4)), (100, 100, 3))


@pytest.mark.parametrize("size", [(120, 160), (333, 517), (700, 90), (1500, 1100), (64, 64)])
@pytest.mark.parametrize("target", [256, 1024])
def test_pil_bilinear_filter_equals_sams_resize_pixel_for_pixel(size, target):
    image = np.random.default_rng(sum(size)).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    expected = RefResize(target).apply_image(image)  # SAM's: torchvision's PIL path, bilinear
    resized = ResizeLongestSide(target, "pil_bilinear").apply_image(image)
    assert resized.dtype == np.uint8 and resized.flags.writeable
    np.testing.assert_array_equal(resized, expected)


def test_unknown_filter_is_refused():
    with pytest.raises(ValueError, match="filter"):
        ResizeLongestSide(256, "lanczos")
