"""What every training command shares at run time: device, ``torchrun`` processes (DDP), gradient
accumulation, bf16 autocast, the progress bar (the data order of a step: :mod:`.sampler`).

One :class:`RunContext` per process, made by :meth:`RunContext.start`; ``litesam train``
(:func:`litesam.train.loop.train`) uses it like this, and so can ``litesam distill``::

    ctx = RunContext.start(device="auto", amp=True, accumulate_steps=2, progress=True)
    try:
        torch.manual_seed(seed)                        # the same initial weights on every process
        model = build(...).to(ctx.device)
        ctx.seed_ranks(seed)                           # then one random stream per process
        objective = ctx.wrap(ObjectiveModule(model))   # DDP when there are several processes
        steps = ctx.steps_per_epoch(len(dataset), batch_size)
        sampler = ctx.batch_sampler(len(dataset), batch_size, seed, epoch, skip_steps=done_in_epoch)
        with ctx.progress(total_steps, initial=step) as bar:
            for micro_batches in ctx.optimiser_steps(DataLoader(dataset, batch_sampler=sampler, ...)):
                for index, batch in enumerate(micro_batches):
                    with ctx.micro_batch(objective, index):   # gradients all-reduced at the last one only
                        with ctx.autocast():
                            loss = objective(batch)["loss"]
                        ctx.scaled(loss).backward()            # loss / accumulate_steps
                optimizer.step(); optimizer.zero_grad(); bar.update()
                if ctx.is_main: ...                            # logs, JSONL, checkpoints: rank 0 only
    finally:
        ctx.close()

Processes: under ``torchrun --nproc_per_node=N`` (environment ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) the
context joins the process group (backend ``nccl`` on CUDA, ``gloo`` on the CPU); process r uses
``cuda:<LOCAL_RANK>`` for ``--device auto`` / ``cuda``. Without torchrun (or with one process) nothing
distributed happens. Processes other than rank 0 log warnings only.

Gradients: an optimiser step averages the gradients of ``world_size × accumulate_steps`` micro-batches of
``batch_size`` images (DDP averages over processes, :meth:`scaled` divides each micro-batch loss by
``accumulate_steps``). That equals the gradient of one batch of all those images exactly when the loss is a
mean over images with the same normaliser in every micro-batch; ``litesam train``'s objective normalises per
micro-batch (mask terms: mean over its prompts; heat: sum over cells / its peak count; boxes: weighted mean
over its cells), so in general it is the mean of the micro-batches' losses, which weights each micro-batch
equally rather than each prompt (tests/test_train_runtime.py checks both cases). ``world_size = 2`` and
``accumulate_steps = 1`` gives the same step as one process with ``accumulate_steps = 2`` (same images, same
micro-batches), up to float summation order.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import torch
import torch.distributed as dist

from ..errors import LiteSamError
from .sampler import StepBatchSampler

logger = logging.getLogger(__name__)


@dataclass
class RunContext:
    """One process's part of a run (see the module docstring).

    Attributes:
        device: where the model and batches go.
        rank, world_size, local_rank: the process's place among ``torchrun``'s (0, 1, 0 without it).
        accumulate_steps: micro-batches per optimiser step and process.
        amp: bf16 autocast in :meth:`autocast` (CUDA only).
        show_progress: whether :meth:`progress` draws a bar (rank 0, a terminal, not switched off).
        stream: where the bar is drawn (stderr).
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    accumulate_steps: int = 1
    amp: bool = False
    show_progress: bool = False
    stream: IO[str] = sys.stderr

    @classmethod
    def start(
        cls,
        device: str = "auto",
        amp: bool = False,
        accumulate_steps: int = 1,
        progress: bool = True,
        stream: IO[str] | None = None,
    ) -> RunContext:
        """Resolve the device, join ``torchrun``'s process group if there is one, and decide AMP and progress.

        Args:
            device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
            amp: bf16 autocast; on the CPU it is switched off with a warning.
            accumulate_steps: ≥ 1.
            progress: allow the bar (it is drawn only on rank 0 and when ``stream`` is a terminal).
            stream: the bar's stream (default ``sys.stderr``).
        Raises:
            LiteSamError: CUDA asked for but not available; ``accumulate_steps`` < 1.
        """
        if accumulate_steps < 1:
            raise LiteSamError(f"accumulate_steps must be ≥ 1, got {accumulate_steps}")
        stream = sys.stderr if stream is None else stream
        rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        resolved = _resolve_device(device, local_rank)
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        if world_size > 1:
            dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
        if rank != 0:
            logging.getLogger("litesam").setLevel(logging.WARNING)  # one process reports
        if amp and resolved.type != "cuda":
            logger.warning("--amp is ignored on %s: bfloat16 autocast is used on CUDA only", resolved)
        is_tty = hasattr(stream, "isatty") and stream.isatty()
        return cls(
            device=resolved,
            rank=rank,
            world_size=world_size,
            local_rank=local_rank,
            accumulate_steps=accumulate_steps,
            amp=amp and resolved.type == "cuda",
            show_progress=progress and rank == 0 and is_tty,
            stream=stream,
        )

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1

    # --- models and gradients ----------------------------------------------------------------------------

    def seed_ranks(self, seed: int) -> None:
        """Seed torch's RNG per process (``seed + rank``) once the shared initial weights exist; a single
        process keeps its stream as it is (so single-process runs are unchanged)."""
        if self.distributed:
            torch.manual_seed(seed + self.rank)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` in DistributedDataParallel when distributed (rank 0's weights are broadcast), else as is.

        ``find_unused_parameters`` is on: which prompt embeddings a batch uses depends on its prompts.
        """
        if not self.distributed:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(
            module, device_ids=device_ids, find_unused_parameters=True
        )

    @staticmethod
    def unwrap(module: torch.nn.Module) -> torch.nn.Module:
        """The module inside a DDP wrapper (``module`` itself otherwise)."""
        return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module

    def micro_batch(self, module: torch.nn.Module, index: int) -> contextlib.AbstractContextManager:
        """Context for the forward and backward of micro-batch ``index`` (0-based) of an optimiser step: DDP
        all-reduces the gradients only at the last one (``no_sync`` before)."""
        if self.distributed and index < self.accumulate_steps - 1:
            return module.no_sync()
        return contextlib.nullcontext()

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when AMP is on (CUDA), else nothing; wrap the forward only, not the backward."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """A micro-batch's loss divided by ``accumulate_steps`` (its share of the step's mean)."""
        return loss / self.accumulate_steps if self.accumulate_steps > 1 else loss

    # --- data ----------------------------------------------------------------------------------------------

    @property
    def parts(self) -> int:
        """Micro-batches per optimiser step over all processes."""
        return self.world_size * self.accumulate_steps

    def steps_per_epoch(self, size: int, batch_size: int) -> int:
        """Optimiser steps in one pass over ``size`` images."""
        return math.ceil(size / (batch_size * self.parts))

    def batch_sampler(self, size: int, batch_size: int, seed: int, epoch: int, skip_steps: int = 0) -> StepBatchSampler:
        """This process's micro-batches of ``epoch``, after the first ``skip_steps`` optimiser steps."""
        return StepBatchSampler(
            size, batch_size, seed, epoch, skip_steps, self.rank, self.world_size, self.accumulate_steps
        )

    def optimiser_steps(self, micro_batches: Iterable[Any]) -> Iterator[list[Any]]:
        """Group an iterable of micro-batches into lists of ``accumulate_steps`` (one list per optimiser step)."""
        group: list[Any] = []
        for batch in micro_batches:
            group.append(batch)
            if len(group) == self.accumulate_steps:
                yield group
                group = []
        if group:
            raise RuntimeError(f"{len(group)} micro-batches left over; the sampler yields whole steps")

    # --- reporting and collectives ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def progress(self, total: int, initial: int = 0, desc: str = "train") -> Iterator[Any]:
        """A tqdm bar over optimiser steps (a silent one where :attr:`show_progress` is False); log lines
        are written above it while it is shown."""
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="step",
            file=self.stream,
            disable=not self.show_progress,
            dynamic_ncols=True,
        )
        try:
            with logging_redirect_tqdm() if self.show_progress else contextlib.nullcontext():
                yield bar
        finally:
            bar.close()

    def mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """The mean of each value over the processes (the same keys on every process); a copy when alone."""
        if not self.distributed or not values:
            return dict(values)
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return {k: float(v) / self.world_size for k, v in zip(keys, tensor.tolist())}

    def replica_divergence(self, module: torch.nn.Module) -> float:
        """Largest absolute difference between this run's replicas of ``module``'s parameters (0.0 alone).

        DDP keeps them identical; this checks it (one broadcast of the weights), e.g. at each checkpoint.
        """
        if not self.distributed:
            return 0.0
        mine = torch.nn.utils.parameters_to_vector(self.unwrap(module).parameters()).detach()
        reference = mine.clone()
        dist.broadcast(reference, src=0)
        difference = (mine - reference).abs().max().reshape(1).double()
        dist.all_reduce(difference, op=dist.ReduceOp.MAX)
        return float(difference)

    def rng_states(self) -> list[torch.Tensor]:
        """torch's CPU RNG state of every process, by rank (collective: every process must call it)."""
        state = torch.get_rng_state()
        if not self.distributed:
            return [state]
        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, state)
        return states

    def barrier(self) -> None:
        """Wait for every process (no-op alone)."""
        if self.distributed:
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def close(self) -> None:
        """Leave the process group (call once, in ``finally``)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _resolve_device(name: str, local_rank: int) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` → a device; ``cuda`` and ``auto`` use ``cuda:<local_rank>``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LiteSamError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise LiteSamError(f"device {name!r} is not supported (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LiteSamError(f"device {name!r} was asked for, but CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise LiteSamError(f"device {device} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return device
