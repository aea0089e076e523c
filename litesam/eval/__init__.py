"""Evaluation of Lite-SAM:

* :mod:`.metrics`: mask IoU (``mask_iou``, ``batched_mask_iou``) and ``MeanIoU`` by COCO object size;
* :mod:`.segany`: the 1-box / 1-point mIoU protocol with the box-fill baseline (``evaluate_segany``,
  ``evaluate_dataset``, ``load_eval_records``, ``center_point``);
* :mod:`.coco_ap`: 1-box prompt mask AP with COCOeval (``MaskAP``);
* :mod:`.recall`: SegEvery instance recall (``segevery_recall``);
* :mod:`.cli`: the ``litesam eval`` sub-command (``add_eval_command``).

Nothing is imported here, so ``litesam --help`` does not pay for torch.
"""
