"""Benchmark: Label Studio brush RLE, the SDK's codec against ours.

Times ``label_studio_sdk.converter.brush.mask2rle`` / ``decode_rle`` against
``backend.labelstudio.brush_rle.mask_to_brush_rle`` and the test decoder ``tests.brush_rle_decoder`` on three masks, checks that both encoders write the same bytes and both decoders give
the mask back, and prints one table: medians of ``--rounds`` rounds in which the SDK's and our codec run
interleaved (``bench/benchlib.py``), in milliseconds, with the machine header and the load average.

    python bench/rle.py [--rounds 5]
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test decoder lives in tests/

from backend.labelstudio.brush_rle import mask_to_brush_rle  # noqa: E402
from tests.brush_rle_decoder import brush_rle_to_mask  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import header, interleaved  # noqa: E402
from litesam.inference import load_average  # noqa: E402


def smooth_blob(size: int = 1024, seed: int = 0) -> np.ndarray:
    """A few irregular smooth blobs: thresholded sum of low-frequency waves (SAM-like object masks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    field = np.zeros((size, size))
    for _ in range(6):
        fy, fx = rng.uniform(1, 4, size=2)
        phase = rng.uniform(0, 2 * np.pi, size=2)
        field += np.sin(2 * np.pi * fy * yy + phase[0]) * np.cos(2 * np.pi * fx * xx + phase[1])
    return field > 0.8


def circle(height: int = 1080, width: int = 1440) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (0.4 * height) ** 2


def block_noise(height: int = 1080, width: int = 1440, block: int = 8, seed: int = 0) -> np.ndarray:
    """Random 8×8-pixel blocks, half on: a worst case with a run every few pixels."""
    rng = np.random.default_rng(seed)
    cells = rng.random((height // block, width // block)) < 0.5
    return np.kron(cells, np.ones((block, block), dtype=bool))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    rounds = parser.parse_args().rounds
    print(header("bench/rle.py: Label Studio brush RLE, label-studio-sdk against backend.labelstudio.brush_rle"))

    cases = {
        "blob 1024x1024": smooth_blob(),
        "circle 1440x1080": circle(),
        "8-px noise 1440x1080": block_noise(),
    }
    columns = (
        f"{'mask':<22}{'runs':>8}{'RLE bytes':>11}{'SDK enc':>10}{'ours enc':>10}{'speedup':>9}"
        f"{'SDK dec':>10}{'ours dec':>10}{'speedup':>9}"
    )
    print(columns)
    print("-" * len(columns))
    for name, mask in cases.items():
        height, width = mask.shape
        runs = int(np.count_nonzero(mask.ravel()[1:] != mask.ravel()[:-1])) + 1
        sdk_rle = mask2rle(mask.astype(np.uint8) * 255)
        if mask_to_brush_rle(mask) != sdk_rle:
            raise SystemExit(f"{name}: our RLE differs from the SDK's")
        sdk_out, our_out = decode_rle(sdk_rle), brush_rle_to_mask(sdk_rle, height, width)
        if not np.array_equal(sdk_out.reshape(height, width, 4)[:, :, 3] != 0, mask) or not np.array_equal(
            our_out, mask
        ):
            raise SystemExit(f"{name}: a decoder did not give the mask back")
        times = interleaved(
            {
                "sdk_enc": lambda m=mask: mask2rle(m.astype(np.uint8) * 255),
                "our_enc": lambda m=mask: mask_to_brush_rle(m),
                "sdk_dec": lambda r=sdk_rle: decode_rle(r),
                "our_dec": lambda r=sdk_rle, h=height, w=width: brush_rle_to_mask(r, h, w),
            },
            rounds,
        )
        sdk_enc, our_enc, sdk_dec, our_dec = (times[k] * 1e3 for k in ("sdk_enc", "our_enc", "sdk_dec", "our_dec"))
        our_rle = sdk_rle
        print(
            f"{name:<22}{runs:>8}{len(our_rle):>11}{sdk_enc:>10.2f}{our_enc:>10.2f}{sdk_enc / our_enc:>8.1f}x"
            f"{sdk_dec:>10.2f}{our_dec:>10.2f}{sdk_dec / our_dec:>8.1f}x"
        )
    print(f"times in ms, medians of {rounds} interleaved rounds; outputs checked byte-identical (encode) and equal")
    print(f"(decode); {load_average()} (at end)")


if __name__ == "__main__":
    main()
