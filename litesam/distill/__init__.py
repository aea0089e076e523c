"""Distillation of Lite-SAM from a SAM-family teacher (``litesam distill``), one module per concern:

* :mod:`.config`: ``DistillConfig`` and config files (standard library only);
* :mod:`.sources`: the unlabeled images (a folder, the images of a COCO / SA-1B set, synthetic scenes);
* :mod:`.cache`: sharded, checksummed, resumable on-disk caches (``ShardedCache``);
* :mod:`.teacher`: the teacher, its cache keys, and the one pass that fills its embedding and pseudo-mask caches;
* :mod:`.alignment`: the teacher's embedding resampled to the student's grid (e.g. 64×64 at 1024 → 40×40 at 640);
* :mod:`.student`: the student, with the teacher's prompt encoder and mask decoder;
* :mod:`.data`: training samples (student image, teacher embedding, AutoPPN targets from pseudo-masks);
* :mod:`.objective`: the loss terms of one batch;
* :mod:`.state`: checkpoints and exact resume;
* :mod:`.loop`: ``distill(config)``;
* :mod:`.cli`: the ``litesam distill`` sub-command (``add_distill_command``).

Nothing is imported here, so ``litesam --help`` does not pay for torch.
"""
