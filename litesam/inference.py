"""The inference path: the number format the encoder and mask decoder compute in, chosen from this CPU, and
what runs the encoder.

Two number formats exist (the measured alternatives are in the README's benchmark section):

- ``fp32`` (the default and the fallback): the model as built; outputs are the torch model's own. Its
  linear layers run on the float32 kernel :mod:`litesam.kernels` picks for this CPU (oneDNN's AVX-512
  kernels where torch's MKL takes a slower path, as on AMD Zen 4/5), for every path and every caller.
- ``bf16``: the image encoder's backbone and neck hold bfloat16 weights and compute in bfloat16 (oneDNN's
  AMX or AVX512_BF16 kernels, float32 accumulation inside each matrix product), with the input cast in and
  the embedding cast back to float32 at the encoder's boundary; the mask decoder's output upscaling (two
  transposed convolutions, LayerNorm, GELU and the mask product, about half of a prompt's decode) computes
  in bfloat16 too. The decoder's two-way transformer, AutoPPN and the prompt encoder stay float32: in
  bfloat16 the transformer moved mask boundaries the most (measured) and gained the least. Embeddings,
  mask logits and scores stay float32 for every caller.

``auto`` picks ``bf16`` by this rule, else ``fp32``: the CPU reports a native bf16 dot-product instruction
(``amx_bf16`` or ``avx512_bf16`` among its feature flags, and torch's oneDNN says bf16 is supported), and a
probe measured at start-up finds a bfloat16 matrix product of the decoder's shape at least
:data:`BF16_MIN_SPEEDUP` times faster than the same float32 one. Nothing is assumed from the CPU's vendor or
model name; on a model placed on another device ``auto`` means ``fp32``. On the parity images (``tests/test_inference.py``: random weights, whose flat logit maps are the
worst case for rounding) bf16 click masks of litesam_r640 keep a mean IoU of at least 0.99 with the fp32
masks; single masks go down to about 0.97.

The encoder's runtime (``runtime``): ``torch`` (the modules above) or ``openvino``
(:mod:`litesam.openvino_encoder`: the backbone and neck compiled by OpenVINO's CPU plugin in the chosen
precision; AutoPPN and the decoder stay torch). ``auto`` takes OpenVINO when the path is ``bf16``, the
``openvino`` and ``onnx`` packages are installed and the model is an unfused Lite-SAM (engines keep torch):
on an AMD Zen 4 its bf16 encoder ran 1.44× faster than torch's bf16 one and kept closer to fp32; its f32
encoder was only 1.15–1.19× faster than torch's, below the 1.3× a second path has to earn, so fp32 stays
torch unless ``openvino`` is asked for (then its f32 embedding equals torch's within 1e-4, tested).

Other inference backends, rejected by measurement (``bench/backends.py``, fp32, one thread, random weights,
interleaved with torch eager in one process; AMD EPYC Zen 3, AVX2 only): on the fused encoder no backend
reached the 1.3× over torch eager that would justify a second inference path to keep in parity. OpenVINO
2026.4 (ONNX of the ``fuse=False`` build, CPU plugin, f32) 1.0–1.2× at r640 and r1024; ONNX Runtime 1.31
0.8–1.0× (0.47× from the fused build's dynamo export); ``torch.compile`` (inductor, freezing) 0.90× after
438 s of compilation per process; ``torch.jit.freeze`` + ``optimize_for_inference`` 0.8–0.9× (and a crash
on the mask decoder). Decoder exports by tracing lose the decoder's in-place mask writes (outputs wrong, so
their apparent speed-ups are none); exported with the dynamo exporter the r640 click decoder keeps parity
and runs 1.36× (OpenVINO) / 1.22× (ONNX Runtime) faster in CPU time, a decoder-only gain not taken up here.
The README's benchmark section has the figures.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from . import kernels
from .modeling.lite_sam import LiteSAM
from .openvino_encoder import OpenVinoImageEncoder, why_not_convertible

Precision = Literal["fp32", "bf16"]
PRECISIONS = ("fp32", "bf16", "auto")
Runtime = Literal["torch", "openvino"]
RUNTIMES = ("torch", "openvino", "auto")

#: ``auto`` takes bf16 only when the probe's bf16 matrix product is at least this much faster than fp32.
BF16_MIN_SPEEDUP = 1.5

#: CPU feature flags (as /proc/cpuinfo spells them) that give native bfloat16 dot products.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")

#: Feature flags reported by :func:`cpu_report` (the ones that decide which kernels can run).
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")

# The probe's matrix product: one decoder chunk's upscaling matmul at r640 (1,600 tokens × 256 → 256).
_PROBE_SHAPE = (1600, 256, 256)


@dataclass(frozen=True)
class CpuReport:
    """What this process computes on, for logs and benchmark headers.

    Attributes:
        model: CPU model name as the OS reports it ("unknown" where it does not).
        flags: the :data:`REPORTED_FLAGS` this CPU has.
        capability: torch's vectorised-kernel level (``torch.backends.cpu.get_cpu_capability()``, e.g. AVX512).
        blas: the math libraries torch can use, e.g. "mkl, onednn".
        threads: torch intra-op threads.
        fp32_gflops: measured float32 matrix-product speed of the probe shape on one core, GFLOP/s.
        bf16_gflops: the same in bfloat16, or None where oneDNN has no bf16 support.
        fp32_kernel: the float32 kernel inference runs on (:func:`litesam.kernels.fp32_kernel`).
        kernel_gflops: the kernel probe's (MKL, oneDNN) float32 speeds, GFLOP/s (oneDNN None where absent).
    """

    model: str
    flags: tuple[str, ...]
    capability: str
    blas: str
    threads: int
    fp32_gflops: float
    bf16_gflops: float | None
    fp32_kernel: str = "mkl"
    kernel_gflops: tuple[float, float | None] = (0.0, None)

    @property
    def bf16_native(self) -> bool:
        """The CPU has a native bf16 dot-product instruction and torch can use it."""
        return self.bf16_gflops is not None and any(flag in self.flags for flag in BF16_FLAGS)

    @property
    def bf16_speedup(self) -> float | None:
        """bf16 over fp32 matrix-product speed from the probe, or None without bf16 support."""
        return None if self.bf16_gflops is None else self.bf16_gflops / self.fp32_gflops

    def describe(self) -> str:
        """One line: model, flags, kernels, threads and probe speeds."""
        bf16 = "no bf16" if self.bf16_gflops is None else f"bf16 {self.bf16_gflops:.0f} GFLOP/s"
        mkl, onednn = self.kernel_gflops
        linear = f"MKL {mkl:.0f}" + ("" if onednn is None else f" / oneDNN {onednn:.0f}")
        return (
            f"CPU {self.model} [{' '.join(self.flags) or 'no AVX2'}]; torch {torch.__version__} "
            f"{self.capability} kernels, {self.blas}; {self.threads} torch threads; probe matmul "
            f"fp32 {self.fp32_gflops:.0f} GFLOP/s, {bf16}; fp32 linear {linear} GFLOP/s → "
            f"{self.fp32_kernel} kernel"
        )


@functools.lru_cache(maxsize=1)
def cpu_report() -> CpuReport:
    """Probe this CPU once per process (a few ms): feature flags, torch's kernel paths, matmul speeds."""
    name, flags = _cpuinfo()
    libraries = [name for name, there in (("mkl", torch.backends.mkl), ("onednn", torch.backends.mkldnn))
                 if there.is_available()]
    bf16_supported = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return CpuReport(
        model=name,
        flags=tuple(flag for flag in REPORTED_FLAGS if flag in flags),
        capability=torch.backends.cpu.get_cpu_capability(),
        blas=", ".join(libraries) or "no mkl, no onednn",
        threads=torch.get_num_threads(),
        fp32_gflops=_matmul_gflops(torch.float32),
        bf16_gflops=_matmul_gflops(torch.bfloat16) if bf16_supported else None,
        fp32_kernel=kernels.fp32_kernel(),
        kernel_gflops=kernels.probe_gflops(),
    )


def choose_precision(requested: str = "auto", report: CpuReport | None = None) -> Precision:
    """Resolve ``fp32`` / ``bf16`` / ``auto`` (see the module docstring for the rule).

    Raises:
        ValueError: an unknown precision, or ``bf16`` asked for on a CPU where torch has no bf16 kernels.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "fp32":
        return "fp32"
    report = report or cpu_report()
    if requested == "bf16":
        if report.bf16_gflops is None:
            raise ValueError("precision bf16 needs oneDNN bf16 support, which this CPU or torch build lacks")
        return "bf16"
    speedup = report.bf16_speedup
    return "bf16" if report.bf16_native and speedup is not None and speedup >= BF16_MIN_SPEEDUP else "fp32"


def choose_runtime(requested: str, precision: Precision, model: LiteSAM) -> Runtime:
    """The encoder runtime for ``model`` on ``precision``'s path, by the rule in the module docstring.

    Raises:
        ValueError: an unknown runtime, or ``openvino`` where it cannot run (package missing, an engine, a
            fused encoder, a model on another device).
    """
    if requested not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {requested!r}")
    unfit = why_not_convertible(model.image_encoder)
    if unfit is None and model.device.type != "cpu":
        unfit = "the model is not on the CPU"
    if requested == "openvino" and unfit is not None:
        raise ValueError(f"runtime openvino: {unfit}")
    if requested == "auto":
        return "openvino" if precision == "bf16" and unfit is None else "torch"
    return requested  # type: ignore[return-value]


def apply_precision(model: LiteSAM, precision: str = "auto", runtime: str = "torch", *, fuse: bool = False,
                    streams: int = 1, cache_dir: Path | None = None) -> Precision:
    """Put ``model`` (built for inference) on an inference path, in place; returns the precision taken.

    ``fp32`` leaves the model as it is; ``bf16`` converts the parts named in the module docstring. Apply it
    once, before the model is shared between threads; a bf16 model serves predictions only.

    Args:
        runtime: the encoder's runtime, ``torch``, ``openvino`` or ``auto`` (:func:`choose_runtime`); the
            one taken is recorded as ``model.encoder_runtime``.
        fuse: fuse the torch encoder first (what ``build_model(fuse=True)`` does) when torch runs it; pass the
            model unfused with ``fuse=True`` so that ``auto`` can take OpenVINO.
        streams: OpenVINO inferences that can run at once (the caller's inference slots), each on
            ``torch.get_num_threads()`` threads.
        cache_dir: where OpenVINO's converted encoder is kept between processes (None: converted anew).
    Raises:
        ValueError: a precision or runtime that this CPU, torch build or model cannot take.
    """
    if model.device.type != "cpu" and precision == "auto":
        precision = "fp32"  # the rule measures this CPU; on an accelerator bf16 is asked for explicitly
    chosen = choose_precision(precision)
    applied = getattr(model, "inference_precision", None)
    if applied is not None:  # applied before: the same request changes nothing
        if applied != chosen:
            raise ValueError(f"the model is already on the {applied} path")
        return chosen
    taken = choose_runtime(runtime, chosen, model)
    if taken == "openvino":
        model.image_encoder = OpenVinoImageEncoder(
            model.image_encoder, "bf16" if chosen == "bf16" else "f32", threads=torch.get_num_threads(),
            streams=streams, cache_dir=cache_dir,
        )
    else:
        if fuse:
            model.image_encoder.fuse_for_inference()
        if chosen == "bf16":
            _compute_in(model.image_encoder, torch.bfloat16)
            autoppn = model.image_encoder.autoppn  # engines (SAM ViT, TinyViT) may have no AutoPPN head
            if autoppn is not None:
                _compute_in(autoppn, torch.float32)  # proposals read the float32 embedding
    if chosen == "bf16":
        model.mask_decoder.output_upscaling.to(torch.bfloat16)  # the decoder casts to its weights' dtype
    model.inference_precision = chosen
    model.encoder_runtime = taken
    return chosen


def _compute_in(module: nn.Module, dtype: torch.dtype) -> None:
    """Convert ``module`` to ``dtype``; cast its floating inputs to ``dtype`` and its outputs to float32."""
    module.to(dtype)
    module.register_forward_pre_hook(functools.partial(_cast_inputs, dtype=dtype), with_kwargs=True)
    module.register_forward_hook(_outputs_to_float32)


def _cast_inputs(module: nn.Module, args: tuple, kwargs: dict, dtype: torch.dtype) -> tuple[tuple, dict]:
    return tuple(_cast(a, dtype) for a in args), {k: _cast(v, dtype) for k, v in kwargs.items()}


def _outputs_to_float32(module: nn.Module, args: tuple, output: Any) -> Any:
    if isinstance(output, tuple):
        values = [_cast(item, torch.float32) for item in output]
        return type(output)(*values) if hasattr(output, "_fields") else tuple(values)
    return _cast(output, torch.float32)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """``value`` in ``dtype`` if it is a floating tensor, else unchanged."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


def _matmul_gflops(dtype: torch.dtype) -> float:
    """Speed of one matrix product of :data:`_PROBE_SHAPE` in ``dtype`` on one core, GFLOP/s."""
    m, k, n = _PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(dtype)
    b = torch.randn(k, n, generator=generator).to(dtype)
    return kernels.gflops_on_one_core(lambda: torch.mm(a, b), 2 * m * k * n)


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, feature flags) of CPU 0 from /proc/cpuinfo; (platform's name, no flags) elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return platform.processor() or "unknown", set()
    name, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name == "unknown":
            name = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return name, flags


def load_average() -> str:
    """The 1/5/15-minute load averages, e.g. "load 0.12 0.30 0.41 on 2 CPUs" (or "load unknown")."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"
