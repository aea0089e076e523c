"""Synthetic scenes: textured shapes on a textured background, with exact instance masks.

For proofs that training learns (a held-out number against a trivial baseline) and for smoke tests of a new
machine, without any downloaded data. A scene is a pure function of ``(seed, index)``: nothing is stored,
each image is rendered when it is read (~8 ms at 256 px on a Zen 3 core; training keeps the prepared
images in RAM, see ``SegmentationDataset(cache_bytes=)``), so a set of any size costs no disk.

A scene (:func:`render_scene`):

* an H×W RGB image, H and W drawn from ``[min_side, max_side]`` (default 192…256 px);
* a background texture: flat colour with pixel noise, low-frequency blotches, or stripes;
* 2–6 shapes (ellipses, rotated rectangles, triangles, random star-convex polygons), each with its own
  texture (flat + noise, stripes of two colours, or a linear gradient) and a colour kept at least
  :data:`MIN_COLOUR_DISTANCE` from the background's and every other shape's mean colour;
* painted back to front, so later shapes occlude earlier ones. A shape's instance mask is what stays
  visible; shapes left with less than ``min_visible`` of their area (or under ``min_area`` pixels) are not
  painted at all, so every painted object has a mask and every mask is exact (drawn without
  anti-aliasing: a pixel is the shape's colour exactly where its mask is on).

:class:`SyntheticRecord` is an image record like :class:`litesam.train.annotations.ImageRecord`
(``image_id``, ``height``, ``width``, ``image()``, ``instance_masks()``), so the training dataset and the
evaluation read both alike. :func:`synthetic_records` makes a set; train and held-out sets differ by seed
(:data:`TRAIN_SEED`, :data:`HELD_OUT_SEED`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

#: Seed of ``litesam train --data synthetic`` and of the held-out set of ``litesam eval --data synthetic``.
TRAIN_SEED = 0
HELD_OUT_SEED = 1
#: Seed of the calibration scenes of SegEvery's filters (``litesam calibrate``): neither trained on nor held out.
CALIBRATION_SEED = 2

#: Smallest distance (RGB, 0–255 scale) between the mean colours of any two things in a scene.
MIN_COLOUR_DISTANCE = 60.0

SHAPES = ("ellipse", "rectangle", "triangle", "polygon")


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn.

    Attributes:
        min_side, max_side: range of the image height and width in pixels (inclusive).
        min_objects, max_objects: range of the number of shapes tried per scene (inclusive).
        min_size, max_size: range of a shape's radius as a fraction of the image's shorter side.
        min_visible: smallest visible fraction of a shape's own area for it to be kept.
        min_area: smallest visible area in pixels for a shape to be kept.
    """

    min_side: int = 192
    max_side: int = 256
    min_objects: int = 2
    max_objects: int = 6
    min_size: float = 0.08
    max_size: float = 0.3
    min_visible: float = 0.35
    min_area: int = 80

    def __post_init__(self) -> None:
        if not 16 <= self.min_side <= self.max_side:
            raise ValueError(f"need 16 ≤ min_side ≤ max_side, got {self.min_side}, {self.max_side}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 ≤ min_objects ≤ max_objects, got {self.min_objects}, {self.max_objects}")
        if not 0.0 < self.min_size <= self.max_size <= 0.5:
            raise ValueError(f"need 0 < min_size ≤ max_size ≤ 0.5, got {self.min_size}, {self.max_size}")
        if not 0.0 <= self.min_visible <= 1.0 or self.min_area < 1:
            raise ValueError("min_visible must be in [0, 1] and min_area ≥ 1")


@dataclass(frozen=True)
class SyntheticRecord:
    """One synthetic scene as an image record (rendered on each read; see the module docstring).

    Attributes:
        image_id: position in its set.
        seed, index: the scene is ``render_scene(seed, index, config)``.
        height, width: the image size in pixels.
        config: drawing settings.
    """

    image_id: int
    seed: int
    index: int
    height: int
    width: int
    config: SceneConfig

    def image(self) -> np.ndarray:
        """H×W×3 uint8 RGB."""
        return render_scene(self.seed, self.index, self.config)[0]

    def instance_masks(self) -> Iterator[np.ndarray]:
        """The scene's H×W bool instance masks, back to front."""
        yield from render_scene(self.seed, self.index, self.config)[1]


def synthetic_records(count: int, seed: int = TRAIN_SEED, config: SceneConfig | None = None) -> list[SyntheticRecord]:
    """``count`` scenes ``(seed, 0)`` … ``(seed, count − 1)`` as records.

    Raises:
        ValueError: ``count`` < 1.
    """
    if count < 1:
        raise ValueError(f"a synthetic set needs at least one image, got {count}")
    config = config or SceneConfig()
    return [
        SyntheticRecord(index, seed, index, *scene_size(seed, index, config), config) for index in range(count)
    ]


def scene_size(seed: int, index: int, config: SceneConfig) -> tuple[int, int]:
    """(H, W) of scene ``(seed, index)``, without rendering it."""
    rng = _rng(seed, index)
    return _draw_size(rng, config)


def render_scene(seed: int, index: int, config: SceneConfig | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render scene ``(seed, index)`` (the last few renders are cached; the arrays returned are copies).

    Returns:
        (H×W×3 uint8 RGB image, list of H×W bool instance masks of the visible parts, back to front; at
        least one, disjoint, each of at least ``config.min_area`` pixels).
    """
    image, masks = _render(int(seed), int(index), config or SceneConfig())
    return image.copy(), [mask.copy() for mask in masks]


@functools.lru_cache(maxsize=8)
def _render(seed: int, index: int, config: SceneConfig) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = _rng(seed, index)
    height, width = _draw_size(rng, config)
    background_colour = rng.uniform(0, 255, 3)
    image = _texture(rng, height, width, background_colour, _background_kind(rng))
    colours = [background_colour]

    shapes = []
    for _ in range(int(rng.integers(config.min_objects, config.max_objects + 1))):
        shape = _shape_mask(rng, height, width, config)
        colour = _distinct_colour(rng, colours)
        kind = ("flat", "stripes", "gradient")[int(rng.integers(3))]
        if shape.any():
            shapes.append((shape, colour, kind, int(rng.integers(1 << 31))))
            colours.append(colour)

    # Visibility back to front: mostly hidden shapes are not painted at all.
    kept = _visible(shapes, config)
    if not kept:  # every shape was too small or hidden: one plain rectangle instead
        shapes = [(_fallback_shape(height, width), _distinct_colour(rng, colours[:1]), "flat", 0)]
        kept = [0]
    visible = _visible_parts([shapes[i][0] for i in kept])
    for i in kept:
        shape, colour, kind, texture_seed = shapes[i]
        rows, cols = np.flatnonzero(shape.any(axis=1)), np.flatnonzero(shape.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        size = (rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0])
        texture = _texture(np.random.default_rng(texture_seed), *size, colour, kind)
        image[box][shape[box]] = texture[shape[box]]
    return image, visible


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), 7])


def _draw_size(rng: np.random.Generator, config: SceneConfig) -> tuple[int, int]:
    height, width = rng.integers(config.min_side, config.max_side + 1, size=2)
    return int(height), int(width)


def _background_kind(rng: np.random.Generator) -> str:
    return ("flat", "blotches", "stripes")[int(rng.integers(3))]


def _texture(rng: np.random.Generator, height: int, width: int, colour: np.ndarray, kind: str) -> np.ndarray:
    """H×W×3 uint8 texture around a mean ``colour`` (float RGB): flat, blotches, stripes or gradient."""
    base = np.broadcast_to(colour.astype(np.float32), (height, width, 3)).copy()
    if kind == "stripes":
        other = np.clip(colour + rng.uniform(-45, 45, 3), 0, 255).astype(np.float32)
        angle, period = rng.uniform(0, math.pi), rng.uniform(6, 20)
        yy, xx = np.mgrid[:height, :width]
        on = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period) > 0
        base[on] = other
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[:height, :width]
        ramp = (xx * math.cos(angle) + yy * math.sin(angle)) / max(height, width)
        base += (ramp - ramp.mean())[..., None].astype(np.float32) * rng.uniform(-60, 60, 3).astype(np.float32)
    elif kind == "blotches":
        coarse = rng.normal(0, 35, size=(6, 6, 3)).astype(np.float32)
        base += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    amplitude = int(rng.integers(6, 40))
    base += rng.integers(-amplitude, amplitude + 1, size=(height, width, 3), dtype=np.int16)
    return np.clip(base, 0, 255).astype(np.uint8)


def _distinct_colour(rng: np.random.Generator, used: list[np.ndarray]) -> np.ndarray:
    """A random RGB colour at least MIN_COLOUR_DISTANCE from every used one (the farthest of 30 tries)."""
    best, best_distance = None, -1.0
    for _ in range(30):
        colour = rng.uniform(0, 255, 3)
        distance = min(float(np.linalg.norm(colour - u)) for u in used)
        if distance >= MIN_COLOUR_DISTANCE:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def _shape_mask(rng: np.random.Generator, height: int, width: int, config: SceneConfig) -> np.ndarray:
    """H×W bool mask of one random shape (drawn without anti-aliasing)."""
    side = min(height, width)
    radius = rng.uniform(config.min_size, config.max_size) * side
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    angle = rng.uniform(0, 2 * math.pi)
    canvas = np.zeros((height, width), dtype=np.uint8)
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    if kind == "ellipse":
        axes = (max(2, round(radius)), max(2, round(radius * rng.uniform(0.4, 1.0))))
        cv2.ellipse(canvas, (round(cx), round(cy)), axes, math.degrees(angle), 0, 360, 1, -1, cv2.LINE_8)
        return canvas.astype(bool)
    if kind == "rectangle":
        half = np.array([radius, radius * rng.uniform(0.3, 1.0)])
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    elif kind == "triangle":
        angles = np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.4, 0.4, 3)
        corners = np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius
    else:
        count = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * math.pi, count))
        radii = radius * rng.uniform(0.5, 1.0, count)
        corners = np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = corners @ rotation.T + (cx, cy)
    cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1, cv2.LINE_8)
    return canvas.astype(bool)


def _visible_parts(masks: list[np.ndarray]) -> list[np.ndarray]:
    """What each mask shows when painted back to front (later masks hide earlier ones)."""
    visible, covered = [], None
    for mask in reversed(masks):
        part = mask if covered is None else mask & ~covered
        covered = mask.copy() if covered is None else covered | mask
        visible.append(part)
    return visible[::-1]


def _visible(shapes: list, config: SceneConfig) -> list[int]:
    """Indices of the shapes kept: visible ≥ min_visible of their area and ≥ min_area pixels.

    Dropping a shape can only uncover the shapes under it, so one pass from the front keeps the rule exact:
    a shape is judged against the kept shapes in front of it.
    """
    kept: list[int] = []
    covered = None
    for i in reversed(range(len(shapes))):
        mask = shapes[i][0]
        part = mask if covered is None else mask & ~covered
        area, full = int(part.sum()), int(mask.sum())
        if area >= config.min_area and area >= config.min_visible * full:
            kept.append(i)
            covered = mask.copy() if covered is None else covered | mask
    return kept[::-1]


def _fallback_shape(height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = True
    return mask
