"""Lite-SAM's image embedding (LiteViT backbone + neck) compiled by OpenVINO's CPU plugin.

Chosen by measurement (``bench/backends.py``, README "OpenVINO encoder on the bf16 path"): on an AMD EPYC
Zen 4 with AVX512_BF16 at one thread, OpenVINO 2026.4 in bf16 ran the r640 encoder 1.44× faster than torch's
own bf16 path (250 against 360 ms; r1024 736 against 1,068 ms) and 2.1× faster than torch fp32, keeping
closer to the fp32 embedding than torch's bf16 path does (relative max difference 7.6e-3 against 1.0e-2);
in f32 it was only 1.15–1.19× faster than torch, below the 1.3× that a second inference path has to earn,
so :mod:`litesam.inference` takes it for bf16 only unless asked for explicitly.

The graph is converted from the *unfused* encoder (OpenVINO folds the normalisations itself; the fused
build's chunked layers convert into a slower graph) for one 1×3×S×S image, through ONNX (torch's TorchScript
exporter, which needs the ``onnx`` package): OpenVINO's own PyTorch front end gave a graph with run-time
shape arithmetic and fewer fused element-wise subgraphs that ran slower (r640 bf16: 304 against 237 ms, same
process). A batch of B images runs image by image. Export and compilation cost 3.1 / 3.8 s (r640 / r1024, one
thread, Zen 4); with a cache folder the converted model is written there once (named by a hash of the
weights, the encoder's source code and the library versions) and later processes read and compile it in
0.4–0.5 s. AutoPPN is not converted: it stays a float32 torch module reading the float32 embedding, as on
torch's bf16 path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from .errors import InvalidImageError
from .modeling import image_encoder, litevit
from .modeling.autoppn import AutoPPNOutput
from .modeling.image_encoder import ImageEncoder

OpenVinoPrecision = Literal["f32", "bf16"]


#: What the conversion and the runtime need: ``pip install openvino==2026.4.1 onnx==1.23.2``.
PACKAGES = ("openvino", "onnx")


def openvino_version() -> str | None:
    """The installed OpenVINO release, or None where it or the ``onnx`` package is not installed."""
    if any(importlib.util.find_spec(name) is None for name in PACKAGES):
        return None
    from importlib.metadata import version

    return version("openvino")


def why_not_convertible(encoder: nn.Module) -> str | None:
    """Why :class:`OpenVinoImageEncoder` cannot take ``encoder`` here, or None when it can."""
    if openvino_version() is None:
        return "openvino and onnx are not installed (pip install -r requirements-openvino.txt)"
    if not isinstance(encoder, ImageEncoder):
        return "it compiles Lite-SAM's encoder only, not an engine's"
    if encoder.backbone.fused:
        return "the encoder is fused (build the model with fuse=False)"
    return None


class _Embedding(nn.Module):
    """The converted graph: B×3×S×S normalised input → B×C×S/16×S/16 embedding."""

    def __init__(self, encoder: ImageEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.embed(x)


class OpenVinoImageEncoder(nn.Module):
    """An :class:`ImageEncoder` whose embedding runs on OpenVINO; same call, same outputs (float32).

    Like a fused encoder it serves predictions only (``fused`` is true: it cannot be trained or saved).

    Args:
        encoder: an unfused Lite-SAM encoder with its weights loaded (its backbone and neck are converted;
            the module keeps its AutoPPN head).
        precision: OpenVINO's inference precision, ``"f32"`` or ``"bf16"``.
        threads: CPU threads one inference uses.
        streams: inferences that can run at once, each on its own ``threads`` (callers in several Python
            threads run side by side; OpenVINO releases the GIL while it computes). OpenVINO takes at most
            as many as the cores it sees (3 asked for on 2 cores: 2); :attr:`streams` says how many.
        cache_dir: folder for the converted model (``openvino/<hash>.xml`` and ``.bin``); None converts anew.
    Raises:
        ValueError: :func:`why_not_convertible` names a reason.
    """

    fused = True

    def __init__(self, encoder: ImageEncoder, precision: OpenVinoPrecision, threads: int = 1,
                 streams: int = 1, cache_dir: Path | None = None) -> None:
        super().__init__()
        reason = why_not_convertible(encoder)
        if reason is not None:
            raise ValueError(f"the OpenVINO encoder cannot run: {reason}")
        import openvino as ov

        self.img_size = encoder.img_size
        self.autoppn = encoder.autoppn
        self.precision = precision
        graph = _read_or_convert(encoder, cache_dir)
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "NUM_STREAMS": str(streams),
            "INFERENCE_NUM_THREADS": str(streams * threads),
            "ENABLE_CPU_PINNING": "NO",  # threads stay free to move: other processes share the cores
        }
        self._compiled = ov.Core().compile_model(graph, "CPU", config)

    @property
    def streams(self) -> int:
        """Inferences the compiled encoder runs at once (OpenVINO's ``NUM_STREAMS``)."""
        return int(self._compiled.get_property("NUM_STREAMS"))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, AutoPPNOutput]:
        """B×3×S×S float normalised input → (B×C×S/16×S/16 float32 embedding, AutoPPN maps)."""
        embedding = self.embed(x)
        return embedding, self.autoppn(embedding)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding alone: B×3×S×S float input → contiguous B×C×S/16×S/16 float32 (a new tensor)."""
        side = self.img_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, side, side) or not x.is_floating_point():
            raise InvalidImageError(f"the OpenVINO encoder takes B×3×{side}×{side} float input, "
                                    f"got {tuple(x.shape)} {x.dtype}")
        request = self._compiled.create_infer_request()  # one per call: callers may be several threads
        images = x.detach().float().cpu().numpy()
        embeddings = None
        for i, image in enumerate(images):  # the graph is converted for one image
            request.infer([np.ascontiguousarray(image[None])])
            out = torch.from_numpy(request.get_output_tensor(0).data)  # the request's buffer: copied below
            if embeddings is None:
                embeddings = out.new_empty((len(images), *out.shape[1:]))
            embeddings[i] = out[0]
        return embeddings


def _read_or_convert(encoder: ImageEncoder, cache_dir: Path | None):  # -> openvino.Model
    """The converted embedding graph, from ``cache_dir`` when it holds this encoder's, else converted (and
    written there)."""
    import openvino as ov

    path = None if cache_dir is None else Path(cache_dir) / "openvino" / f"{_graph_key(encoder)}.xml"
    if path is not None and path.exists() and path.with_suffix(".bin").exists():
        return ov.Core().read_model(str(path))
    side = encoder.img_size
    with tempfile.TemporaryDirectory() as folder, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings: shape checks become constants (S is fixed)
        onnx_file = Path(folder) / "embedding.onnx"
        torch.onnx.export(_Embedding(encoder).eval(), (torch.zeros(1, 3, side, side),), str(onnx_file),
                          input_names=["image"], output_names=["embedding"], opset_version=18, dynamo=False)
        graph = ov.Core().read_model(str(onnx_file))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.stem}.{os.getpid()}.xml")  # written aside, renamed: no torn reads
        ov.save_model(graph, str(partial), compress_to_fp16=False)
        partial.with_suffix(".bin").replace(path.with_suffix(".bin"))
        partial.replace(path)
    return graph


def _graph_key(encoder: ImageEncoder) -> str:
    """A hash of what the converted graph depends on: the weights (names, shapes, values), the input side,
    the encoder's source code and the torch and OpenVINO releases."""
    digest = hashlib.sha256()
    for name, tensor in _Embedding(encoder).state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for module in (litevit, image_encoder):
        digest.update(inspect.getsource(module).encode())
    digest.update(f"{encoder.img_size} torch {torch.__version__} openvino {openvino_version()}".encode())
    return digest.hexdigest()[:32]
