"""Shared benchmark plumbing: the header every benchmark prints, and interleaved timing.

Timings on shared 2-core machines drift by up to 2× between processes and minutes, so every benchmark
prints the machine's state (CPU model and flags, torch's kernel paths, threads, load average) and times
its candidates and references *interleaved* in one process: round r runs every job once, in a fixed order,
and each job's median over the rounds is compared with the others' as a ratio.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from litesam.allocator import keep_freed_memory
from litesam.inference import cpu_report, load_average


def header(title: str) -> str:
    """Lines describing the run: title, CPU and kernel paths, torch threads, malloc, load average now.

    Also applies the serving processes' malloc settings (:func:`litesam.allocator.keep_freed_memory`, as
    ``litesam-backend`` and the ``litesam`` CLI do at start-up), so a benchmark measures what they run.
    """
    malloc = "malloc thresholds fixed" if keep_freed_memory() else "malloc defaults (settings refused)"
    return f"{title}\n{cpu_report().describe()}; {malloc}\n{load_average()} (at start)"


def interleaved(jobs: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median wall-clock seconds of each job, the jobs run round-robin ``rounds`` times after ``warmup``."""
    return interleaved_timings(jobs, rounds, warmup)[0]


def interleaved_timings(
    jobs: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> tuple[dict[str, float], dict[str, float]]:
    """As :func:`interleaved`; returns (median wall-clock seconds, median process CPU seconds) per job.

    Process CPU time counts every thread of the process (a runtime's own worker threads included), and
    is less inflated than wall-clock time by other processes competing for the same core.
    """
    for _ in range(warmup):
        for job in jobs.values():
            job()
    wall: dict[str, list[float]] = {name: [] for name in jobs}
    cpu: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            job()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    return (
        {name: statistics.median(values) for name, values in wall.items()},
        {name: statistics.median(values) for name, values in cpu.items()},
    )


def set_threads(threads: int) -> None:
    """Fix torch's intra-op threads (and its inter-op pool to one thread) for a benchmark run."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already fixed by an earlier parallel call in this process
        pass


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"
