"""The Lite-SAM container: image encoder, prompt encoder and mask decoder under SAM's attribute names.

Keeping SAM's names (``image_encoder``, ``prompt_encoder``, ``mask_decoder``) means an official SAM
checkpoint's ``prompt_encoder.*`` and ``mask_decoder.*`` keys load into this model unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidImageError
from .engine import EngineEncoder
from .image_encoder import ImageEncoder
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

#: SAM's ImageNet pixel statistics, on the 0–255 scale, RGB order.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


class LiteSAM(nn.Module):
    """Lite-SAM: LiteViT image encoder (with neck and AutoPPN), SAM prompt encoder and mask decoder.

    The same container runs the SAM-family engines: ``image_encoder`` is then a
    :class:`~litesam.modeling.engine.EngineEncoder` (SAM ViT or TinyViT), which returns the same
    ``(embedding, AutoPPN output or None)`` pair. ``resize`` names the image resizing of the variant
    (:class:`~litesam.transforms.ResizeLongestSide` filters: ``"opencv"`` or SAM's ``"pil_bilinear"``).

    The model itself holds no per-image state; :class:`litesam.predictor.LiteSamPredictor` and
    :class:`litesam.everything.SegEvery` own the embeddings. Pixel mean/std are non-persistent buffers, so
    they never appear in (or are required from) a checkpoint.
    """

    #: Mask logits above this value are foreground.
    mask_threshold: float = 0.0

    def __init__(
        self,
        image_encoder: ImageEncoder | EngineEncoder,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = SAM_PIXEL_STD,
        variant: str | None = None,
        resize: str = "opencv",
    ) -> None:
        super().__init__()
        #: Registry name of the variant this model was built as (see :mod:`litesam.variants`), if any.
        self.variant = variant
        #: Image resizing filter of the variant (see :class:`litesam.transforms.ResizeLongestSide`).
        self.resize = resize
        #: SegEvery mask filters calibrated for these weights (``{"pred_iou_thresh": …,
        #: "stability_score_thresh": …}``, read from the checkpoint by ``build_model``), or None: SAM's.
        self.segevery_filters: dict[str, float] | None = None
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def img_size(self) -> int:
        """Side S of the square model input, in pixels (640 or 1024 for the paper's variants)."""
        return self.image_encoder.img_size

    def set_input_size(self, side: int) -> None:
        """Make S = ``side`` the model input (the trainer's progressive resizing, :mod:`litesam.train.loop`).

        LiteViT is resolution-agnostic (its attention stages encode position with a depthwise convolution,
        no table tied to one side), and so are AutoPPN, the prompt encoder and the mask decoder: the same
        weights run at any multiple of 16; the embedding becomes S/16 × S/16. Checkpoints hold no size.

        Raises:
            ValueError: an engine (SAM ViT / TinyViT position tables are tied to the checkpoint's side), or a
                side that is not a positive multiple of 16.
        """
        if not isinstance(self.image_encoder, ImageEncoder):
            raise ValueError("an engine's image encoder runs at its checkpoint's input side only")
        if side <= 0 or side % 16:
            raise ValueError(f"the input side must be a positive multiple of 16, got {side}")
        self.image_encoder.img_size = side
        self.prompt_encoder.set_input_size((side, side), (side // 16, side // 16))

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise and zero-pad a resized image batch to the model input.

        Args:
            x: B×3×h×w float, RGB on the 0–255 scale, longest side already resized to ``img_size``.
        Returns:
            B×3×S×S float, normalised with the pixel mean/std and padded at the bottom and right.
        """
        h, w = x.shape[-2:]
        if max(h, w) > self.img_size:
            raise InvalidImageError(f"resized image is {w}×{h}; its longest side must be at most {self.img_size}")
        x = (x - self.pixel_mean) / self.pixel_std
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> torch.Tensor:
        """Scale decoder logits back to the original image.

        Args:
            masks: B×C×4h×4w low-resolution mask logits from the mask decoder.
            input_size: (h, w) of the resized image inside the S×S input, before padding.
            original_size: (H, W) of the original image.
        Returns:
            B×C×H×W mask logits (threshold at :attr:`mask_threshold` for binary masks).
        """
        masks = F.interpolate(masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)
