"""SegAny: prompt-driven masks from one image embedding.

A predictor is cheap: it holds the embedding of one image and a reference to a shared, read-only model.
Create one per request or per thread; share embeddings (:class:`ImageEmbedding`), never a predictor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import InvalidPromptError, NoEmbeddingError, NoProposalHeadError
from .proposals import Proposals, decode_proposals
from .modeling.lite_sam import LiteSAM
from .postprocess import upscale_masks
from .transforms import ResizeLongestSide
from .validation import check_box, check_image, check_points


@dataclass(frozen=True)
class ImageEmbedding:
    """The encoder output for one image, everything needed to decode masks later.

    Attributes:
        features: 1×256×h×w float32 image embedding (h = w = S/16).
        input_size: (h, w) of the resized image inside the S×S model input, before padding, in pixels.
        original_size: (H, W) of the original image, in pixels.
    """

    features: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]


class LiteSamPredictor:
    """Set an image (or a stored embedding) once, then ask for masks from points, a box or a mask.

    All prompts are in original-image pixels, (x, y) order; boxes are XYXY.
    """

    def __init__(self, model: LiteSAM) -> None:
        self.model = model
        self.transform = ResizeLongestSide(model.img_size, model.resize)
        self._embedding: ImageEmbedding | None = None

    @torch.inference_mode()
    def set_image(self, image: np.ndarray) -> ImageEmbedding:
        """Compute and keep the embedding of an H×W×3 uint8 RGB image of any supported size."""
        self._embedding = encode_image(self.model, image)
        return self._embedding

    def get_embedding(self) -> ImageEmbedding:
        """The current embedding, to store and restore later with :meth:`set_embedding`."""
        return self._require_embedding()

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Restore an embedding exactly as it was computed (or as a cache stored it)."""
        expected = self.model.img_size // 16
        shape = tuple(embedding.features.shape)
        if len(shape) != 4 or shape[0] != 1 or shape[2:] != (expected, expected):
            raise InvalidPromptError(
                f"embedding of shape {shape} does not fit this model (expects 1×C×{expected}×{expected})"
            )
        original = tuple(int(v) for v in embedding.original_size)
        if len(original) != 2 or min(original) < 1:
            raise InvalidPromptError(f"embedding original_size must be (H, W) > 0, got {embedding.original_size}")
        expected_input = self.transform.get_preprocess_shape(*original, self.model.img_size)
        if tuple(embedding.input_size) != expected_input:
            raise InvalidPromptError(
                f"embedding input_size {tuple(embedding.input_size)} does not match its original_size "
                f"{original} (expected {expected_input} at input size {self.model.img_size})"
            )
        features = embedding.features.to(device=self.model.device, dtype=torch.float32)
        self._embedding = ImageEmbedding(features, tuple(embedding.input_size), tuple(embedding.original_size))

    @torch.inference_mode()
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        best_only: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for one prompt set on the current image.

        Args:
            point_coords: N×2 (x, y) in original-image pixels, or None.
            point_labels: N labels (1 foreground, 0 background); required with ``point_coords``.
            box: XYXY box (4,) in original-image pixels, or None.
            mask_input: 1×4h×4w low-resolution logits from an earlier call (``low_res_logits[i:i+1]``).
            multimask_output: three candidate masks (for an ambiguous single point) instead of one.
            best_only: return only the candidate with the highest predicted IoU (C = 1); the others are
                never upscaled, which is most of a prediction's cost on large images.
        Returns:
            masks: C×H×W bool at the original size (C = 3 or 1);
            scores: C float32 predicted IoU, clipped to [0, 1];
            low_res_logits: C×4h×4w float32 logits, to feed back as ``mask_input``.
        Raises:
            NoEmbeddingError: no image or embedding was set.
            InvalidPromptError: no prompt, or a malformed, non-finite or outside prompt.
        """
        embedding = self._require_embedding()
        if point_coords is None and box is None and mask_input is None:
            raise InvalidPromptError("give at least one prompt: points, a box or a mask input")
        if (point_coords is None) != (point_labels is None):
            raise InvalidPromptError("point_coords and point_labels must be given together")
        device = self.model.device
        points = None
        if point_coords is not None:
            coords, labels = check_points(point_coords, point_labels, embedding.original_size)
            coords = self.transform.apply_coords(coords, embedding.original_size)
            points = (
                torch.as_tensor(coords, dtype=torch.float32, device=device)[None],
                torch.as_tensor(labels, device=device)[None],
            )
        boxes = None
        if box is not None:
            checked = check_box(box, embedding.original_size)
            boxes = self.transform.apply_boxes(checked, embedding.original_size)
            boxes = torch.as_tensor(boxes, dtype=torch.float32, device=device)
            boxes = boxes.reshape(1, 4)
        masks = None
        if mask_input is not None:
            masks = torch.as_tensor(self._check_mask_input(mask_input), device=device)[None]

        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks)
        low_res, iou = self.model.mask_decoder(
            image_embeddings=embedding.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )
        if best_only:
            best = iou[0].argmax()
            low_res, iou = low_res[:, best : best + 1], iou[:, best : best + 1]
        size = (self.model.img_size, embedding.input_size, embedding.original_size)
        return (
            upscale_masks(low_res[0], *size, threshold=self.model.mask_threshold),
            iou[0].clamp(0.0, 1.0).float().cpu().numpy(),
            low_res[0].float().cpu().numpy(),
        )

    @torch.inference_mode()
    def proposals(self, config=None) -> Proposals:
        """AutoPPN prompt proposals for the current image, in input-frame pixels (see :class:`Proposals`)."""
        embedding = self._require_embedding()
        return propose(self.model, embedding, config)

    def _require_embedding(self) -> ImageEmbedding:
        if self._embedding is None:
            raise NoEmbeddingError("no image is set: call set_image(image) or set_embedding(embedding) first")
        return self._embedding

    def _check_mask_input(self, mask_input: np.ndarray) -> np.ndarray:
        side = self.model.prompt_encoder.mask_input_size
        values = np.asarray(mask_input, dtype=np.float32)
        if values.shape != (1, *side):
            raise InvalidPromptError(f"mask_input must have shape (1, {side[0]}, {side[1]}), got {values.shape}")
        if not np.isfinite(values).all():
            raise InvalidPromptError("mask_input must hold finite logits")
        return values


def encode_image(model: LiteSAM, image: np.ndarray) -> ImageEmbedding:
    """Run the image encoder on an H×W×3 uint8 RGB image; returns its :class:`ImageEmbedding`."""
    image = check_image(image, model.img_size)
    resized = ResizeLongestSide(model.img_size, model.resize).apply_image(image)
    x = torch.as_tensor(resized, device=model.device).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        features, _ = model.image_encoder(model.preprocess(x))
    return ImageEmbedding(features, tuple(resized.shape[:2]), tuple(image.shape[:2]))


def propose(model: LiteSAM, embedding: ImageEmbedding, config=None) -> Proposals:
    """AutoPPN proposals (points, boxes, scores in input-frame pixels) from a stored embedding.

    Raises:
        NoProposalHeadError: the model has no AutoPPN head (an engine built from an official checkpoint).
    """
    autoppn = model.image_encoder.autoppn
    if autoppn is None:
        raise NoProposalHeadError(
            f"variant {model.variant} has no AutoPPN head (official checkpoints carry none): "
            "use SAM's point grid (SegEvery prompt_mode 'grid')"
        )
    with torch.inference_mode():
        output = autoppn(embedding.features)
    return decode_proposals(output, embedding.input_size, autoppn.stride, config)[0]
