"""Resizing of images, points and boxes so that an image's longest side becomes the model's input size ``S``.

Two frames are involved: the *original image* (``H×W`` pixels) and the *input frame* (the image resized to
``h'×w'`` with ``max(h', w') = S``, later padded at the bottom/right to ``S×S``). Coordinates are ``(x, y)``
pixels and boxes ``XYXY``. Sizes and prompt mapping match Segment Anything's ``ResizeLongestSide`` (sizes
rounded half-up, coordinates scaled per axis by ``w'/W`` and ``h'/H``), so prompts map exactly as for SAM.

Two image filters (:data:`FILTERS`): ``"opencv"`` (Lite-SAM's: area averaging when shrinking, bilinear when
enlarging) and ``"pil_bilinear"``, the pixels of SAM's own pipeline, which resizes through torchvision's PIL
path, i.e. ``PIL.Image.resize(..., BILINEAR)`` (PIL's bilinear widens its kernel when shrinking, so it
antialiases unlike OpenCV's ``INTER_LINEAR``). The SAM-family engines use the latter so that their
embeddings are those of the official predictor; it is equal pixel for pixel (tests/test_transforms.py).
"""

import cv2
import numpy as np
import torch
from PIL import Image

from litesam.errors import InvalidImageError, InvalidPromptError


def _check_size(original_size: tuple[int, ...]) -> tuple[int, int]:
    if len(original_size) != 2 or min(original_size) <= 0:
        raise InvalidPromptError(
            f"original_size must be (H, W) with positive sides, got {tuple(original_size)}"
        )
    return int(original_size[0]), int(original_size[1])


def _check_last_dim(shape: tuple[int, ...], size: int, what: str) -> None:
    if len(shape) == 0 or shape[-1] != size:
        raise InvalidPromptError(f"{what} must have {size} values in the last axis, got shape {tuple(shape)}")


#: Image filters of :class:`ResizeLongestSide`.
FILTERS = ("opencv", "pil_bilinear")


class ResizeLongestSide:
    """Resize to longest side ``target_length`` (the model input size ``S``) and map prompts alike.

    Args:
        target_length: S.
        filter: ``"opencv"`` (default) or ``"pil_bilinear"`` (SAM's pixels); see the module docstring.
    """

    def __init__(self, target_length: int, filter: str = "opencv") -> None:
        if target_length <= 0:
            raise ValueError(f"target_length must be positive, got {target_length}")
        if filter not in FILTERS:
            raise ValueError(f"filter must be one of {FILTERS}, got {filter!r}")
        self.target_length = target_length
        self.filter = filter

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """Size ``(newh, neww)`` of an ``oldh×oldw`` image scaled so its longest side is ``long_side_length``.

        Each side is ``side · long_side_length / max(oldh, oldw)``, rounded half up.
        """
        scale = long_side_length * 1.0 / max(oldh, oldw)
        return int(oldh * scale + 0.5), int(oldw * scale + 0.5)

    def _scales(self, original_size: tuple[int, ...]) -> tuple[float, float]:
        """Per-axis factors ``(w'/W, h'/H)`` from original-image to input-frame pixels."""
        old_h, old_w = _check_size(original_size)
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        return new_w / old_w, new_h / old_h

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Resize an ``H×W×3`` uint8 RGB image to ``h'×w'×3`` uint8 (``max(h', w') = target_length``).

        ``opencv``: area averaging when shrinking (no aliasing), bilinear when enlarging. ``pil_bilinear``:
        PIL's bilinear filter, as SAM's reference pipeline.
        """
        if (
            not isinstance(image, np.ndarray)
            or image.ndim != 3
            or image.shape[2] != 3
            or image.dtype != np.uint8
        ):
            raise InvalidImageError(
                "image must be an H×W×3 uint8 RGB numpy array, got "
                + (
                    f"shape {image.shape} dtype {image.dtype}"
                    if isinstance(image, np.ndarray)
                    else type(image).__name__
                )
            )
        h, w = image.shape[:2]
        if h == 0 or w == 0:
            raise InvalidImageError(f"image is empty: shape {image.shape}")
        new_h, new_w = self.get_preprocess_shape(h, w, self.target_length)
        if self.filter == "pil_bilinear":
            resized = Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), Image.Resampling.BILINEAR)
            return np.array(resized)  # PIL gives a read-only view; torch wants a writable array
        interpolation = cv2.INTER_AREA if new_h * new_w < h * w else cv2.INTER_LINEAR
        return cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=interpolation)

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Map ``…×2`` (x, y) original-image pixels of an ``(H, W)`` image to input-frame pixels.

        Returns a new float64 array of the same shape; the input is not modified.
        """
        coords = np.array(coords, dtype=np.float64)  # a copy
        _check_last_dim(coords.shape, 2, "coords")
        scale_x, scale_y = self._scales(original_size)
        coords[..., 0] = coords[..., 0] * scale_x
        coords[..., 1] = coords[..., 1] * scale_y
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Map ``…×4`` XYXY original-image boxes to input-frame pixels (float64, same shape)."""
        boxes = np.asarray(boxes)
        _check_last_dim(boxes.shape, 4, "boxes")
        return self.apply_coords(boxes.reshape(*boxes.shape[:-1], 2, 2), original_size).reshape(boxes.shape)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        """Tensor version of ``apply_coords``: ``…×2`` (x, y) → a new float32 tensor on the same device."""
        _check_last_dim(tuple(coords.shape), 2, "coords")
        scale_x, scale_y = self._scales(original_size)
        coords = coords.to(torch.float32, copy=True)
        coords[..., 0] = coords[..., 0] * scale_x
        coords[..., 1] = coords[..., 1] * scale_y
        return coords

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        """Tensor version of ``apply_boxes``: ``…×4`` XYXY → a new float32 tensor of the same shape."""
        _check_last_dim(tuple(boxes.shape), 4, "boxes")
        return self.apply_coords_torch(boxes.reshape(*boxes.shape[:-1], 2, 2), original_size).reshape(
            boxes.shape
        )
