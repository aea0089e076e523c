"""Training samples: resized image, sampled ground-truth masks with simulated prompts, AutoPPN targets.

One sample per image (:class:`SegmentationDataset`), batched by :func:`collate_samples` into a
:class:`TrainBatch`. Frames, as everywhere in Lite-SAM:

* *original* pixels: the stored image, H×W;
* *input frame*: the image resized so its longest side is S (:class:`litesam.transforms.ResizeLongestSide`),
  h'×w', placed at the top-left of the zero-padded S×S model input. Prompts and boxes are in this frame;
* *low-res frame*: the mask decoder's output, the S×S input at 1/4 scale (S/4 × S/4, padding included).

The image is returned resized but neither normalised nor padded: :meth:`TrainBatch.model_input` runs it
through the model's own ``preprocess`` on the training device, so the normalisation exists in one place and
the dataset stays free of the model (cheap to send to loader workers).

Masks are resized with area interpolation (a pixel is on when at least half of what it covers is on);
masks that vanish in the frame of the loss are not sampled. Randomness (which masks, prompt points, box
noise) comes from a generator seeded with ``(seed, epoch, index)``, so a sample is reproducible on its own,
whatever the worker or the order it is loaded in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..modeling.autoppn import cell_centres
from .autoppn_targets import AutoPPNTargets, build_autoppn_targets
from ..transforms import ResizeLongestSide
from .annotations import DatasetError, ImageRecord
from .config import PromptConfig, TrainConfig
from .synthetic import SyntheticRecord
from .prompts import choose_point_prompts, jitter_boxes, sample_points

#: The decoder's low-resolution masks are the model input at this fraction (SAM: 4×4 upscaling of S/16).
LOW_RES_FACTOR = 4


@dataclass
class TrainSample:
    """One image's training data (tensors on the CPU).

    Attributes:
        image: 3×h'×w' float32, RGB on the 0–255 scale, resized (longest side S), not padded.
        input_size: (h', w').
        original_size: (H, W).
        gt_masks: N×M×M bool ground-truth masks in the padded input, M = S/4 (``mask_scale="low_res"``) or S.
        gt_boxes: N×4 float32 tight XYXY boxes, pixel-inclusive, input frame.
        point_coords: N×2 float32 (x, y) one random on pixel per mask, input frame.
        prompt_boxes: N×4 float32 noisy XYXY box prompts, input frame.
        use_point: N bool, True where the mask is prompted with its point, False where with its box.
        heat_target: G×G float32 AutoPPN heat target, G = S / stride.
        box_target: 4×G×G float32 ltrb distances in stride units (0 where no mask owns the cell).
        heat_valid: G×G bool, cells whose centre lies in the unpadded image.
        num_peaks: masks owning at least one target cell.
    """

    image: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    gt_masks: torch.Tensor
    gt_boxes: torch.Tensor
    point_coords: torch.Tensor
    prompt_boxes: torch.Tensor
    use_point: torch.Tensor
    heat_target: torch.Tensor
    box_target: torch.Tensor
    heat_valid: torch.Tensor
    num_peaks: int


@dataclass
class TrainBatch:
    """B samples: per-image lists for the ragged fields, stacked tensors for the AutoPPN targets.

    Attributes (lists hold one entry per image, shapes as in :class:`TrainSample`):
        images, input_sizes, original_sizes, gt_masks, gt_boxes, point_coords, prompt_boxes, use_point.
        heat_target: B×G×G; box_target: B×4×G×G; heat_valid: B×G×G; num_peaks: B int64.
    """

    images: list[torch.Tensor]
    input_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    gt_masks: list[torch.Tensor]
    gt_boxes: list[torch.Tensor]
    point_coords: list[torch.Tensor]
    prompt_boxes: list[torch.Tensor]
    use_point: list[torch.Tensor]
    heat_target: torch.Tensor
    box_target: torch.Tensor
    heat_valid: torch.Tensor
    num_peaks: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device | str) -> TrainBatch:
        """A copy with every tensor on ``device`` (non-blocking where possible)."""

        def move(value):
            if isinstance(value, torch.Tensor):
                return value.to(device, non_blocking=True)
            if isinstance(value, list):
                return [move(v) for v in value]
            return value

        return TrainBatch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def model_input(self, preprocess) -> torch.Tensor:
        """B×3×S×S normalised, padded model input, each image through ``preprocess`` (``LiteSAM.preprocess``)."""
        return torch.cat([preprocess(image[None]) for image in self.images])


def collate_samples(samples: Sequence[TrainSample]) -> TrainBatch:
    """Batch samples (the ``collate_fn`` of the training DataLoader)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    return TrainBatch(
        images=[s.image for s in samples],
        input_sizes=[s.input_size for s in samples],
        original_sizes=[s.original_size for s in samples],
        gt_masks=[s.gt_masks for s in samples],
        gt_boxes=[s.gt_boxes for s in samples],
        point_coords=[s.point_coords for s in samples],
        prompt_boxes=[s.prompt_boxes for s in samples],
        use_point=[s.use_point for s in samples],
        heat_target=torch.stack([s.heat_target for s in samples]),
        box_target=torch.stack([s.box_target for s in samples]),
        heat_valid=torch.stack([s.heat_valid for s in samples]),
        num_peaks=torch.tensor([s.num_peaks for s in samples], dtype=torch.int64),
    )


def cache_budget(cache_mb: int, loader_workers: int) -> int:
    """Bytes for ``SegmentationDataset(cache_bytes=)`` in a run: ``cache_mb`` MiB when the training process
    builds its own samples, 0 with loader workers (the loops make a new DataLoader every epoch, so a worker
    process's cache would be lost with it at the epoch's end)."""
    return cache_mb * 2**20 if loader_workers == 0 else 0


class SegmentationDataset(Dataset):
    """Training samples of Lite-SAM from annotated images (COCO or SA-1B records).

    Args:
        records: images with instance masks: :func:`litesam.train.annotations.load_records`,
            :func:`litesam.train.synthetic.synthetic_records` or a Label Studio project
            (:mod:`litesam.train.sources`): anything with ``height``, ``width``, ``image()`` and
            ``instance_masks()``, and optionally ``box_masks()``: H×W bool areas of box-only instances
            (annotated rectangles), which shape the AutoPPN targets but get no prompt and no mask loss.
        image_size: S, the model input side (``model.img_size``).
        stride: AutoPPN stride in input pixels (``model.image_encoder.autoppn.stride``); S must be a multiple.
        max_masks: at most this many masks per image get prompts and mask losses (SA-1B recipe: 64);
            all masks shape the AutoPPN targets.
        mask_scale: frame of ``gt_masks``: ``"low_res"`` (S/4, the decoder's output; the default) or
            ``"input"`` (S; the loss then upsamples the logits).
        prompts: prompt simulation settings.
        seed: base seed; see :meth:`set_epoch`.
        cache_bytes: RAM budget of the prepared-image cache (0: off). What a sample needs before any random
            draw (the resized image, its masks at input scale, bit-packed, and the AutoPPN targets) is the
            same every epoch; the first read of each image keeps it while the budget lasts, so later epochs
            neither decode nor re-render the image, resize its masks or recompute the targets (on synthetic
            scenes at S = 256: 16–18 → 4 ms a sample, ~0.2 MB an image; README, "Training"). Samples are
            identical with or without the cache. Each loader worker process keeps its own.

    Memory: a sample holds every mask of its image at input scale while it is built (N×S×S bool, about
    100 MB for 100 masks at S = 1024), because the AutoPPN target needs all of them.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord | SyntheticRecord],
        image_size: int,
        stride: int,
        max_masks: int = 64,
        mask_scale: Literal["low_res", "input"] = "low_res",
        prompts: PromptConfig | None = None,
        seed: int = 0,
        cache_bytes: int = 0,
    ) -> None:
        if not records:
            raise DatasetError("the dataset has no images")
        if mask_scale not in ("low_res", "input"):
            raise ValueError(f"mask_scale must be 'low_res' or 'input', got {mask_scale!r}")
        if image_size <= 0 or image_size % stride or image_size % LOW_RES_FACTOR:
            raise ValueError(
                f"image_size {image_size} must be a positive multiple of the stride {stride} and of 4"
            )
        if max_masks < 1:
            raise ValueError(f"max_masks must be ≥ 1, got {max_masks}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be ≥ 0, got {cache_bytes}")
        self.records = list(records)
        self.image_size = image_size
        self.stride = stride
        self.max_masks = max_masks
        self.mask_scale = mask_scale
        self.prompts = prompts or PromptConfig()
        self.seed = seed
        self.epoch = 0
        self.transform = ResizeLongestSide(image_size)
        self.cache_left = cache_bytes
        self._prepared: dict[int, _Prepared] = {}

    @classmethod
    def for_run(
        cls,
        records: Sequence[ImageRecord | SyntheticRecord],
        model: torch.nn.Module,
        config: TrainConfig,
        loader_workers: int,
        image_size: int | None = None,
        cache_share: float = 1.0,
    ) -> SegmentationDataset:
        """The dataset a training run of ``config`` reads: ``model``'s AutoPPN stride, the run's masks,
        prompts and seed, at input side ``image_size`` (None: ``model.img_size``), with ``cache_share`` of
        the run's image-cache budget (:func:`cache_budget`; a run at two sides splits it)."""
        return cls(
            records,
            image_size=model.img_size if image_size is None else image_size,
            stride=model.image_encoder.autoppn.stride,
            max_masks=config.max_masks,
            mask_scale=config.mask_scale,
            prompts=config.prompts,
            seed=config.seed,
            cache_bytes=int(cache_budget(config.cache_mb, loader_workers) * cache_share),
        )

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random draws :meth:`__getitem__` makes (call before creating the loader)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> TrainSample:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        record = self.records[index]
        prepared = self._prepare(index)
        resized, masks, targets = prepared.image, prepared.masks(self.image_size), prepared.targets
        h, w = resized.shape[:2]
        s = self.image_size

        # Up to max_masks masks in random order, skipping those that vanish in the frame of the loss;
        # checked one by one, stopping once enough are found (no pooled copy of every mask).
        chosen, gt = [], []
        for i in rng.permutation(len(masks)):
            target = area_downsample(masks[i], LOW_RES_FACTOR) if self.mask_scale == "low_res" else masks[i]
            if target.any():
                chosen.append(i)
                gt.append(target)
            if len(chosen) == self.max_masks:
                break
        order = np.argsort(chosen)
        chosen = np.asarray(chosen, dtype=np.int64)[order]
        side = s // LOW_RES_FACTOR if self.mask_scale == "low_res" else s
        gt = np.stack([gt[k] for k in order]) if len(order) else np.zeros((0, side, side), dtype=bool)
        chosen_masks = masks[chosen]

        boxes = _tight_boxes(chosen_masks)
        cfg = self.prompts
        points = sample_points(chosen_masks, rng)
        prompt_boxes = jitter_boxes(boxes, rng, (h, w), cfg.box_noise, cfg.box_noise_cap)
        use_point = choose_point_prompts(len(chosen), rng, cfg.point_fraction)

        grid = s // self.stride
        centres = cell_centres(grid, grid, self.stride)
        heat_valid = (centres[..., 0] < w) & (centres[..., 1] < h)
        return TrainSample(
            image=torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32)),
            input_size=(h, w),
            original_size=(record.height, record.width),
            gt_masks=torch.from_numpy(gt),
            gt_boxes=torch.from_numpy(boxes),
            point_coords=torch.from_numpy(points),
            prompt_boxes=torch.from_numpy(prompt_boxes),
            use_point=torch.from_numpy(use_point),
            heat_target=torch.from_numpy(targets.heat.copy()),  # copies: the cache keeps the arrays
            box_target=torch.from_numpy(targets.box_ltrb.copy()),
            heat_valid=heat_valid,
            num_peaks=targets.num_peaks,
        )

    def _prepare(self, index: int) -> _Prepared:
        """The image's resized pixels, masks and AutoPPN targets: from the cache, or computed (and kept while
        the cache budget lasts)."""
        if index in self._prepared:
            return self._prepared[index]
        record = self.records[index]
        resized = self.transform.apply_image(record.image())
        h, w = resized.shape[:2]
        s = self.image_size
        # Every mask at input scale, padded to S×S: all of them shape the AutoPPN targets, and so do the
        # areas of box-only instances (a record's optional box_masks(): rectangles, no mask loss).
        masks = _input_frame(record.instance_masks(), (h, w), s)
        box_only = _input_frame(getattr(record, "box_masks", tuple)(), (h, w), s)
        targets = build_autoppn_targets(np.concatenate([masks, box_only]), stride=self.stride, shape=(s, s))
        prepared = _Prepared(resized, np.packbits(masks, axis=-1), targets)
        if prepared.nbytes <= self.cache_left:
            self._prepared[index] = prepared
            self.cache_left -= prepared.nbytes
        return prepared


@dataclass(frozen=True)
class _Prepared:
    """What a sample of one image needs before any random draw (see ``SegmentationDataset(cache_bytes=)``).

    Attributes:
        image: h'×w'×3 uint8, resized (longest side S).
        packed_masks: N×S×⌈S/8⌉ uint8, the S×S bool input-frame masks packed along the last axis.
        targets: the AutoPPN targets of every mask and box-only area.
    """

    image: np.ndarray
    packed_masks: np.ndarray
    targets: AutoPPNTargets

    def masks(self, side: int) -> np.ndarray:
        """N×S×S bool input-frame masks (a new array)."""
        return np.unpackbits(self.packed_masks, axis=-1, count=side).view(bool)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        t = self.targets
        return self.image.nbytes + self.packed_masks.nbytes + t.heat.nbytes + t.box_ltrb.nbytes + t.owner.nbytes


def _input_frame(originals, size: tuple[int, int], side: int) -> np.ndarray:
    """H×W bool masks → N×S×S bool: each resized to the input frame (h'×w', area rule), padded; empty ones
    dropped."""
    h, w = size
    masks = []
    for original in originals:
        mask = np.zeros((side, side), dtype=bool)
        mask[:h, :w] = cv2.resize(original.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5
        if mask.any():
            masks.append(mask)
    return np.stack(masks) if masks else np.zeros((0, side, side), dtype=bool)


def _tight_boxes(masks: np.ndarray) -> np.ndarray:
    """N×H×W bool non-empty masks → N×4 float32 tight XYXY boxes, pixel-inclusive (x2 = right-most column).

    The same boxes as :func:`litesam.masks.batched_mask_to_box`, in numpy: torch's reductions over bool
    masks cost ~10 ms each on a busy 2-core machine, more than the rest of a sample.
    """
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    height, width = masks.shape[1:]
    y1, y2 = rows.argmax(axis=1), height - 1 - rows[:, ::-1].argmax(axis=1)
    x1, x2 = cols.argmax(axis=1), width - 1 - cols[:, ::-1].argmax(axis=1)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32).reshape(-1, 4)


def area_downsample(mask: np.ndarray, factor: int) -> np.ndarray:
    """S×S bool → (S/f)×(S/f) bool: a cell is on when at least half of its f×f pixels are.

    OpenCV's area resize of the 0/1 mask gives each cell's mean exactly (multiples of 1/f², f a power of
    two, in float32): ~0.02 ms a 256² mask, 10× numpy's reshape-and-sum.
    """
    side = mask.shape[0] // factor
    return cv2.resize(mask.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA) >= 0.5
