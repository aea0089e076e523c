"""The float32 matrix-product kernel of inference: torch's default (MKL) or oneDNN, chosen on this CPU.

torch sends a float32 ``linear`` / ``addmm`` on the CPU to MKL, which picks its code path by CPU *vendor*: on
an AMD CPU with AVX-512 (Zen 4, Zen 5) it runs its AVX2 kernels, at under half of what the core can do.
oneDNN, which torch also carries, picks by feature flags and runs AVX-512 there. Its float32 matmul is
reached through ``torch.ops.mkldnn._linear_pointwise`` (the op torch's own inductor uses for CPU linear
layers), which also fuses a GELU or a residual addition into the product. Measured on an AMD EPYC Zen 5,
one thread: 2.3× MKL's ``linear`` at the encoder MLP's shapes (README, "Benchmarks"). The arithmetic is
float32 either way; only the summation order differs (outputs equal to ~1e-6 relative).

Which kernel runs is one choice per process, made once (:func:`fp32_kernel`): ``LITESAM_FP32_KERNEL``
(``mkl``, ``onednn`` or ``auto``, the default) or, for ``auto``, a probe of ~25 ms on one core that times
both kernels on the encoder MLP's product (1,024 pixels × 64 → 256 channels) and takes oneDNN when it is at
least :data:`ONEDNN_MIN_SPEEDUP` times faster. On a CPU where MKL runs its best path (Intel with AVX-512)
the two are within a few per cent and MKL stays. Autograd has no formula for oneDNN's op, so a product
that needs gradients always runs on torch's default.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

#: ``auto`` takes oneDNN when its probe product is at least this many times faster than MKL's.
ONEDNN_MIN_SPEEDUP = 1.2

#: Environment variable that forces the kernel: ``mkl``, ``onednn`` or ``auto``.
KERNEL_ENV = "LITESAM_FP32_KERNEL"
KERNELS = ("mkl", "onednn", "auto")

_forced: str | None = None  # set by :func:`forced` only

# The probe's product: one 1,024-pixel chunk of a fused LiteViT MLP at r640's first stage (64 → 256).
_PROBE_ROWS, _PROBE_IN, _PROBE_OUT = 1024, 64, 256
_PROBE_ROUNDS = 3


def onednn_linear_available() -> bool:
    """torch was built with oneDNN and has its fused linear op."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def gflops_on_one_core(run: Callable[[], object], flops: int) -> float:
    """Best-of-5 speed of ``run`` (``flops`` floating-point operations) on one torch thread, GFLOP/s.

    The calling thread's CPU time: the kernel's speed, not the machine's load (with two threads a busy
    neighbour process makes OpenMP spin-wait and a probe measure the wait). Restores the thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run()
        best = float("inf")
        for _ in range(5):
            start = time.thread_time()
            run()
            best = min(best, time.thread_time() - start)
    finally:
        torch.set_num_threads(threads)
    return flops / max(best, 1e-9) / 1e9


@functools.lru_cache(maxsize=1)
def probe_gflops() -> tuple[float, float | None]:
    """(MKL, oneDNN) float32 speed of the probe product on one core, GFLOP/s; oneDNN None where absent."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(_PROBE_ROWS, _PROBE_IN, generator=generator)
    weight = torch.randn(_PROBE_OUT, _PROBE_IN, generator=generator)
    bias = torch.randn(_PROBE_OUT, generator=generator)
    flops = 2 * _PROBE_ROWS * _PROBE_IN * _PROBE_OUT
    candidates = {"mkl": lambda: F.linear(x, weight, bias)}
    if onednn_linear_available():
        candidates["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    # The kernels alternate over a few rounds and each keeps its best: a single measurement of a few ms
    # was at times half speed (measured on an AMD EPYC Zen 4: MKL's first 1–2 ms in a process at ~35 against
    # ~80 GFLOP/s after), which flipped the choice between processes.
    best = dict.fromkeys(candidates, 0.0)
    for _ in range(_PROBE_ROUNDS):
        for name, run in candidates.items():
            best[name] = max(best[name], gflops_on_one_core(run, flops))
    return best["mkl"], best.get("onednn")


def choose_kernel(requested: str, mkl_gflops: float, onednn_gflops: float | None) -> str:
    """Resolve ``mkl`` / ``onednn`` / ``auto`` from the probe's speeds (see the module docstring).

    Raises:
        ValueError: an unknown kernel, or ``onednn`` asked for where torch has no oneDNN linear op.
    """
    if requested not in KERNELS:
        raise ValueError(f"{KERNEL_ENV} must be one of {', '.join(KERNELS)}, got {requested!r}")
    if requested == "onednn" and onednn_gflops is None:
        raise ValueError(f"{KERNEL_ENV}=onednn: this torch build has no oneDNN linear op")
    if requested != "auto":
        return requested
    return "onednn" if onednn_gflops is not None and onednn_gflops >= ONEDNN_MIN_SPEEDUP * mkl_gflops else "mkl"


@functools.lru_cache(maxsize=1)
def fp32_kernel() -> str:
    """The process's float32 inference kernel, ``"mkl"`` or ``"onednn"`` (probed on the first call).

    Raises:
        ValueError: ``LITESAM_FP32_KERNEL`` holds something else than ``mkl``, ``onednn`` or ``auto``.
    """
    requested = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
    if requested == "mkl":
        return "mkl"
    return choose_kernel(requested, *probe_gflops())


@contextlib.contextmanager
def forced(kernel: str) -> Iterator[None]:
    """Run the block on ``kernel`` (``"mkl"`` or ``"onednn"``) whatever the process's choice.

    For benchmarks and tests that compare the two in one process; not for serving (it is process-wide, not
    per thread).
    """
    global _forced
    if kernel not in ("mkl", "onednn"):
        raise ValueError(f"kernel must be mkl or onednn, got {kernel!r}")
    previous, _forced = _forced, kernel
    try:
        yield
    finally:
        _forced = previous


def _on_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """This float32 CPU product may run on oneDNN: no gradient needed, and oneDNN is the kernel in use."""
    if x.dtype != torch.float32 or x.device.type != "cpu":
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    return (_forced or fp32_kernel()) == "onednn"


def _bf16_on_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A bfloat16 CPU product without gradients, which oneDNN's fused op can take."""
    if x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16 or x.device.type != "cpu":
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    return onednn_linear_available()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` (``F.linear``): ``…×K`` with ``weight`` ``N×K`` → ``…×N``."""
    if _on_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``GELU(x @ weight.T + bias)`` (erf GELU), fused into the product on oneDNN, in place otherwise.

    bfloat16 products (the inference path's bf16 parts) always take oneDNN's fused form when no gradient is
    needed: torch runs them on oneDNN anyway, and the fusion saves the GELU's pass over the output.
    """
    if _on_onednn(x, weight) or _bf16_on_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
    return torch.ops.aten.gelu_(F.linear(x, weight, bias))


def linear_residual(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``residual + x @ weight.T`` for 2-D ``x`` (``R×K``), ``weight`` (``N×K``), ``residual`` (``R×N``)."""
    if _on_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, None, "add")
    return torch.addmm(residual, x, weight.t())


def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.bmm(a, b)``: ``B×N×K`` · ``B×K×M`` → ``B×N×M``; on oneDNN one product per batch entry.

    Meant for products large enough per entry (the decoder's per-prompt attention over the image tokens,
    ~50 × 256 × 1,600); tiny ones are cheaper in one MKL batch call.
    """
    if not _on_onednn(a, b):
        return torch.bmm(a, b)
    out = a.new_empty((a.shape[0], a.shape[1], b.shape[2]))
    for i in range(a.shape[0]):
        out[i] = torch.ops.mkldnn._linear_pointwise(a[i], b[i].transpose(0, 1), None, "none", [], "")
    return out


def baddbmm(residual: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.baddbmm(residual, a, b)``: ``residual`` (``B×N×M`` or ``1×N×M``) + ``a`` · ``b`` (as :func:`bmm`).

    On oneDNN the products run per batch entry and the residual is added after them: for the decoder's
    image-token update (1,600 × 64 → 256 per prompt, 5 prompts, one thread) 1.9 ms against MKL's 2.8 ms
    on an AMD Zen 5, where oneDNN's fused residual addition took 2.7 ms.
    """
    if not _on_onednn(a, b):
        return torch.baddbmm(residual, a, b)
    return bmm(a, b).add_(residual)
