"""The long-lived objects of a backend process (web worker or job worker), built once from the settings.

Nothing here does I/O when built: the checkpoint is resolved and the model loaded on first use, Redis is
connected on first command.
"""

from __future__ import annotations

from dataclasses import dataclass

from .images import ImageFetcher
from .ls_auth import LabelStudioAuth
from .model import ModelService
from .settings import Settings
from .store import EmbeddingStore


@dataclass(frozen=True)
class Services:
    """Settings plus the process-wide model, embedding store, Label Studio auth and image fetcher."""

    settings: Settings
    model: ModelService
    store: EmbeddingStore
    auth: LabelStudioAuth
    fetcher: ImageFetcher


def build_services(settings: Settings) -> Services:
    auth = LabelStudioAuth(
        settings.label_studio_url, settings.label_studio_api_key, timeout=settings.fetch_timeout
    )
    return Services(
        settings=settings,
        model=ModelService(settings),
        store=EmbeddingStore(
            settings.embedding_redis_url.reveal(), ttl=settings.embedding_ttl, lru_size=settings.embedding_lru
        ),
        auth=auth,
        fetcher=ImageFetcher(settings, auth),
    )
