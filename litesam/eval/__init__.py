"""Evaluation of Lite-SAM:

* :mod:`.metrics`: mask IoU (``mask_iou``, ``batched_mask_iou``) and ``MeanIoU`` by COCO object size;
* :mod:`.segany`: the 1-box / 1-point mIoU protocol (``evaluate_segany``, ``evaluate_dataset``, ``center_point``);
* :mod:`.cli`: the ``litesam eval`` sub-command (``add_eval_command``).

Nothing is imported here, so ``litesam --help`` does not pay for torch.
"""
