"""The ``Authorization`` header for requests to Label Studio, from the configured API key.

Label Studio 1.2x knows two kinds of keys (labelstudio-protocol.md §4.2):

* a **personal access token** (PAT): a long-lived JWT *refresh* token. It is exchanged at
  ``POST /api/token/refresh/ {"refresh": PAT}`` for a short-lived access token (about 5 minutes), sent as
  ``Bearer <access>``; a new one is fetched shortly before the old one expires;
* a **legacy token**: sent as ``Token <key>`` as it is;
* an access token given as the key (``"token_type": "access"``) is sent as ``Bearer <key>``; it expires
  within minutes, so this is only for tests.

The kind is told apart by the key's shape: a JWT is three base64url segments whose payload is JSON.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import requests

from ..errors import ConfigurationError, LabelStudioUnavailable, UpstreamError
from ..settings import Secret

#: Fetch a new access token when the current one has fewer seconds than this left.
REFRESH_MARGIN_S = 30.0
#: Lifetime assumed for an access token whose payload carries no ``exp``.
DEFAULT_ACCESS_LIFETIME_S = 240.0


def jwt_payload(token: str) -> dict | None:
    """The decoded (unverified) payload of a JWT, or None if ``token`` is not JWT-shaped."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


class LabelStudioAuth:
    """Thread-safe source of the ``Authorization`` header value for Label Studio requests."""

    def __init__(self, base_url: str | None, api_key: Secret | None, timeout: float = 10.0) -> None:
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = timeout
        self._lock = threading.Lock()
        self._access: str | None = None
        self._expires_at = 0.0
        payload = jwt_payload(api_key.reveal()) if api_key is not None else None
        #: A JWT key: a personal access token (refresh token), or, if its payload says so, an access token
        #: that is sent as it is (it cannot be refreshed).
        self.is_personal_access_token = payload is not None and payload.get("token_type") != "access"
        self._is_access_token = payload is not None and not self.is_personal_access_token

    @property
    def configured(self) -> bool:
        return self._api_key is not None

    def header(self) -> str:
        """``Bearer <access token>`` for a PAT (refreshed when needed) or ``Token <key>`` for a legacy key.

        Raises:
            ConfigurationError: no API key is configured.
            LabelStudioUnavailable: Label Studio could not be reached for the token exchange, or answered
                it with 429 or a server error (a job retries later).
            UpstreamError: Label Studio refused the token exchange (a key it does not accept).
        """
        if self._api_key is None:
            raise ConfigurationError(
                "LABEL_STUDIO_API_KEY is not set; the backend needs it to download task images from Label Studio"
            )
        if self._is_access_token:
            return f"Bearer {self._api_key.reveal()}"
        if not self.is_personal_access_token:
            return f"Token {self._api_key.reveal()}"
        with self._lock:
            if self._access is None or time.time() > self._expires_at - REFRESH_MARGIN_S:
                self._refresh()
            return f"Bearer {self._access}"

    def invalidate(self) -> None:
        """Forget the current access token (after Label Studio answered 401 to it)."""
        with self._lock:
            self._access = None

    def _refresh(self) -> None:
        if self._base_url is None:
            raise ConfigurationError(
                "LABEL_STUDIO_URL is not set; it is needed to exchange the personal access token"
            )
        url = f"{self._base_url}/api/token/refresh/"
        try:
            response = requests.post(url, json={"refresh": self._api_key.reveal()}, timeout=self._timeout)
        except requests.RequestException as exc:
            raise LabelStudioUnavailable(
                f"Label Studio at {self._base_url} could not be reached to exchange the access token "
                f"({type(exc).__name__})"
            ) from None
        if response.status_code >= 500 or response.status_code == 429:
            raise LabelStudioUnavailable(
                f"Label Studio answered {response.status_code} to the token exchange at {url}"
            )
        if response.status_code != 200:
            raise UpstreamError(
                f"Label Studio answered {response.status_code} to the token exchange at {url}; check that "
                "LABEL_STUDIO_API_KEY is a valid personal access token of this Label Studio"
            )
        try:
            access = response.json()["access"]
        except (ValueError, KeyError, TypeError):
            raise UpstreamError(f"Label Studio's answer at {url} holds no access token") from None
        payload = jwt_payload(access) or {}
        exp = payload.get("exp")
        now = time.time()
        self._access = access
        self._expires_at = float(exp) if isinstance(exp, (int, float)) else now + DEFAULT_ACCESS_LIFETIME_S
