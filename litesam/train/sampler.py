"""The data order of a run: which images each process trains on at each optimiser step
(:class:`StepBatchSampler`, made by :meth:`litesam.train.runtime.RunContext.batch_sampler`)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[int]]):
    """One process's micro-batches of one epoch, in optimiser-step order.

    The epoch's order is a permutation seeded by ``(seed, epoch)`` alone, whatever the number of processes.
    Optimiser step s takes images ``[s·G, (s+1)·G)`` of it, ``G = batch_size × world_size × accumulate``, cut
    into ``world_size × accumulate`` equal micro-batches; process r runs numbers ``r·accumulate … r·accumulate
    + accumulate − 1``. The epoch's last, shorter step is cut into equal parts too, topped up with the epoch's
    first images to a multiple of the part count (as torch's DistributedSampler pads), so every process runs
    the same number of micro-batches, as DDP needs. With one process and no accumulation these are plain
    batches with a short last one.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        epoch: int,
        skip_steps: int = 0,
        rank: int = 0,
        world_size: int = 1,
        accumulate: int = 1,
    ) -> None:
        if not 0 <= rank < world_size or accumulate < 1 or batch_size < 1:
            raise ValueError(f"bad sharding: rank {rank} of {world_size}, accumulate {accumulate}, batch {batch_size}")
        self.order = np.random.default_rng([seed, epoch, 1]).permutation(size)
        self.batch_size, self.skip_steps = batch_size, skip_steps
        self.rank, self.world_size, self.accumulate = rank, world_size, accumulate

    def _steps(self) -> int:
        return math.ceil(len(self.order) / (self.batch_size * self.world_size * self.accumulate))

    def __iter__(self) -> Iterator[list[int]]:
        parts = self.world_size * self.accumulate
        width = self.batch_size * parts
        for step in range(self.skip_steps, self._steps()):
            images = self.order[step * width : (step + 1) * width]
            missing = -len(images) % parts
            if missing:
                images = np.concatenate([images, self.order[np.arange(missing) % len(self.order)]])
            share = len(images) // parts
            for part in range(self.rank * self.accumulate, (self.rank + 1) * self.accumulate):
                yield images[part * share : (part + 1) * share].tolist()

    def __len__(self) -> int:
        return max(0, self._steps() - self.skip_steps) * self.accumulate
