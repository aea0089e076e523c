"""Binary test masks shared by the mask-encoding tests (brush RLE, COCO RLE): :data:`MASK_CASES` by name."""

import numpy as np


def disc(height, width, cy, cx, radius):
    yy, xx = np.mgrid[:height, :width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2


def mixed_runs(seed):
    """A random-size mask built from runs whose lengths mix 1–3, tens, hundreds and >16,384 pixels."""
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(1, 400, size=2))
    total = height * width
    runs, value, filled = [], bool(rng.integers(2)), 0
    while filled < total:
        scale = rng.choice([3, 20, 80, 300, 20_000])
        length = min(int(rng.integers(1, scale + 1)), total - filled)
        runs.append((value, length))
        value, filled = not value, filled + length
    flat = np.concatenate([np.full(length, value) for value, length in runs])
    return flat.reshape(height, width)


def run_boundaries_mask():
    """Runs of 1, 2, 3, 4, 5, 64, 65, 16,384 and 16,385 pixels: the SDK's field-width and split limits."""
    lengths = [1, 2, 3, 4, 5, 64, 65, 16_384, 16_385, 2, 32_768, 32_769, 1]
    flat = np.concatenate([np.full(n, i % 2 == 1) for i, n in enumerate(lengths)])
    width = 7
    flat = np.concatenate([flat, np.zeros(-flat.size % width, dtype=bool)])
    return flat.reshape(-1, width)


_RNG = np.random.default_rng(2024)
MASK_CASES = {
    "noise_half": _RNG.random((48, 64)) < 0.5,
    "noise_sparse": _RNG.random((61, 37)) < 0.03,
    "noise_dense": _RNG.random((37, 61)) > 0.03,
    "disc_333x517": disc(333, 517, 150, 260, 120),
    "disc_517x333": disc(517, 333, 260, 150, 120),
    "two_blobs": disc(200, 300, 60, 80, 50) | disc(200, 300, 140, 220, 45),
    "empty": np.zeros((90, 70), dtype=bool),
    "full": np.ones((70, 90), dtype=bool),
    "one_pixel_on": np.ones((1, 1), dtype=bool),
    "one_pixel_off": np.zeros((1, 1), dtype=bool),
    "one_row": _RNG.random((1, 257)) < 0.5,
    "one_column": _RNG.random((257, 1)) < 0.5,
    "long_runs_full_400": np.ones((400, 400), dtype=bool),
    "long_runs_bands": np.repeat(np.arange(12) % 2 == 0, 50)[:, None] & np.ones((600, 700), dtype=bool),
    "run_boundaries": run_boundaries_mask(),
    **{f"mixed_runs_seed{seed}": mixed_runs(seed) for seed in range(12)},
}
