"""Training of Lite-SAM, one module per concern:

* :mod:`.annotations`: COCO / SA-1B readers (``load_records``, ``decode_mask``, ``DatasetError``);
* :mod:`.data`: ``SegmentationDataset`` (samples with prompts and AutoPPN targets), ``collate_samples``;
* :mod:`.prompts`: prompt simulation (``PromptConfig``, point / box / proposal prompts);
* :mod:`.losses`: mask and AutoPPN losses (``LossWeights``);
* :mod:`.loop`: ``TrainConfig``, ``train(config)``, ``training_losses``;
* :mod:`.cli`: the ``litesam train`` sub-command (``add_train_command``).

Nothing is imported here, so ``litesam --help`` does not pay for torch.
"""
