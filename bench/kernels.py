"""Float32 kernel benchmark: MKL against oneDNN (and bf16 where native) on the inference path's products.

What ``litesam.kernels``' start-up probe decides from one product (1,024 × 64 → 256), measured on the shapes
the r640 inference path spends its time in (rows × in → out): LiteViT's first-stage MLP (25,600 pixels,
64 → 256 channels), its third-stage MLP (1,600 pixels, 96 → 384) and the mask decoder's two upscaling
convolutions for one prompt (1,600 × 256 → 4·64 and 6,400 × 64 → 4·32: a 2×2 stride-2 transposed
convolution is one product per pixel). Each product is ``x @ w.T + b`` in float32 on one torch thread:
MKL through ``F.linear`` (torch's default), oneDNN through ``torch.ops.mkldnn._linear_pointwise`` (what
``litesam.kernels`` routes to), and, where this CPU has native bf16 instructions, ``F.linear`` on bf16
tensors. The kernels run interleaved, round after round, each round the start-up probe's own timing
(``litesam.kernels.gflops_on_one_core``: best of 5 calls in the calling thread's CPU time, so a busy
neighbour process does not count against it); each kernel keeps its best round.

    python bench/kernels.py [--rounds 3]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch.nn import functional as F

from benchlib import header, set_threads
from litesam import kernels
from litesam.inference import cpu_report

#: (rows, in, out) of the products timed, with what they are.
SHAPES = {
    (1024, 64, 256): "the start-up probe",
    (25600, 64, 256): "LiteViT stage-1 MLP, r640",
    (1600, 96, 384): "LiteViT stage-3 MLP, r640",
    (1600, 256, 256): "decoder 1st upscaling, 1 prompt, r640",
    (6400, 64, 128): "decoder 2nd upscaling, 1 prompt, r640",
}


def products(rows: int, inputs: int, outputs: int, bf16: bool) -> dict[str, Callable[[], object]]:
    """The kernels' calls of one ``rows × inputs → outputs`` product, by kernel name."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, inputs, generator=generator)
    weight = torch.randn(outputs, inputs, generator=generator) / inputs**0.5
    bias = torch.randn(outputs, generator=generator)
    calls = {"MKL": lambda: F.linear(x, weight, bias)}
    if kernels.onednn_linear_available():
        calls["oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    if bf16:
        xb, wb, bb = x.bfloat16(), weight.bfloat16(), bias.bfloat16()
        calls["bf16"] = lambda: F.linear(xb, wb, bb)
    return calls


def best_gflops(calls: dict[str, Callable[[], object]], flops: int, rounds: int) -> dict[str, float]:
    """Each call's best speed, GFLOP/s, over ``rounds`` interleaved rounds of ``gflops_on_one_core``."""
    best = dict.fromkeys(calls, 0.0)
    for _ in range(rounds):
        for name, call in calls.items():
            best[name] = max(best[name], kernels.gflops_on_one_core(call, flops))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    set_threads(1)
    print(header("bench/kernels.py: float32 products on MKL and oneDNN, 1 thread"))
    bf16 = cpu_report().bf16_native
    rows = []
    for (n, k, m), what in SHAPES.items():
        speeds = best_gflops(products(n, k, m, bf16), 2 * n * k * m, args.rounds)
        rows.append((f"{n} × {k} → {m} ({what})", speeds))
    names = list(rows[0][1])
    print(f"\nbest of {args.rounds} rounds × 5 calls, GFLOP/s (thread CPU time)")
    print("| product (rows × in → out) | " + " | ".join(names) + " | oneDNN / MKL |")
    print("| --- |" + " ---: |" * (len(names) + 1))
    for label, speeds in rows:
        ratio = f"{speeds['oneDNN'] / speeds['MKL']:.2f}×" if "oneDNN" in speeds else "–"
        print(f"| {label} | " + " | ".join(f"{speeds[n]:.0f}" for n in names) + f" | {ratio} |")
    print(f"\nthis process's fp32 kernel by the start-up rule: {kernels.fp32_kernel()}")


if __name__ == "__main__":
    main()
