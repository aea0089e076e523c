"""The teacher's image embedding on the student's grid.

Both models see the same image in the same kind of frame: its longest side resized to the model's input side
S, placed at the top-left of an S×S square and zero-padded at the bottom and right
(:mod:`litesam.transforms`). Measured in units of that square's side, the image covers the same region in
both frames, ``[0, w/max(h, w)] × [0, h/max(h, w)]`` (up to the half-pixel rounding of the shorter side,
at most ``0.5/S`` of a side). An embedding of side ``n = S/16`` tiles the square into n×n cells, cell
``(i, j)`` covering ``[j/n, (j+1)/n) × [i/n, (i+1)/n)``, with its centre at ``((j + 0.5)/n, (i + 0.5)/n)``.

So a 1024 teacher (64×64 cells of 16 input pixels) and a 640 student (40×40 cells of 16 input pixels) tile
the same square at two pitches, and the teacher's map, read at the student's cell centres, lines up with the
student's cells exactly in image coordinates: student cell ``j`` is centred at teacher coordinate
``u = (j + 0.5)·64/40 − 0.5`` (in teacher cell indices), which is what bilinear interpolation with
``align_corners=False`` samples. No crop or offset is needed, because both frames pin the image to the same
top-left corner and scale it by the same factor relative to the square. (Cropping the teacher map to the
image and resizing the crop would be wrong: the student's map keeps its padding cells too.)

Modes (:data:`MODES`):

* ``"bilinear"`` (default): point samples at the student's cell centres. Exact for any map that is linear in
  image coordinates when the student's grid is not finer than the teacher's (then every student centre lies
  inside the span of the teacher's centres; a finer student grid clamps at its outermost half cell);
* ``"antialias"``: the same centres, but a triangle filter as wide as a student cell (``F.interpolate`` with
  ``antialias=True``): each student cell averages the teacher cells under its footprint, which suppresses
  aliasing when the grid shrinks a lot (e.g. 64 → 16). Centred on the same points, but its discrete weights
  are not exactly symmetric for a non-integer ratio: for 64 → 40 a linear map comes back shifted by up to 0.06
  of a teacher cell inside (0.11 at the border; tests/test_distill.py).

Adaptive average pooling (``mode="area"``) is not offered: for a non-integer ratio such as 64/40 its bins
snap to whole teacher cells, which shifts them (by up to 0.2 of a teacher cell for 64 → 40).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Resampling modes of :func:`teacher_to_student`.
MODES = ("bilinear", "antialias")


def teacher_to_student(embedding: torch.Tensor, side: int, mode: str = "bilinear") -> torch.Tensor:
    """Resample a teacher embedding to the student's grid (see the module docstring for the frames).

    Args:
        embedding: B×C×n×n float (any float dtype), the teacher's embedding of a square input.
        side: the student's embedding side m (= its input side / 16).
        mode: one of :data:`MODES`.
    Returns:
        B×C×m×m in float32; the input itself (as float32) when n = m.
    Raises:
        ValueError: an unknown mode, or a map that is not B×C×n×n.
    """
    if mode not in MODES:
        raise ValueError(f"resampling mode must be one of {MODES}, got {mode!r}")
    if embedding.dim() != 4 or embedding.shape[-1] != embedding.shape[-2]:
        raise ValueError(f"expected a B×C×n×n embedding, got shape {tuple(embedding.shape)}")
    embedding = embedding.float()
    if embedding.shape[-1] == side:
        return embedding
    return F.interpolate(
        embedding, size=(side, side), mode="bilinear", align_corners=False, antialias=mode == "antialias"
    )


def cell_centres(side: int) -> torch.Tensor:
    """The centres of an n×n embedding's cells in units of the square input's side: n float64 values
    ``(j + 0.5)/n`` (the same for rows and columns)."""
    return (torch.arange(side, dtype=torch.float64) + 0.5) / side
