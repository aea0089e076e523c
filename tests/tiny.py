"""Shared test helpers: a tiny random-weight Lite-SAM and synthetic images."""

from __future__ import annotations

import functools

import numpy as np
import torch

from litesam.build import build_model


@functools.lru_cache(maxsize=None)
def tiny_model():
    """The ``litesam_tiny`` variant with seeded random weights, in eval mode (shared, read-only)."""
    torch.manual_seed(0)
    return build_model("litesam_tiny")


def synthetic_image(height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    """H×W×3 uint8 RGB: a noisy background with a bright disc and a dark rectangle."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 120, size=(height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height * 0.4) ** 2 + (xx - width * 0.3) ** 2 < (min(height, width) * 0.2) ** 2
    image[disc] = (230, 200, 40)
    image[int(height * 0.6) : int(height * 0.9), int(width * 0.55) : int(width * 0.9)] = (20, 40, 160)
    return image
