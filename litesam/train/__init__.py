"""Training of Lite-SAM: data (:mod:`.annotations`, :mod:`.data`), prompt simulation (:mod:`.prompts`),
losses (:mod:`.losses`) and the loop (:mod:`.loop`, ``train(config)``); ``litesam train`` is in :mod:`.cli`."""

from .annotations import DatasetError, ImageRecord, load_records
from .data import SegmentationDataset, TrainBatch, collate_samples
from .loop import TrainConfig, train, training_losses
from .losses import LossWeights
from .prompts import PromptConfig

__all__ = [
    "DatasetError",
    "ImageRecord",
    "LossWeights",
    "PromptConfig",
    "SegmentationDataset",
    "TrainBatch",
    "TrainConfig",
    "collate_samples",
    "load_records",
    "train",
    "training_losses",
]
