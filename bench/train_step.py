"""Training-step benchmark: what one ``litesam train`` step of ``litesam_tiny`` costs on this CPU, by phase.

The step is the trainer's own (:func:`litesam.train.objective.training_losses`, ``clip_grad_norm_``, the
fused AdamW of :func:`litesam.train.optim.build_optimizer`) on synthetic scenes of the training seed, with
the CLI's defaults (prompts, loss weights, LR; no loader workers, the dataset's image cache filled first so
samples come from it, as from the second epoch of a run). Phases, in wall-clock ms: ``data`` (the next batch
from the cache), ``forward`` (model and losses), ``backward``, ``clip`` (gradient-norm clipping), ``adamw``.

Batch sizes and input sides (``--sides``; progressive resizing trains litesam_tiny at 128 px first, then at
its own 256) run interleaved in one process: each round takes ``--steps`` steps of every (side, batch size)
in turn, all on the same model, so the machine's drift and the weights' progress hit them alike; medians
over the rounds. From the medians, a least-squares line ``step = fixed + per_image × batch`` per side splits
what grows with the batch from what does not (small operations, per-pass overhead), and 8,000 steps are
projected at each setting (training only: the proof's evaluations come on top).

``--checkpoint`` starts from trained weights (e.g. the demo checkpoint): AutoPPN then matches proposals to
the ground truth and the decoder has more prompts to decode a batch, as in the second half of a run; random
weights (the default) give the first steps' cost.

    python bench/train_step.py [--batch-sizes 1 2 4 8] [--sides 256] [--threads 2] [--steps 10] [--rounds 3]
                               [--checkpoint litesam/weights/litesam_tiny_synthetic.pt]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchlib import header, set_threads
from litesam.build import build_model
from litesam.inference import load_average
from litesam.train.config import TrainConfig
from litesam.train.data import SegmentationDataset, collate_samples
from litesam.train.objective import training_losses
from litesam.train.optim import build_optimizer
from litesam.train.synthetic import synthetic_records

PHASES = ("data", "forward", "backward", "clip", "adamw")
PROOF_STEPS = 8000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--sides", type=int, nargs="+", default=[256], help="input sides (multiples of 16)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the proof's default: 2)")
    parser.add_argument("--steps", type=int, default=10, help="steps of each batch size per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkpoint", type=Path, help="start from these litesam_tiny weights")
    args = parser.parse_args()
    set_threads(args.threads)
    weights = "random weights (seed 0)" if args.checkpoint is None else f"weights {args.checkpoint}"
    print(header(f"bench/train_step.py: litesam_tiny, {weights}, {args.threads} threads"))

    config = TrainConfig(output_dir="unused", data="synthetic", variant="litesam_tiny")
    torch.manual_seed(config.seed)
    model = build_model("litesam_tiny", checkpoint=args.checkpoint).train()
    records = synthetic_records(config.synthetic_images, config.synthetic_seed)
    datasets = {
        side: SegmentationDataset.for_run(records, model, config, 0, image_size=side) for side in args.sides
    }
    for dataset in datasets.values():
        for index in range(len(dataset)):  # fill the cache: later reads are what a run's second epoch reads
            dataset[index]
    optimizer = build_optimizer(model, config.resolved_lr(), config.weight_decay, config.betas)

    def epoch(side: int, size: int) -> Iterator:
        """A new shuffled pass over the dataset of ``side`` in batches of ``size``."""
        return iter(DataLoader(datasets[side], batch_size=size, shuffle=True, collate_fn=collate_samples,
                               drop_last=True))

    settings = [(side, size) for side in args.sides for size in args.batch_sizes]
    batches = {setting: epoch(*setting) for setting in settings}

    def step(setting: tuple[int, int]) -> dict[str, float]:
        model.set_input_size(setting[0])
        marks = [time.perf_counter()]
        batch = next(batches[setting], None)
        if batch is None:  # a new epoch of this setting
            batches[setting] = epoch(*setting)
            batch = next(batches[setting])
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        losses = training_losses(model, batch, config.prompts, config.losses)
        marks.append(time.perf_counter())
        losses["loss"].backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        timing = {phase: marks[i + 1] - marks[i] for i, phase in enumerate(PHASES)}
        timing["prompts"] = float(losses["n_point"] + losses["n_box"] + losses["n_proposal"])
        return timing

    for setting in settings:  # warm-up: one step of each
        step(setting)
    rounds: dict[tuple[int, int], list[dict[str, float]]] = {setting: [] for setting in settings}
    for _ in range(args.rounds):
        for setting in settings:
            steps = [step(setting) for _ in range(args.steps)]
            rounds[setting].append({key: statistics.mean(s[key] for s in steps) for key in steps[0]})

    print(f"\nmedians of {args.rounds} rounds × {args.steps} steps; {load_average()} (at end)")
    print("| side | batch | prompts decoded | " + " | ".join(PHASES) + " | step | per image | 8,000 steps |")
    print("| ---: " * (len(PHASES) + 6) + "|")
    totals = {}
    for (side, size), measured in rounds.items():
        phase = {key: statistics.median(r[key] for r in measured) for key in measured[0]}
        totals[side, size] = statistics.median(sum(r[p] for p in PHASES) for r in measured)
        cells = " | ".join(f"{phase[p] * 1e3:.1f}" for p in PHASES)
        print(f"| {side} | {size} | {phase['prompts']:.1f} | {cells} | {totals[side, size] * 1e3:.1f} | "
              f"{totals[side, size] / size * 1e3:.1f} | {totals[side, size] * PROOF_STEPS:.0f} s |")
    for side in args.sides if len(args.batch_sizes) >= 2 else []:
        sizes = np.array(args.batch_sizes, dtype=float)
        per_image, fixed = np.polyfit(sizes, np.array([totals[side, size] for size in args.batch_sizes]), 1)
        print(f"{side} px: step ≈ {fixed * 1e3:.1f} ms fixed + {per_image * 1e3:.1f} ms per image (least "
              f"squares over batch sizes {', '.join(str(s) for s in args.batch_sizes)})")


if __name__ == "__main__":
    main()
