"""Optimiser and LR schedule of a run (the recipe is in :mod:`litesam.train.config`)."""

from __future__ import annotations

import math

import torch


def build_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.AdamW:
    """AdamW with weight decay on the ≥ 2-D weights only (biases, norm scales and 1-D vectors are not decayed).

    ``fused`` (one kernel updates each tensor's weight and both moments in one pass), on the CPU as on CUDA:
    for ``litesam_tiny``'s 234 tensors 1.9 ms a step against 4.8 ms with ``foreach`` (2 threads, Intel Xeon
    with AVX-512, inside a training step) and ~16 ms with torch's per-tensor loop (one thread, AMD EPYC).
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier at optimiser step ``step`` (0-based): linear warm-up, then cosine to ``min_ratio``, reached
    at ``step = total_steps`` (one past the run's last step, so no step is taken at the final LR)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`warmup_cosine` over ``total_steps`` as a per-step scheduler."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, min_ratio)
    )
