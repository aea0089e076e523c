"""Import Meta's ``segment-anything`` package as a test reference, without torchvision.

The package imports torchvision at import time (``segment_anything.automatic_mask_generator`` and
``utils.transforms``), and PyPI's torchvision does not import beside this project's torch build. A stand-in
``torchvision`` module is registered whose functions raise if called, so no compared result can go through it.
"""

import sys
import types

import torch  # noqa: F401  (imported before the stand-in exists)


def _unavailable(*_args, **_kwargs):
    raise RuntimeError("torchvision stand-in: this reference path must not be used in a comparison")


def _stand_in_attribute(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _unavailable


def _install_torchvision_stand_in() -> None:
    if "torchvision" in sys.modules:
        return
    names = [
        "torchvision",
        "torchvision.ops",
        "torchvision.ops.boxes",
        "torchvision.transforms",
        "torchvision.transforms.functional",
    ]
    modules = {name: types.ModuleType(name) for name in names}
    for name, module in modules.items():
        module.__getattr__ = _stand_in_attribute  # any function name resolves to a raiser
        sys.modules[name] = module
    modules["torchvision"].ops = modules["torchvision.ops"]
    modules["torchvision"].transforms = modules["torchvision.transforms"]
    modules["torchvision.ops"].boxes = modules["torchvision.ops.boxes"]
    modules["torchvision.transforms"].functional = modules["torchvision.transforms.functional"]


_install_torchvision_stand_in()

import segment_anything  # noqa: E402
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer  # noqa: E402
from segment_anything.utils import amg  # noqa: E402
from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402

__all__ = ["segment_anything", "MaskDecoder", "PromptEncoder", "TwoWayTransformer", "amg", "ResizeLongestSide"]
