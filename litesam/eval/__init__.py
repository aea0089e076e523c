"""Evaluation of Lite-SAM: mask IoU metrics (:mod:`.metrics`) and the SegAny 1-box / 1-point mIoU protocol
(:mod:`.segany`); ``litesam eval`` is in :mod:`.cli`."""

from .metrics import MeanIoU, batched_mask_iou, mask_iou
from .segany import center_point, evaluate_dataset, evaluate_segany

__all__ = ["MeanIoU", "batched_mask_iou", "center_point", "evaluate_dataset", "evaluate_segany", "mask_iou"]
