"""The long-lived objects of a backend process (web worker or job worker), built once from the settings.

Nothing here does I/O when built: the checkpoint is resolved and the model loaded on first use, Redis is
connected on first command, Label Studio on first call.
"""

from __future__ import annotations

from dataclasses import dataclass

from .embeddings import ImageEmbeddings
from .images import ImageFetcher
from .labelstudio.client import LabelStudioClient
from .model_service import ModelService
from .settings import Settings
from .store import EmbeddingStore


@dataclass(frozen=True)
class Services:
    """Settings plus the process-wide model, embedding store, Label Studio client, image fetcher and the
    image → embedding path built on them."""

    settings: Settings
    model: ModelService
    store: EmbeddingStore
    label_studio: LabelStudioClient
    fetcher: ImageFetcher
    embeddings: ImageEmbeddings


def build_services(settings: Settings) -> Services:
    label_studio = LabelStudioClient(settings)
    model = ModelService(settings)
    store = EmbeddingStore(
        settings.embedding_redis_url.reveal(), ttl=settings.embedding_ttl, lru_size=settings.embedding_lru
    )
    fetcher = ImageFetcher(settings, label_studio)
    return Services(
        settings=settings,
        model=model,
        store=store,
        label_studio=label_studio,
        fetcher=fetcher,
        embeddings=ImageEmbeddings(model, store, fetcher, label_studio, settings.max_image_pixels),
    )
