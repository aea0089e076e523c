"""What inference keeps between clicks: the decoder's prepared image side and the dense positional encoding.

Each test builds its own model (the shared ``tiny_model`` is read-only) and checks answers against the same
work done afresh, so a stale value would show as a wrong mask, not only as a missed cache entry.
"""

import copy
import gc
import threading

import numpy as np
import pytest
import torch

from litesam.build import build_model
from litesam.modeling.mask_decoder import SHARED_IMAGES
from litesam.predictor import LiteSamPredictor
from tests.tiny import synthetic_image

POINT, LABEL = np.array([[60.0, 40.0]]), np.array([1])


def fresh_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("litesam_tiny").eval()


def count_prepares(model, monkeypatch) -> list[int]:
    """Counts calls of the decoder transformer's ``prepare_image`` (the work that is kept)."""
    calls = [0]
    prepare = model.mask_decoder.transformer.prepare_image

    def counted(*args, **kwargs):
        calls[0] += 1
        return prepare(*args, **kwargs)

    monkeypatch.setattr(model.mask_decoder.transformer, "prepare_image", counted)
    return calls


def afresh(model, predictor, **prompt):
    """The same prediction with nothing kept: the decoder's entries bypassed, the encoding recomputed."""
    shared, encoding = model.mask_decoder._shared_images, model.prompt_encoder._dense_pe
    size, shared.size, model.prompt_encoder._dense_pe = shared.size, 0, None
    try:
        return predictor.predict(**prompt)
    finally:
        shared.size, model.prompt_encoder._dense_pe = size, encoding


def assert_same(answer, reference):
    for got, expected in zip(answer, reference, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_further_clicks_on_an_image_reuse_its_image_side_and_answer_the_same(monkeypatch):
    model = fresh_model()
    predictor = LiteSamPredictor(model)
    predictor.set_image(synthetic_image())
    calls = count_prepares(model, monkeypatch)
    answers = [predictor.predict(point_coords=POINT + 10 * i, point_labels=LABEL) for i in range(3)]
    assert calls[0] == 1
    assert model.prompt_encoder.get_dense_pe() is model.prompt_encoder.get_dense_pe()
    for i, answer in enumerate(answers):
        assert_same(answer, afresh(model, predictor, point_coords=POINT + 10 * i, point_labels=LABEL))
    assert calls[0] == 4  # the three fresh predictions prepared the image again


def test_changed_weights_are_never_served_stale(monkeypatch):
    model, other = fresh_model(0), fresh_model(1)
    predictor = LiteSamPredictor(model)
    embedding = predictor.set_image(synthetic_image())
    predictor.predict(point_coords=POINT, point_labels=LABEL)
    model.load_state_dict(other.state_dict())  # in-place copies: the parameters' write counts change
    calls = count_prepares(model, monkeypatch)
    answer = predictor.predict(point_coords=POINT, point_labels=LABEL)
    assert calls[0] == 1
    reference = LiteSamPredictor(other)
    reference.set_embedding(embedding)
    assert_same(answer, reference.predict(point_coords=POINT, point_labels=LABEL))


def test_an_embedding_written_in_place_is_prepared_again(monkeypatch):
    model = fresh_model()
    predictor = LiteSamPredictor(model)
    features = predictor.set_image(synthetic_image()).features.clone()  # a normal tensor, not inference-mode
    embedding = predictor.get_embedding()
    predictor.set_embedding(type(embedding)(features, embedding.input_size, embedding.original_size))
    before = predictor.predict(point_coords=POINT, point_labels=LABEL)
    features.mul_(-1.0)
    calls = count_prepares(model, monkeypatch)
    after = predictor.predict(point_coords=POINT, point_labels=LABEL)
    assert calls[0] == 1
    assert_same(after, afresh(model, predictor, point_coords=POINT, point_labels=LABEL))
    assert not np.array_equal(after[2], before[2])


def test_mask_inputs_and_training_always_prepare_afresh(monkeypatch):
    model = fresh_model()
    predictor = LiteSamPredictor(model)
    predictor.set_image(synthetic_image())
    _, _, low_res = predictor.predict(point_coords=POINT, point_labels=LABEL)
    calls = count_prepares(model, monkeypatch)
    for _ in range(2):  # a mask input gives a per-call dense embedding: never kept
        answer = predictor.predict(point_coords=POINT, point_labels=LABEL, mask_input=low_res[:1])
    assert calls[0] == 2
    reference = afresh(model, predictor, point_coords=POINT, point_labels=LABEL, mask_input=low_res[:1])
    assert_same(answer, reference)
    calls[0] = 0

    # With gradients on (training) nothing is kept, and a positional encoding made in inference mode is
    # not handed to autograd.
    model.train()
    entries = len(model.mask_decoder._shared_images._entries)
    embedding = torch.randn(1, model.mask_decoder.transformer_dim, 16, 16, requires_grad=True)
    for _ in range(2):
        sparse, dense = model.prompt_encoder(points=(torch.tensor([[[60.0, 40.0]]]), torch.tensor([[1]])),
                                             boxes=None, masks=None)
        masks, _ = model.mask_decoder(embedding, model.prompt_encoder.get_dense_pe(), sparse, dense, True)
        masks.sum().backward()
    assert calls[0] == 2
    assert len(model.mask_decoder._shared_images._entries) == entries
    assert embedding.grad is not None and torch.isfinite(embedding.grad).all()


def test_only_the_last_images_are_kept_and_none_is_kept_alive():
    model = fresh_model()
    predictor = LiteSamPredictor(model)
    # Held by the test while it looks, so that no later embedding can take a dead one's id() (CPython reuses
    # them; the cache then replaces the dead entry, and fewer than SHARED_IMAGES are kept).
    embeddings = []
    for seed in range(SHARED_IMAGES + 2):
        embeddings.append(predictor.set_image(synthetic_image(seed=seed)).features)
        predictor.predict(point_coords=POINT, point_labels=LABEL)
    entries = model.mask_decoder._shared_images._entries
    kept = [entry[0]() for entry in entries.values()]
    assert len(kept) == SHARED_IMAGES
    assert all(a is b for a, b in zip(kept, embeddings[-SHARED_IMAGES:], strict=True))
    del kept, embeddings
    predictor.set_image(synthetic_image(seed=99))  # drops the predictor's reference to the last embedding
    gc.collect()
    alive = [entry[0]() is not None for entry in entries.values()]
    assert not any(alive)


def test_the_encoding_follows_the_grid_and_the_gaussian_matrix():
    model = fresh_model()
    encoder = model.prompt_encoder
    first = encoder.get_dense_pe()
    assert encoder.get_dense_pe() is first
    with torch.no_grad():
        encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(2.0)
    changed = encoder.get_dense_pe()
    assert changed is not first
    torch.testing.assert_close(changed, encoder.pe_layer(encoder.image_embedding_size).unsqueeze(0),
                               rtol=0, atol=0)
    model.set_input_size(128)
    assert encoder.get_dense_pe().shape[-2:] == (8, 8)
    with torch.inference_mode():
        inside = encoder.get_dense_pe()
    outside = encoder.get_dense_pe()
    assert inside.is_inference() and not outside.is_inference()
    torch.testing.assert_close(inside, outside, rtol=0, atol=0)


def test_a_copied_model_starts_with_nothing_kept_and_answers_the_same():
    model = fresh_model()
    predictor = LiteSamPredictor(model)
    embedding = predictor.set_image(synthetic_image())
    answer = predictor.predict(point_coords=POINT, point_labels=LABEL)
    copied = copy.deepcopy(model)
    assert len(copied.mask_decoder._shared_images._entries) == 0
    other = LiteSamPredictor(copied)
    other.set_embedding(embedding)
    assert_same(other.predict(point_coords=POINT, point_labels=LABEL), answer)


@pytest.mark.parametrize("threads", [4])
def test_threads_clicking_on_two_images_get_their_own_answers(threads):
    model = fresh_model()
    embeddings = [LiteSamPredictor(model).set_image(synthetic_image(seed=seed)) for seed in (0, 1)]

    def answer(embedding):
        predictor = LiteSamPredictor(model)
        predictor.set_embedding(embedding)
        return predictor.predict(point_coords=POINT, point_labels=LABEL)

    references = []
    for embedding in embeddings:
        predictor = LiteSamPredictor(model)
        predictor.set_embedding(embedding)
        references.append(afresh(model, predictor, point_coords=POINT, point_labels=LABEL))
    # Concurrent threads may round differently (the BLAS kernels split work by the threads they get; seen
    # at ~1e-7 in a loaded test run), so answers are compared within a tolerance that still tells the two
    # images apart.
    tolerance = dict(rtol=0, atol=1e-5)
    assert not np.allclose(references[0][2], references[1][2], **tolerance)
    failures: list[BaseException] = []

    def close_to(got, expected) -> None:
        masks, scores, logits = got
        np.testing.assert_allclose(scores, expected[1], **tolerance)
        np.testing.assert_allclose(logits, expected[2], **tolerance)
        assert (masks != expected[0]).mean() < 1e-3  # only pixels whose logit rounds across 0 may flip

    def work(index: int) -> None:
        try:
            for step in range(6):
                which = (index + step) % 2
                close_to(answer(embeddings[which]), references[which])
        except BaseException as error:  # reported in the main thread
            failures.append(error)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not failures, failures[0]
