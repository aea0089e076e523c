"""Where an embedding is cached: the one path from a task's image URI to its image embedding.

:meth:`ImageEmbeddings.embedding_for` is used by clicks (:mod:`backend.model`), synchronous batch predictions
and pre-annotation jobs alike: fetch the image (:mod:`backend.images`), hash its bytes, look the embedding up
in the shared store (:mod:`backend.store`, keyed by model version and image sha256), else decode, encode and
store it. A Label Studio upload never changes behind its URL, so its URL → image hash alias is recorded too:
a later click or job on that image finds its embedding without downloading it again.
"""

from __future__ import annotations

from litesam.predictor import ImageEmbedding

from .images import ImageFetcher, decode_image
from .labelstudio.client import LabelStudioClient
from .model_service import ModelService
from .store import EmbeddingStore


class ImageEmbeddings:
    """Image URI → embedding of the process's model, through the shared store (thread-safe)."""

    def __init__(
        self,
        model: ModelService,
        store: EmbeddingStore,
        fetcher: ImageFetcher,
        label_studio: LabelStudioClient,
        max_image_pixels: int,
    ) -> None:
        self._model = model
        self._store = store
        self._fetcher = fetcher
        self._label_studio = label_studio
        self._max_image_pixels = max_image_pixels

    def embedding_for(self, uri: object, task_id: object = None) -> tuple[ImageEmbedding, str]:
        """The embedding of the image at ``uri`` (a task's image field; ``task_id`` presigns cloud URIs).

        Returns:
            (embedding, source): where it came from, ``"cache without download"``, ``"memory"``, ``"redis"``
            or ``"computed"``. Its features are float32 on the CPU, rounded through float16 (as stored).
        Raises:
            the errors of :meth:`backend.images.ImageFetcher.fetch` and :func:`backend.images.decode_image`
            (bad, refused, too large or unreachable images).
        """
        version = self._model.model_version
        immutable = self._label_studio.immutable_source(uri)
        if immutable is not None:
            sha = self._store.image_sha256(immutable)
            cached = self._store.get(version, sha) if sha is not None else None
            if cached is not None:
                return cached, "cache without download"
        fetched = self._fetcher.fetch(uri, task_id)
        if immutable is not None:
            self._store.remember_image(immutable, fetched.sha256)
        return self._store.get_or_compute(
            version,
            fetched.sha256,
            lambda: self._model.encode(decode_image(fetched.data, self._max_image_pixels)),
        )
