"""Distillation samples: the student's training sample of an image, the teacher's cached embedding of it and,
optionally, AutoPPN targets in the teacher's frame.

The student side reuses the trainer's :class:`litesam.train.data.SegmentationDataset` on records whose
"instance masks" are the teacher's pseudo-masks (:class:`PseudoLabelledImage`; none when no term needs them),
so the student's image, the AutoPPN heat and box targets (supplement Listing 1.1,
:mod:`litesam.train.autoppn_targets`) and the prompts of decoder fine-tuning are made exactly as in training
on human masks, from a generator seeded by ``(seed, epoch, index)``.

Batches: :class:`DistillBatchSampler` draws the epoch's order from ``(seed, epoch)`` only (as the trainer
does), so a run resumed at micro-batch ``b`` sees the batches an uninterrupted run would. Under DDP one global
batch of ``batch_size × world_size`` images is cut into one slice per process, and an incomplete last global
batch is dropped, so every process takes the same number of steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..masks import coco_rle_to_mask
from ..modeling.autoppn import cell_centres
from ..train.autoppn_targets import build_autoppn_targets
from ..train.config import PromptConfig
from ..train.data import SegmentationDataset, TrainBatch, TrainSample, collate_samples
from .sources import ImageItem


@dataclass(frozen=True)
class PseudoLabelledImage:
    """An unlabeled image as a training record (``image_id``, ``height``, ``width``, ``image()``,
    ``instance_masks()``), its masks the teacher's (COCO RLE at the original size; may be empty)."""

    image_id: int
    height: int
    width: int
    item: ImageItem
    masks: tuple[dict, ...] = ()

    def image(self) -> np.ndarray:
        """H×W×3 uint8 RGB."""
        return self.item.load()

    def instance_masks(self) -> Iterator[np.ndarray]:
        """The pseudo-masks, H×W bool each."""
        for rle in self.masks:
            yield coco_rle_to_mask(rle)


@dataclass(frozen=True)
class TeacherTargets:
    """AutoPPN targets in the teacher's frame (for a head trained on the teacher's own embedding).

    Attributes:
        heat: G×G float32; box: 4×G×G float32 (stride units); valid: G×G bool; num_peaks: int. G = S_t / stride.
    """

    heat: torch.Tensor
    box: torch.Tensor
    valid: torch.Tensor
    num_peaks: int

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors."""
        return sum(t.numel() * t.element_size() for t in (self.heat, self.box, self.valid))


@dataclass
class DistillSample:
    """One image: the student's :class:`TrainSample`, the teacher's C×n×n float16 embedding, and optional
    :class:`TeacherTargets`."""

    student: TrainSample
    teacher_embedding: torch.Tensor
    teacher_targets: TeacherTargets | None


@dataclass
class DistillBatch:
    """B samples: ``student`` (a :class:`TrainBatch`), ``teacher_embeddings`` B×C×n×n float16 and, when asked
    for, the teacher-frame targets stacked (``teacher_heat`` B×G×G, ``teacher_box`` B×4×G×G, ``teacher_valid``
    B×G×G, ``teacher_peaks`` B int64)."""

    student: TrainBatch
    teacher_embeddings: torch.Tensor
    teacher_heat: torch.Tensor | None = None
    teacher_box: torch.Tensor | None = None
    teacher_valid: torch.Tensor | None = None
    teacher_peaks: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.student)

    def to(self, device: torch.device | str) -> DistillBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return DistillBatch(self.student.to(device), move(self.teacher_embeddings), move(self.teacher_heat),
                            move(self.teacher_box), move(self.teacher_valid), move(self.teacher_peaks))


def collate_distill(samples: Sequence[DistillSample]) -> DistillBatch:
    """Batch distillation samples (the DataLoader's ``collate_fn``)."""
    batch = DistillBatch(collate_samples([s.student for s in samples]),
                         torch.stack([s.teacher_embedding for s in samples]))
    targets = [s.teacher_targets for s in samples]
    if targets[0] is not None:
        batch.teacher_heat = torch.stack([t.heat for t in targets])
        batch.teacher_box = torch.stack([t.box for t in targets])
        batch.teacher_valid = torch.stack([t.valid for t in targets])
        batch.teacher_peaks = torch.tensor([t.num_peaks for t in targets], dtype=torch.int64)
    return batch


class DistillDataset(Dataset):
    """Samples for distillation (see the module docstring).

    Args:
        source: the images, in cache order.
        embedding_shards: the embedding cache's shard payloads in order (:mod:`.teacher`), memory-mapped.
        shard_size: items per shard.
        masks: per image its pseudo-masks (COCO RLE list), or None when no term needs them.
        image_size, stride: the student's input side and AutoPPN stride.
        max_masks: pseudo-masks per image given prompts (decoder fine-tuning).
        seed: base seed of the per-sample draws.
        teacher_frame: (teacher input side, teacher AutoPPN stride) to add :class:`TeacherTargets`; None: none.
        cache_bytes: RAM budget for what does not change between epochs: the student's prepared images
            (``SegmentationDataset(cache_bytes=)``) and the teacher-frame targets, which draw on the same
            budget (at a 1024 teacher ~84 KB an image, against ~0.1–0.4 s to make from 15–50 pseudo-masks).
    """

    def __init__(
        self,
        source: Sequence[ImageItem],
        embedding_shards: Sequence[dict],
        shard_size: int,
        masks: Sequence[Sequence[dict]] | None,
        image_size: int,
        stride: int,
        max_masks: int = 16,
        seed: int = 0,
        teacher_frame: tuple[int, int] | None = None,
        cache_bytes: int = 0,
    ) -> None:
        self.shards = list(embedding_shards)
        self.shard_size = shard_size
        records = []
        for index, item in enumerate(source):
            payload = self.shards[index // shard_size]
            height, width = (int(v) for v in payload["original_sizes"][index % shard_size])
            records.append(PseudoLabelledImage(index, height, width, item, tuple(masks[index]) if masks else ()))
        prompts = PromptConfig(proposals_per_image=0)
        self.student = SegmentationDataset(
            records, image_size, stride, max_masks=max_masks, prompts=prompts, seed=seed, cache_bytes=cache_bytes
        )
        self.teacher_frame = teacher_frame
        self._teacher_targets: dict[int, TeacherTargets] = {}

    def __len__(self) -> int:
        return len(self.student)

    def set_epoch(self, epoch: int) -> None:
        self.student.set_epoch(epoch)

    def teacher_embedding(self, index: int) -> torch.Tensor:
        """The cached C×n×n float16 teacher embedding of image ``index``."""
        return self.shards[index // self.shard_size]["embeddings"][index % self.shard_size]

    def __getitem__(self, index: int) -> DistillSample:
        sample = self.student[index]
        targets = None if self.teacher_frame is None else self.teacher_targets(index)
        return DistillSample(sample, self.teacher_embedding(index).clone(), targets)

    def teacher_targets(self, index: int) -> TeacherTargets:
        """Image ``index``'s AutoPPN targets in the teacher's frame (made once while the cache budget lasts:
        they draw nothing random). Callers must not change them."""
        if index in self._teacher_targets:
            return self._teacher_targets[index]
        payload = self.shards[index // self.shard_size]
        input_size = tuple(int(v) for v in payload["input_sizes"][index % self.shard_size])
        record = self.student.records[index]
        targets = frame_targets(list(record.instance_masks()), input_size, *self.teacher_frame)
        if targets.nbytes <= self.student.cache_left:
            self._teacher_targets[index] = targets
            self.student.cache_left -= targets.nbytes
        return targets


def frame_targets(masks: list[np.ndarray], input_size: tuple[int, int], side: int, stride: int) -> TeacherTargets:
    """AutoPPN targets of original-size masks in a model's frame: each mask area-resized to ``input_size``
    (h', w') (a pixel on where at least half of it is), placed in the top-left of a ``side``² square, then
    :func:`~litesam.train.autoppn_targets.build_autoppn_targets` at ``stride``; cells whose centre lies in the
    padding are not valid."""
    h, w = input_size
    stack = np.zeros((len(masks), side, side), dtype=bool)
    for i, mask in enumerate(masks):
        stack[i, :h, :w] = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5
    stack = stack[stack.reshape(len(stack), -1).any(axis=1)] if len(stack) else stack
    targets = build_autoppn_targets(stack, stride=stride, shape=(side, side))
    grid = side // stride
    centres = cell_centres(grid, grid, stride)
    valid = (centres[..., 0] < w) & (centres[..., 1] < h)
    return TeacherTargets(torch.from_numpy(targets.heat), torch.from_numpy(targets.box_ltrb), valid, targets.num_peaks)


class DistillBatchSampler(Sampler[list[int]]):
    """This process's slices of one epoch's global batches, starting at micro-batch ``skip``.

    The epoch's order is a permutation drawn from ``(seed, epoch)``; global batch ``k`` holds positions
    ``[k·B·W, (k+1)·B·W)`` (B = batch size, W = world size), of which process ``rank`` takes the ``rank``-th
    slice of B. With W > 1 an incomplete last global batch is dropped.
    """

    def __init__(self, size: int, batch_size: int, seed: int, epoch: int, skip: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.order = np.random.default_rng([seed, epoch, 1]).permutation(size)
        self.batch_size, self.skip, self.rank, self.world_size = batch_size, skip, rank, world_size

    @staticmethod
    def batches_per_epoch(size: int, batch_size: int, world_size: int = 1) -> int:
        span = batch_size * world_size
        return math.ceil(size / span) if world_size == 1 else size // span

    def __iter__(self) -> Iterator[list[int]]:
        span = self.batch_size * self.world_size
        for k in range(self.skip, self.batches_per_epoch(len(self.order), self.batch_size, self.world_size)):
            start = k * span + self.rank * self.batch_size
            yield self.order[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch(len(self.order), self.batch_size, self.world_size) - self.skip)
