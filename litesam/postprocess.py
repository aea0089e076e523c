"""Kept-mask post-processing: low-resolution decoder logits → binary masks at the original size, area, box.

:meth:`LiteSAM.postprocess_masks` is SAM's two bilinear passes (4h×4w → S×S, crop to the resized image,
→ H×W). Both passes and the crop are linear and separable, so together they are one matrix per axis:
``logits = A_y · L · A_xᵀ`` with ``A_y`` H×4h and ``A_x`` W×4w. The matrices are built once per geometry by
running torch's own bilinear interpolation on identity matrices (so the weights are torch's), and each row
has at most 4 non-zero taps, so both products are done in bands of rows that read only the few low-res rows
or columns they need. The vertical pass writes one band of float32 rows (a few hundred KiB, cache-resident)
at a time and thresholds it straight into the H×W bool mask: no full-size float map, no page-faulted
temporaries, one pass over the output. The work runs on the CPU whatever the model's device (a logit map is
at most 256×256). Area and box are then read from the bool mask with numpy.

Outputs equal ``postprocess_masks(...) > threshold`` except at pixels whose logit is within float32
rounding (about 1e-6) of the threshold.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

#: Output rows (and, in the horizontal pass, columns) computed per band: 128 rows of a 1024-wide float32
#: map are 512 KiB, which stays in a core's L2 cache (64–512 measured alike at one thread).
BAND = 128


class MaskUpscaler:
    """Upscale and threshold masks of one geometry (see the module docstring).

    Args:
        low_res_size: (4h, 4w) of the decoder's logit maps.
        img_size: side S of the square model input.
        input_size: (h, w) of the resized image inside the S×S input.
        original_size: (H, W) of the original image.
    """

    def __init__(
        self,
        low_res_size: tuple[int, int],
        img_size: int,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> None:
        self.original_size = (int(original_size[0]), int(original_size[1]))
        rows = _axis_matrix(low_res_size[0], img_size, input_size[0], original_size[0])
        cols = _axis_matrix(low_res_size[1], img_size, input_size[1], original_size[1])
        self._row_starts, self._row_blocks = _bands(rows)  # nb, nb×BAND×k
        col_starts, col_blocks = _bands(cols)
        self._col_index = (col_starts[:, None] + torch.arange(col_blocks.shape[2])).flatten()
        self._col_blocks_t = col_blocks.transpose(1, 2).contiguous()  # nb×k×BAND

    def binary(self, low_res: torch.Tensor, threshold: float = 0.0) -> np.ndarray:
        """One 4h×4w logit map (any device) → H×W bool numpy mask (logit > ``threshold``), computed on the CPU.

        The threshold runs in numpy: on a cache-resident band it is about 15× faster than ``torch.gt``.
        """
        height, width = self.original_size
        mask = np.empty((height, width), dtype=bool)
        across = self._horizontal(low_res.detach().to("cpu", torch.float32))  # 4h×W
        taps = self._row_blocks.shape[2]
        band = torch.empty(BAND, width)
        values = band.numpy()
        for j, start in enumerate(self._row_starts.tolist()):
            r0 = j * BAND
            r1 = min(r0 + BAND, height)
            torch.mm(self._row_blocks[j], across[start : start + taps], out=band)
            np.greater(values[: r1 - r0], threshold, out=mask[r0:r1])
        return mask

    def binary_many(self, low_res: torch.Tensor, threshold: float = 0.0) -> np.ndarray:
        """C×4h×4w logit maps → C×H×W bool numpy masks."""
        out = np.empty((len(low_res), *self.original_size), dtype=bool)
        for i, logits in enumerate(low_res):
            out[i] = self.binary(logits, threshold)
        return out

    def _horizontal(self, low_res: torch.Tensor) -> torch.Tensor:
        """4h×4w → 4h×W: each band of BAND output columns from the few low-res columns it reads."""
        rows = low_res.shape[0]
        n_bands, taps, _ = self._col_blocks_t.shape
        gathered = low_res[:, self._col_index].view(rows, n_bands, taps).transpose(0, 1)
        across = torch.bmm(gathered, self._col_blocks_t)  # nb×4h×BAND
        return across.transpose(0, 1).reshape(rows, n_bands * BAND)[:, : self.original_size[1]].contiguous()


@functools.lru_cache(maxsize=32)
def mask_upscaler(
    low_res_size: tuple[int, int], img_size: int, input_size: tuple[int, int], original_size: tuple[int, int]
) -> MaskUpscaler:
    """The shared :class:`MaskUpscaler` of a geometry (built once; read-only, safe to share between threads)."""
    return MaskUpscaler(low_res_size, img_size, input_size, original_size)


def upscale_masks(
    low_res: torch.Tensor, img_size: int, input_size: tuple[int, int], original_size: tuple[int, int],
    threshold: float = 0.0,
) -> np.ndarray:
    """C×4h×4w decoder logits → C×H×W bool numpy masks, as ``postprocess_masks(...) > threshold``."""
    sizes = (tuple(low_res.shape[-2:]), img_size, tuple(input_size), tuple(original_size))
    return mask_upscaler(*sizes).binary_many(low_res, threshold)


def mask_area_and_box(mask: np.ndarray) -> tuple[int, tuple[int, int, int, int]]:
    """Pixel count and tight XYXY box (pixel-inclusive, ``(0, 0, 0, 0)`` when empty) of an H×W bool mask."""
    area = int(np.count_nonzero(mask))
    if area == 0:
        return 0, (0, 0, 0, 0)
    rows = np.flatnonzero(mask.any(axis=1))
    y1, y2 = int(rows[0]), int(rows[-1])
    cols = np.flatnonzero(mask[y1 : y2 + 1].any(axis=0))
    return area, (int(cols[0]), y1, int(cols[-1]), y2)


def _axis_matrix(low_res: int, img_size: int, valid: int, original: int) -> torch.Tensor:
    """original×low_res float32 matrix of one axis: bilinear low_res → img_size, keep ``valid``, → original."""
    first = _bilinear_matrix(low_res, img_size)[:valid]
    return (_bilinear_matrix(valid, original) @ first).float()


def _bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """n_out×n_in float64 weights of torch's 1-D bilinear resize (align_corners=False)."""
    eye = torch.eye(n_in, dtype=torch.float64)[None, None]
    return F.interpolate(eye, (n_out, n_in), mode="bilinear", align_corners=False)[0, 0]


def _bands(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split an n_out×n_in banded matrix into row bands of BAND rows.

    Returns (starts nb int64, blocks nb×BAND×k float32): band j's rows read input columns
    ``starts[j] : starts[j] + k`` only; rows past n_out are zero.
    """
    n_out, n_in = matrix.shape
    nonzero = matrix != 0
    columns = torch.arange(n_in)
    first = torch.where(nonzero, columns, n_in).amin(dim=1).clamp(max=n_in - 1)
    last = torch.where(nonzero, columns, -1).amax(dim=1).clamp(min=0)
    n_bands = -(-n_out // BAND)
    lo = torch.stack([first[j * BAND : (j + 1) * BAND].min() for j in range(n_bands)])
    hi = torch.stack([last[j * BAND : (j + 1) * BAND].max() for j in range(n_bands)])
    taps = int((hi - lo).max()) + 1
    starts = lo.clamp(max=n_in - taps)
    blocks = torch.zeros(n_bands, BAND, taps)
    for j, start in enumerate(starts.tolist()):
        part = matrix[j * BAND : (j + 1) * BAND, start : start + taps]
        blocks[j, : len(part)] = part
    return starts, blocks
