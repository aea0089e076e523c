"""Tests of litesam.train.synthetic: deterministic scenes with exact, disjoint instance masks."""

from __future__ import annotations

import numpy as np
import pytest

from litesam.train.data import SegmentationDataset
from litesam.train.synthetic import (
    MIN_COLOUR_DISTANCE,
    SceneConfig,
    render_scene,
    scene_size,
    synthetic_records,
)


def test_scenes_are_a_pure_function_of_seed_and_index():
    image, masks = render_scene(3, 7)
    again, masks_again = render_scene(3, 7)
    np.testing.assert_array_equal(image, again)
    assert len(masks) == len(masks_again) and all(np.array_equal(a, b) for a, b in zip(masks, masks_again))
    image[:] = 0  # the cache hands out copies
    assert render_scene(3, 7)[0].any()
    other, _ = render_scene(4, 7)
    assert other.shape != image.shape or not np.array_equal(other, again)


def test_masks_are_exact_disjoint_and_large_enough():
    config = SceneConfig()
    counts = []
    for index in range(30):
        image, masks = render_scene(0, index, config)
        height, width = scene_size(0, index, config)
        assert image.shape == (height, width, 3) and image.dtype == np.uint8
        assert config.min_side <= height <= config.max_side and config.min_side <= width <= config.max_side
        assert masks and all(m.shape == (height, width) and m.dtype == bool for m in masks)
        assert all(int(m.sum()) >= config.min_area for m in masks)
        assert int(np.sum(masks, axis=0).max()) == 1  # visible parts never overlap
        counts.append(len(masks))
        # Exact: inside a mask the pixels are that object's texture, whose mean colour is far from the
        # background's; the ring of background pixels just outside a shape differs from the shape's mean.
        background = ~np.any(masks, axis=0)
        for mask in masks:
            inside = image[mask].astype(float).mean(axis=0)
            if background.sum() > 500:
                outside = image[background].astype(float).mean(axis=0)
                assert np.linalg.norm(inside - outside) > MIN_COLOUR_DISTANCE / 4
    assert min(counts) >= 1 and max(counts) >= 4  # several objects, with occlusion dropping some


def test_records_feed_the_training_dataset():
    records = synthetic_records(4, seed=5)
    assert [r.image_id for r in records] == [0, 1, 2, 3]
    record = records[2]
    assert record.image().shape == (record.height, record.width, 3)
    assert len(list(record.instance_masks())) == len(render_scene(5, 2)[1])
    sample = SegmentationDataset(records, image_size=256, stride=8)[2]
    assert len(sample.gt_masks) == len(render_scene(5, 2)[1]) and sample.num_peaks >= 1
    with pytest.raises(ValueError, match="at least one image"):
        synthetic_records(0)
    with pytest.raises(ValueError):
        SceneConfig(min_side=300, max_side=200)
