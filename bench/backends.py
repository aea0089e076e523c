"""Inference backends at one thread: torch eager (the library's path) against the alternatives issue 13 names.

RANDOM WEIGHTS (no pretrained Lite-SAM weights exist; arithmetic cost does not depend on weight values). For
each variant, three graphs are timed, each on the inputs the library gives it:

* ``encoder``: the fused image encoder (``build_model(variant, fuse=True)``, the library's default) on a
  preprocessed 1024×1024 synthetic image, returning the embedding and AutoPPN's two maps;
* ``decoder, 1 click``: the mask decoder for one point (plus SAM's padding point), three masks, as a click;
* ``decoder, 32 prompts``: 32 point + box prompts at once, as a SegEvery batch (``points_per_batch`` = 32).

Backends (each skipped with its reason when its package is missing or its conversion fails):

* ``torch``: eager fp32, the reference;
* ``jit-freeze``: ``torch.jit.trace`` → ``torch.jit.freeze`` → ``torch.jit.optimize_for_inference`` (oneDNN
  convolutions, channels-last packing);
* ``compile``: ``torch.compile`` (inductor, CPU, ``freezing`` on so weights are pre-packed); compile time
  is reported apart;
* ``onnxruntime``: ``torch.onnx.export`` (opset 18) run by ONNX Runtime's CPU execution provider, all graph
  optimisations, one intra-op and one inter-op thread;
* ``openvino``: the same ONNX file read by OpenVINO's CPU plugin: one stream, one thread, latency hint and an
  explicit ``f32`` inference precision (OpenVINO would take bf16 on a CPU that has it);
* ``torch-bf16``: the library's own bf16 path (``litesam.inference.apply_precision(model, "bf16")``: the
  encoder and the decoder's upscaling in bfloat16), skipped where the CPU has no native bf16;
* ``openvino-bf16``: OpenVINO with inference precision ``bf16`` (skipped where it does not take it).

Parity against torch eager, per graph: the largest absolute difference of each output divided by the largest
absolute value of torch's output ("rel. max diff"; fp32 paths must stay within 1e-4; the bf16 backends are
held to the mask IoU instead, as the library's bf16 rule is), and for the encoder
the IoU of a click's three low-resolution masks (logits > 0) decoded by the torch decoder from each backend's
embedding against torch's own (the smallest of the three); for the decoders the IoU of their masks.

Timing: all backends of one graph run interleaved in one process (``benchlib.interleaved_timings``), ``--rounds``
rounds after one warm-up; medians of wall-clock and of process CPU time (which counts a runtime's own
threads, and is less sensitive to other processes on a shared core) and their ratios against torch.

    python bench/backends.py [--rounds 5] [--variants litesam_r640 litesam_r1024] [--backends torch onnxruntime]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchlib import header, interleaved_timings, ms, set_threads
from litesam.build import build_model
from litesam.inference import apply_precision, cpu_report, load_average
from litesam.modeling.lite_sam import LiteSAM
from segevery import synthetic_image
from litesam.transforms import ResizeLongestSide

BACKENDS = ("torch", "jit-freeze", "compile", "onnxruntime", "openvino", "torch-bf16", "openvino-bf16")
#: Backends that run an exported ONNX file (of ``--export-from``'s build).
ONNX_BACKENDS = ("onnxruntime", "openvino", "openvino-bf16")
#: Backends that compute in bfloat16: parity is their masks' IoU, not the fp32 tolerance.
BF16_BACKENDS = ("torch-bf16", "openvino-bf16")
#: ``torch.onnx.export``'s exporter: "dynamo" (torch.export) or "torchscript" (tracing); set by ``--exporter``.
EXPORTER = "dynamo"
#: fp32 parity: every output's max abs difference from torch eager, relative to its max abs value.
PARITY_TOLERANCE = 1e-4
Outputs = tuple[torch.Tensor, ...]


class EncoderGraph(nn.Module):
    """The image encoder as a plain graph: B×3×S×S normalised input → (embedding, heat logits, box ltrb)."""

    def __init__(self, model: LiteSAM) -> None:
        super().__init__()
        self.encoder = model.image_encoder

    def forward(self, x: torch.Tensor) -> Outputs:
        embedding, proposals = self.encoder(x)
        return embedding, proposals.heat_logits, proposals.box_ltrb


class DecoderGraph(nn.Module):
    """The mask decoder with the image's positional encoding and the no-mask embedding as constants:
    (1×C×h×w embedding, B×N×C sparse prompt tokens) → (B×3×4h×4w mask logits, B×3 predicted IoU)."""

    def __init__(self, model: LiteSAM) -> None:
        super().__init__()
        self.decoder = model.mask_decoder
        self.register_buffer("image_pe", model.prompt_encoder.get_dense_pe().clone())
        self.register_buffer("no_mask", model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).clone())

    def forward(self, embedding: torch.Tensor, sparse: torch.Tensor) -> Outputs:
        dense = self.no_mask.expand(sparse.shape[0], -1, *embedding.shape[2:])
        return self.decoder(embedding, self.image_pe, sparse, dense, multimask_output=True)


def encoder_input(model: LiteSAM) -> torch.Tensor:
    """The preprocessed 1×3×S×S input of the synthetic 1024×1024 image (``bench/segevery.py``'s)."""
    resized = ResizeLongestSide(model.img_size, model.resize).apply_image(synthetic_image())
    return model.preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None].float())


def prompt_tokens(model: LiteSAM, count: int) -> torch.Tensor:
    """Sparse tokens of ``count`` prompts: one click (point + padding) for 1, else point + box prompts."""
    side = model.img_size
    generator = torch.Generator().manual_seed(count)
    points = torch.rand(count, 1, 2, generator=generator) * side * 0.8 + side * 0.1
    labels = torch.ones(count, 1, dtype=torch.int64)
    boxes = None
    if count > 1:
        half = torch.rand(count, 2, generator=generator) * side * 0.1 + 8
        boxes = torch.cat([points[:, 0] - half, points[:, 0] + half], dim=1).clamp(0, side)
    sparse, _ = model.prompt_encoder(points=(points, labels), boxes=boxes, masks=None)
    return sparse


# --- backends: each turns (graph, example inputs, work folder) into a runner, or raises SkipBackend ----------


class SkipBackend(Exception):
    """This backend cannot run here (package missing, conversion failed); the message says why."""


def torch_eager(graph: nn.Module, inputs: Outputs, folder: Path) -> Callable[[], Outputs]:
    return lambda: graph(*inputs)


def jit_freeze(graph: nn.Module, inputs: Outputs, folder: Path) -> Callable[[], Outputs]:
    if isinstance(graph, DecoderGraph):  # measured: the process dies (SIGSEGV), which no except can report
        raise SkipBackend("torch.jit.freeze + optimize_for_inference crashes the process on the mask decoder "
                          "(SIGSEGV, torch 2.13.0)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(graph, inputs)))
    return lambda: traced(*inputs)


def inductor(graph: nn.Module, inputs: Outputs, folder: Path) -> Callable[[], Outputs]:
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    compiled = torch.compile(graph, backend="inductor", dynamic=False)
    compiled(*inputs)  # compiles: timed as the setup
    return lambda: compiled(*inputs)


def export_onnx(graph: nn.Module, inputs: Outputs, folder: Path) -> Path:
    """``graph`` as an ONNX file in ``folder`` (exported once per graph, shared by ONNX Runtime and OpenVINO)."""
    path = folder / "graph.onnx"
    if path.exists():
        return path
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxscript") is None:
        raise SkipBackend("onnx / onnxscript not installed (pip install -r requirements-dev.txt)")
    names = [f"input{i}" for i in range(len(inputs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(graph, inputs, str(path), input_names=names, opset_version=18,
                              dynamo=EXPORTER == "dynamo", external_data=False, verbose=False)
        except Exception as error:  # the exporter raises many types
            raise SkipBackend(f"torch.onnx.export failed: {type(error).__name__}: {str(error)[:200]}") from None
    return path


def onnxruntime_session(graph: nn.Module, inputs: Outputs, folder: Path) -> Callable[[], Outputs]:
    if importlib.util.find_spec("onnxruntime") is None:
        raise SkipBackend("onnxruntime not installed")
    import onnxruntime as ort

    path = export_onnx(graph, inputs, folder)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {arg.name: value.numpy() for arg, value in zip(session.get_inputs(), inputs, strict=True)}
    return lambda: tuple(torch.from_numpy(out) for out in session.run(None, feeds))


def openvino_model(
    graph: nn.Module, inputs: Outputs, folder: Path, precision: str = "f32"
) -> Callable[[], Outputs]:
    if importlib.util.find_spec("openvino") is None:
        raise SkipBackend("openvino not installed")
    import openvino as ov

    path = export_onnx(graph, inputs, folder)
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": "1",
        "INFERENCE_PRECISION_HINT": precision,
    }
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    taken = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()  # e.g. "<type: 'bfloat16'>"
    names = {"f32": ("f32", "float32"), "bf16": ("bf16", "bfloat16")}[precision]
    if not any(name in taken for name in names):
        raise SkipBackend(f"OpenVINO took inference precision {taken}, not {precision}")
    request = compiled.create_infer_request()
    feeds = [value.numpy() for value in inputs]

    def run() -> Outputs:
        result = request.infer(feeds)
        return tuple(torch.from_numpy(result[out].copy()) for out in compiled.outputs)

    return run


def openvino_bf16(graph: nn.Module, inputs: Outputs, folder: Path) -> Callable[[], Outputs]:
    if not cpu_report().bf16_native:
        raise SkipBackend("this CPU has no native bf16 (avx512_bf16 / amx_bf16)")
    return openvino_model(graph, inputs, folder, precision="bf16")


def torch_bf16(graph: nn.Module, inputs: Outputs, folder: Path) -> Callable[[], Outputs]:
    """``graph`` is already the bf16 model's (``bench_graph`` passes it); skipped without native bf16."""
    if not cpu_report().bf16_native:
        raise SkipBackend("this CPU has no native bf16 (avx512_bf16 / amx_bf16)")
    return lambda: graph(*inputs)


MAKERS = {
    "torch": torch_eager,
    "jit-freeze": jit_freeze,
    "compile": inductor,
    "onnxruntime": onnxruntime_session,
    "openvino": openvino_model,
    "torch-bf16": torch_bf16,
    "openvino-bf16": openvino_bf16,
}


# --- parity --------------------------------------------------------------------------------------------------


def relative_max_diff(outputs: Outputs, reference: Outputs) -> float:
    """Largest ``max|out − ref| / max|ref|`` over the graph's outputs."""
    return max(
        float((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        for out, ref in zip(outputs, reference, strict=True)
    )


def mask_iou(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Smallest IoU over masks (logits > 0) of ``…×H×W`` logits against the reference's."""
    a, b = logits.flatten(0, -3) > 0, reference.flatten(0, -3) > 0
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float().clamp_min(1)
    return float((inter / union).min())


def click_iou(model: LiteSAM, embedding: torch.Tensor, reference: torch.Tensor) -> float:
    """IoU of the torch decoder's click masks from ``embedding`` against those from ``reference``."""
    decoder = DecoderGraph(model)
    sparse = prompt_tokens(model, 1)
    return mask_iou(decoder(embedding.float(), sparse)[0], decoder(reference, sparse)[0])


# --- driver --------------------------------------------------------------------------------------------------


def bench_graph(title: str, graph: nn.Module, inputs: Outputs, backends: list[str], rounds: int, model: LiteSAM,
                folder: Path, exported: nn.Module, bf16: nn.Module) -> dict[str, tuple[float, float]]:
    """Set up every backend for ``graph`` (the ONNX ones from ``exported``, the same graph of the build
    ``--export-from`` names; ``torch-bf16`` runs ``bf16``, the same graph of the bf16 model), check parity
    against torch eager on ``graph``, time them interleaved; print and return {backend: (wall s, CPU s)}."""
    print(f"\n{title} — {load_average()}")
    reference = graph(*inputs)
    runners: dict[str, Callable[[], Outputs]] = {}
    failed: set[str] = set()  # fp32 parity broken: their times are of a wrong graph, not a faster one
    for name in backends:
        start = time.perf_counter()
        try:
            source = exported if name in ONNX_BACKENDS else bf16 if name == "torch-bf16" else graph
            runner = MAKERS[name](source, inputs, folder)
            outputs = runner()
        except SkipBackend as skipped:
            print(f"  {name:<12} skipped: {skipped}")
            continue
        except Exception as error:  # a backend's own failure is a result, not a crash of the benchmark
            print(f"  {name:<12} failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
            continue
        setup = time.perf_counter() - start
        diff = relative_max_diff(outputs, reference)
        if diff > PARITY_TOLERANCE and name not in BF16_BACKENDS:
            failed.add(name)
        parity = f"rel. max diff {diff:.1e}"
        if title.startswith("encoder"):
            parity += f", click IoU {click_iou(model, outputs[0], reference[0]):.4f}"
        else:
            parity += f", mask IoU {mask_iou(outputs[0], reference[0]):.4f}"
        print(f"  {name:<12} setup {setup:7.1f} s; {parity}")
        runners[name] = runner
    wall, cpu = interleaved_timings(runners, rounds)
    print(f"  medians of {rounds} interleaved rounds ({load_average()}):")
    print(f"  {'backend':<12} {'wall':>10} {'CPU':>10} {'torch/wall':>11} {'torch/CPU':>10}")
    for name in runners:
        ratios = (f"{wall['torch'] / wall[name]:>10.2f}× {cpu['torch'] / cpu[name]:>9.2f}×"
                  if "torch" in runners else "")
        note = f"  FAILS PARITY (> {PARITY_TOLERANCE:g}): not a result" if name in failed else ""
        print(f"  {name:<12} {ms(wall[name]):>10} {ms(cpu[name]):>10} {ratios}{note}")
    return {name: (wall[name], cpu[name]) for name in runners}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=["litesam_r640", "litesam_r1024"])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--graphs", nargs="+", default=["encoder", "click", "batch"],
                        choices=["encoder", "click", "batch"])
    parser.add_argument("--export-from", choices=["fused", "plain"], default="fused",
                        help="build the ONNX backends run: the fused one, or fuse=False (same weights)")
    parser.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    args = parser.parse_args()
    global EXPORTER
    EXPORTER = args.exporter
    if "torch" not in args.backends:
        args.backends.insert(0, "torch")
    set_threads(args.threads)
    versions = [f"{name} {_version(name)}" for name in ("onnxruntime", "openvino", "onnx")]
    print(header(f"bench/backends.py: RANDOM WEIGHTS, fused fp32 build (ONNX from the {args.export_from} build, "
                 f"{args.exporter} exporter), {args.threads} thread(s); "
                 + ", ".join(versions)))
    print(f"torch config: {_torch_config()}")
    with torch.inference_mode(), tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            torch.manual_seed(0)
            model = build_model(variant, fuse=True)
            torch.manual_seed(0)
            source = build_model(variant, fuse=args.export_from == "fused")  # the same random weights
            torch.manual_seed(0)
            bf16_model = build_model(variant, fuse=True)
            if "torch-bf16" in args.backends and cpu_report().bf16_native:
                apply_precision(bf16_model, "bf16")
            x = encoder_input(model)
            embedding = model.image_encoder(x)[0]
            graphs = {
                "encoder": (EncoderGraph(model).eval(), (x,), EncoderGraph(source), EncoderGraph(bf16_model)),
                "click": (DecoderGraph(model).eval(), (embedding, prompt_tokens(model, 1)), DecoderGraph(source),
                          DecoderGraph(bf16_model)),
                "batch": (DecoderGraph(model).eval(), (embedding, prompt_tokens(model, 32)), DecoderGraph(source),
                          DecoderGraph(bf16_model)),
            }
            titles = {"encoder": "encoder", "click": "decoder, 1 click", "batch": "decoder, 32 prompts"}
            for key in args.graphs:
                graph, inputs, exported, bf16 = graphs[key]
                folder = Path(tmp) / f"{variant}-{key}"
                folder.mkdir()
                bench_graph(f"{titles[key]} ({variant})", graph, inputs, args.backends, args.rounds, model, folder,
                            exported.eval(), bf16.eval())
                torch._dynamo.reset()


def _version(package: str) -> str:
    if importlib.util.find_spec(package) is None:
        return "not installed"
    from importlib.metadata import version

    return version(package)


def _torch_config() -> str:
    """MKL and oneDNN versions from torch's build configuration."""
    lines = torch.__config__.show().splitlines()
    wanted = [line.strip().lstrip("- ") for line in lines if "Math Kernel" in line or "oneDNN" in line]
    return "; ".join(wanted) or "unknown"


if __name__ == "__main__":
    main()
