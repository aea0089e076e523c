"""Training of Lite-SAM, one module per concern:

* :mod:`.config`: ``TrainConfig``, ``PromptConfig``, ``LossWeights`` (standard library only);
* :mod:`.annotations`: COCO / SA-1B readers (``load_records``, ``decode_mask``, ``DatasetError``);
* :mod:`.synthetic`: generated scenes with exact instance masks (``synthetic_records``);
* :mod:`.autoppn_targets`: AutoPPN's distance-transform heatmap and box targets (supplement Listing 1.1);
* :mod:`.data`: ``SegmentationDataset`` (samples with prompts and AutoPPN targets), ``collate_samples``;
* :mod:`.prompts`: prompt simulation (point / box / proposal prompts);
* :mod:`.losses`: mask and AutoPPN loss terms;
* :mod:`.objective`: ``training_losses`` (one batch through the model, every term);
* :mod:`.optim`: AdamW and the warm-up + cosine schedule;
* :mod:`.state`: checkpoints and resumable state;
* :mod:`.runtime`: ``RunContext`` (device, ``torchrun`` / DDP, accumulation, autocast, progress), shared by
  every training command; :mod:`.sampler`: ``StepBatchSampler`` (each process's micro-batches of a step);
* :mod:`.config_file`: ``--config`` files merged with the flags given (``load_config_file``, ``build_config``);
* :mod:`.loop`: ``train(config)``;
* :mod:`.cli`: the ``litesam train`` sub-command (``add_train_command``).

Nothing is imported here, so ``litesam --help`` does not pay for torch.
"""
