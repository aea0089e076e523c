import numpy as np
import pytest
import torch

from litesam.errors import InvalidImageError, InvalidPromptError, NoEmbeddingError
from litesam.predictor import ImageEmbedding, LiteSamPredictor
from tests.tiny import synthetic_image, tiny_model


@pytest.fixture()
def predictor():
    p = LiteSamPredictor(tiny_model())
    p.set_image(synthetic_image(120, 160))
    return p


def test_masks_are_at_the_original_size(predictor):
    masks, scores, logits = predictor.predict(np.array([[40.0, 50.0]]), np.array([1]))
    side = tiny_model().prompt_encoder.mask_input_size
    assert masks.shape == (3, 120, 160) and masks.dtype == bool
    assert scores.shape == (3,) and scores.dtype == np.float32
    assert logits.shape == (3, *side)


def test_single_mask_output_and_box_with_points(predictor):
    masks, scores, _ = predictor.predict(
        np.array([[40.0, 50.0], [100.0, 90.0]]), np.array([1, 0]), box=[10, 10, 90, 100], multimask_output=False
    )
    assert masks.shape == (1, 120, 160) and scores.shape == (1,)


def test_best_only_keeps_the_highest_scoring_candidate(predictor):
    masks, scores, logits = predictor.predict(np.array([[40.0, 50.0]]), np.array([1]))
    best_mask, best_score, best_logits = predictor.predict(np.array([[40.0, 50.0]]), np.array([1]), best_only=True)
    best = int(np.argmax(scores))
    assert best_mask.shape == (1, 120, 160) and best_score.shape == (1,)
    np.testing.assert_array_equal(best_mask[0], masks[best])
    np.testing.assert_array_equal(best_logits[0], logits[best])
    assert best_score[0] == scores[best]


def test_mask_input_feeds_back(predictor):
    _, scores, logits = predictor.predict(np.array([[40.0, 50.0]]), np.array([1]))
    best = int(np.argmax(scores))
    masks, _, _ = predictor.predict(np.array([[40.0, 50.0]]), np.array([1]), mask_input=logits[best : best + 1])
    assert masks.shape == (3, 120, 160)


def test_prediction_is_deterministic(predictor):
    first = predictor.predict(box=np.array([10, 20, 100, 110]))
    second = predictor.predict(box=np.array([10, 20, 100, 110]))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_set_embedding_restores_exactly(predictor):
    embedding = predictor.get_embedding()
    restored = LiteSamPredictor(tiny_model())
    restored.set_embedding(
        ImageEmbedding(embedding.features.clone(), embedding.input_size, embedding.original_size)
    )
    a = predictor.predict(np.array([[60.0, 30.0]]), np.array([1]))
    b = restored.predict(np.array([[60.0, 30.0]]), np.array([1]))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_predict_before_set_image_is_a_clear_error():
    with pytest.raises(NoEmbeddingError, match="set_image"):
        LiteSamPredictor(tiny_model()).predict(np.array([[1.0, 1.0]]), np.array([1]))


def test_embedding_of_another_size_is_refused():
    p = LiteSamPredictor(tiny_model())
    with pytest.raises(InvalidPromptError, match="does not fit"):
        p.set_embedding(ImageEmbedding(torch.zeros(1, 32, 5, 5), (80, 80), (80, 80)))


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((50, 60), np.uint8), "grayscale"),
        (np.zeros((50, 60, 4), np.uint8), "RGBA"),
        (np.zeros((50, 60, 3), np.uint16), "uint8"),
        (np.zeros((1, 1, 3), np.uint8), "at least"),
        (np.zeros((10, 10000, 3), np.uint8), "aspect ratio"),
        ([[1, 2, 3]], "numpy array"),
    ],
)
def test_bad_images_are_clear_errors(image, message):
    with pytest.raises(InvalidImageError, match=message):
        LiteSamPredictor(tiny_model()).set_image(image)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "at least one prompt"),
        ({"point_coords": np.array([[500.0, 10.0]]), "point_labels": np.array([1])}, "outside"),
        ({"point_coords": np.array([[-3.0, 10.0]]), "point_labels": np.array([1])}, "outside"),
        ({"point_coords": np.array([[np.nan, 10.0]]), "point_labels": np.array([1])}, "finite"),
        ({"point_coords": np.array([[5.0, 10.0]]), "point_labels": np.array([1, 0])}, "one label per point"),
        ({"point_coords": np.array([[5.0, 10.0]]), "point_labels": np.array([2])}, "foreground"),
        ({"point_coords": np.zeros((0, 2)), "point_labels": np.zeros(0)}, "N ≥ 1"),
        ({"point_coords": np.array([[5.0, 10.0]])}, "together"),
        ({"box": [50, 50, 10, 10]}, "x1 > x0"),
        ({"box": [0, 0, 10]}, "4 numbers"),
        ({"box": [0, 0, 10, np.inf]}, "finite"),
        ({"mask_input": np.zeros((1, 3, 3))}, "mask_input must have shape"),
    ],
)
def test_bad_prompts_are_clear_errors(predictor, kwargs, message):
    with pytest.raises(InvalidPromptError, match=message):
        predictor.predict(**kwargs)


def test_points_on_the_far_border_are_inside(predictor):
    masks, _, _ = predictor.predict(np.array([[160.0, 120.0]]), np.array([1]))
    assert masks.shape[1:] == (120, 160)


def test_proposals_are_in_the_valid_input_region(predictor):
    proposals = predictor.proposals()
    h, w = predictor.get_embedding().input_size
    assert len(proposals.scores) <= 32
    if len(proposals.scores):
        assert (proposals.boxes[:, 2] <= w).all() and (proposals.boxes[:, 3] <= h).all()
        assert (proposals.scores[:-1] >= proposals.scores[1:]).all()


def test_embedding_with_inconsistent_sizes_is_refused(predictor):
    embedding = predictor.get_embedding()
    h, w = embedding.input_size
    with pytest.raises(InvalidPromptError, match="does not match"):
        LiteSamPredictor(tiny_model()).set_embedding(ImageEmbedding(embedding.features, (w, h), embedding.original_size))
    with pytest.raises(InvalidPromptError, match="original_size"):
        LiteSamPredictor(tiny_model()).set_embedding(ImageEmbedding(embedding.features, (0, 0), (0, 0)))


def test_preprocess_refuses_an_input_larger_than_the_model():
    model = tiny_model()
    with pytest.raises(InvalidImageError, match="at most"):
        model.preprocess(torch.zeros(1, 3, model.img_size + 1, 10))
