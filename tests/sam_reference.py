"""Import the reference implementations (Meta's ``segment-anything``, MobileSAM's ``mobile_sam``) without torchvision.

Both packages (and ``timm``, which MobileSAM's TinyViT imports) import torchvision at import time, and PyPI's
torchvision does not import beside this project's torch build. A stand-in ``torchvision`` package is put
first on the import path: every module under it resolves, and every name in it is a placeholder that raises
when called, so no compared result can silently go through it. The two torchvision functions that the
references' ``ResizeLongestSide.apply_image`` really calls on a compared path, ``to_pil_image`` and
``resize``, are given real implementations with torchvision's semantics for that input (an H×W×3 uint8
array → a PIL RGB image; a PIL image and a size [h, w] → ``Image.resize((w, h), BILINEAR)``, which is what
torchvision's PIL branch does).
"""

import importlib.abc
import importlib.util
import sys
import types

import numpy as np
import torch  # noqa: F401  (imported before the stand-in exists)
from PIL import Image


class _Placeholder:
    """A torchvision name: attribute access yields more placeholders, calling one raises, a subclass cannot be made."""

    def __init__(self, path: str) -> None:
        self._path = path

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(f"{self._path}.{name}")

    def __call__(self, *_args, **_kwargs):
        raise RuntimeError(f"torchvision stand-in: {self._path} must not be used in a comparison")

    def __mro_entries__(self, _bases):
        return (_Unusable,)  # timm subclasses a few torchvision transforms at import time


class _Unusable:
    """Base of classes derived from a torchvision placeholder: creating one raises."""

    def __init__(self, *_args, **_kwargs):
        raise RuntimeError("torchvision stand-in: a torchvision-derived class must not be used in a comparison")


class _StandInModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(f"{self.__name__}.{name}")


def _to_pil_image(pic, mode=None):
    rgb = isinstance(pic, np.ndarray) and pic.dtype == np.uint8 and pic.ndim == 3 and pic.shape[2] == 3
    if mode is not None or not rgb:
        raise RuntimeError("torchvision stand-in: to_pil_image supports only H×W×3 uint8 arrays")
    return Image.fromarray(pic, mode="RGB")


def _resize(img, size, interpolation=None, max_size=None, antialias=True):
    if not isinstance(img, Image.Image) or interpolation is not None or max_size is not None or len(size) != 2:
        raise RuntimeError("torchvision stand-in: resize supports only a PIL image, a size [h, w], bilinear")
    return img.resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR)


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StandInModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []
        if module.__name__ == "torchvision.transforms.functional":
            module.to_pil_image = _to_pil_image
            module.resize = _resize


def _install_torchvision_stand_in() -> None:
    if "torchvision" in sys.modules:
        return
    sys.meta_path.insert(0, _StandInFinder())


_install_torchvision_stand_in()

import segment_anything  # noqa: E402
from segment_anything import SamPredictor, sam_model_registry  # noqa: E402
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer  # noqa: E402
from segment_anything.utils import amg  # noqa: E402
from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402


def mobile_sam():
    """MobileSAM's package (imported on first use: it pulls in timm, which takes a few seconds)."""
    import mobile_sam as package

    return package


__all__ = [
    "segment_anything",
    "SamPredictor",
    "sam_model_registry",
    "ImageEncoderViT",
    "MaskDecoder",
    "PromptEncoder",
    "Sam",
    "TwoWayTransformer",
    "amg",
    "ResizeLongestSide",
    "mobile_sam",
]
