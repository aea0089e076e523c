"""Stateless helpers on binary masks and boxes, by family: COCO RLE (:mod:`litesam.masks.coco_rle`) and
boxes, stability score and NMS (:mod:`litesam.masks.boxes`). Import them from here.

Conventions used throughout:

* a mask is an H×W array (or a ``…×H×W`` tensor) indexed ``[row, col]`` = ``[y, x]``; "on" means ``True``
  (or nonzero where another dtype is accepted);
* boxes are in pixels of whatever frame the masks live in. **XYXY** = ``(x1, y1, x2, y2)``; boxes measured on
  masks are pixel-inclusive (``x2`` is the column of the right-most on pixel, as in SAM). **XYWH** =
  ``(x1, y1, x2 − x1, y2 − y1)`` (SAM's convention: no ``+ 1``);
* functions never modify their inputs and keep no state.

The Label Studio brush RLE lives beside the Label Studio code, in :mod:`backend.labelstudio.brush_rle`.
"""

from ..errors import InvalidMaskError
from .boxes import (
    batched_mask_to_box,
    box_iou_matrix,
    box_nms,
    box_xyxy_to_xywh,
    calculate_stability_score,
    mask_iou_matrix,
    mask_nms,
)
from .coco_rle import as_binary_mask, coco_rle_area, coco_rle_to_mask, mask_to_coco_rle, masks_to_coco_rle

__all__ = [
    "InvalidMaskError",
    "as_binary_mask",
    "batched_mask_to_box",
    "box_iou_matrix",
    "box_nms",
    "box_xyxy_to_xywh",
    "calculate_stability_score",
    "coco_rle_area",
    "coco_rle_to_mask",
    "mask_iou_matrix",
    "mask_nms",
    "mask_to_coco_rle",
    "masks_to_coco_rle",
]
