"""Fetch a task's image safely and decode it to the pixels Label Studio shows.

Where an image URI is read from (Label Studio uploads, local files, presigned cloud objects, plain URLs) is
decided by the Label Studio client (:mod:`backend.labelstudio.uris`); this module downloads the URL it gives.

SSRF guard: every decision (host, port, whether the key is sent) is taken on the URL as requests sends it and
urllib3 connects to it; a host part with a backslash, whitespace or user info (``@``), which parsers read
differently, is refused. An absolute URL is fetched only from the Label Studio host or a host of
``LITESAM_ALLOWED_HOSTS``;
a redirect answered by Label Studio (presigned cloud URLs) may lead to any public host. Every host other than
Label Studio's must resolve to public addresses only: all its addresses are checked before the request, and
the address actually connected to is checked again (no DNS-rebinding window). Redirects are followed by hand
(at most :data:`MAX_REDIRECTS`), each hop checked, and the key is never sent to another host.

Limits: a whole download (redirects included) must end within twice ``fetch_timeout`` (502), whatever the
pace of the host; the body is streamed and refused past ``max_image_bytes`` (413); the pixel count is read
from the header and refused past ``max_image_pixels`` before any pixel is decoded (413, decompression bombs).
Decoding applies the EXIF orientation, as browsers do, so masks have the size Label Studio draws.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import logging
import re
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import requests
from PIL import Image, ImageOps, UnidentifiedImageError
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.util import Url, parse_url

from .errors import (
    BadRequestError,
    ForbiddenURLError,
    PayloadTooLargeError,
    UpstreamError,
)
from .labelstudio.client import LabelStudioClient
from .labelstudio.uris import display_url
from .settings import Settings

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
_CONNECT_TIMEOUT_S = 5.0
_DEADLINE_FACTOR = 2  # a whole download may take this many times the fetch timeout
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # local-use NAT64 (RFC 8215): never public
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_RAW_AUTHORITY = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#]*)")


@dataclass(frozen=True)
class FetchedImage:
    """The raw bytes of an image and their sha256 (hex), the key of its cached embedding."""

    data: bytes
    sha256: str


class HostPolicy:
    """Which hosts and addresses the fetcher may talk to (see the module docstring)."""

    def __init__(self, label_studio_url: str | None, allowed_hosts: tuple[str, ...]) -> None:
        self._label_studio = _origin(label_studio_url) if label_studio_url else None
        self._allowed = tuple(h.lower() for h in allowed_hosts)

    def is_label_studio(self, url: str) -> bool:
        """Whether ``url``, as requests sends it, goes to Label Studio's scheme, host and port."""
        if self._label_studio is None:
            return False
        try:
            return _origin(url) == self._label_studio
        except ForbiddenURLError:
            return False

    def is_label_studio_host(self, host: str, port: int) -> bool:
        return self._label_studio is not None and (host.lower().strip("[]"), port) == self._label_studio[1:]

    def is_allowed_host(self, host: str) -> bool:
        host = host.lower()
        for pattern in self._allowed:
            if pattern == "*" or pattern == host:
                return True
            if pattern.startswith("*.") and host.endswith(pattern[1:]):
                return True
        return False

    def check_url(self, url: str, redirected_by_label_studio: bool) -> str:
        """Refuse ``url`` unless Label Studio's, allowed, or a redirect target given by Label Studio.

        Every decision is taken on the URL as requests sends it (and urllib3 connects to it), never on
        another parser's reading of the raw string.

        Returns:
            The URL as requests sends it; fetch exactly this one.

        Raises:
            ForbiddenURLError: not an http(s) URL, a host part with a backslash, whitespace or user info,
                a host that is not allowed, or one that resolves to a non-public address.
        """
        target = _request_url(url)
        parts = parse_url(target)
        host = (parts.host or "").strip("[]")
        if self.is_label_studio(target):
            return target
        if not (redirected_by_label_studio or self.is_allowed_host(host)):
            raise ForbiddenURLError(
                f"refusing to fetch an image from {host}: it is neither Label Studio's host (LABEL_STUDIO_URL) "
                "nor in LITESAM_ALLOWED_HOSTS"
            )
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise UpstreamError(f"cannot resolve the image host {host}") from None
        for info in infos:
            self.check_address(host, port, info[4][0])
        return target

    def check_address(self, host: str, port: int, ip: str) -> None:
        """Refuse a connection to ``host:port`` at a private, loopback, link-local or otherwise non-public ``ip``
        (Label Studio's own host and port excepted)."""
        if self.is_label_studio_host(host, port):
            return
        address = ipaddress.ip_address(ip.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for candidate in (address, *_embedded_ipv4(address)):
            if not candidate.is_global or candidate.is_multicast or candidate in _NAT64_LOCAL:
                shown = address if candidate == address else f"{address} ({candidate})"
                raise ForbiddenURLError(
                    f"refusing to fetch an image from {host}: it resolves to the non-public address {shown}"
                )


def _embedded_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches through translation or tunnelling.

    Python 3.11 counts 64:ff9b::7f00:1 (NAT64), 2002:7f00:1:: (6to4) and ::7f00:1 (IPv4-compatible) as
    global, although each leads to 127.0.0.1.
    """
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    embedded = [v4 for v4 in (address.ipv4_mapped, address.sixtofour) if v4 is not None]
    if address in _NAT64 or address in _IPV4_COMPATIBLE:
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return embedded


class ImageFetcher:
    """Downloads task images (thread-safe; one per process)."""

    def __init__(self, settings: Settings, label_studio: LabelStudioClient) -> None:
        self._settings = settings
        self._label_studio = label_studio
        self._auth = label_studio.auth
        self.policy = HostPolicy(settings.label_studio_url, settings.allowed_hosts)
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy or .netrc credentials from the environment
        adapter = _GuardedAdapter(self.policy.check_address)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["User-Agent"] = "litesam-backend"

    def fetch(self, uri: object, task_id: object = None) -> FetchedImage:
        """Download the image of a task field, following the rules of the module docstring.

        Raises:
            BadRequestError, ForbiddenURLError, PayloadTooLargeError, UpstreamError, ConfigurationError.
        """
        url = self._label_studio.image_url(uri, task_id)
        deadline = time.monotonic() + _DEADLINE_FACTOR * self._settings.fetch_timeout
        redirected_by_label_studio = False
        retried_auth = False
        hops = 0
        while True:
            url = self.policy.check_url(url, redirected_by_label_studio)
            to_label_studio = self.policy.is_label_studio(url)
            if to_label_studio and not redirected_by_label_studio:
                self._label_studio.check_image_path(url)
            headers = (
                {"Authorization": self._auth.header()} if to_label_studio and self._auth.configured else {}
            )
            request = self._session.prepare_request(requests.Request("GET", url, headers=headers))
            if request.url != url:  # requests must send the very URL the policy checked
                raise ForbiddenURLError(f"refusing to fetch {display_url(url)}: its URL is not stable")
            remaining = self._remaining(deadline, url)
            try:
                response = self._session.send(
                    request,
                    stream=True,
                    allow_redirects=False,
                    timeout=(
                        min(_CONNECT_TIMEOUT_S, self._settings.fetch_timeout, remaining),
                        min(self._settings.fetch_timeout, remaining),
                    ),
                )
            except requests.RequestException as exc:
                raise UpstreamError(
                    f"could not download the image {display_url(url)}: {type(exc).__name__}"
                ) from None
            with response:
                if response.is_redirect and "Location" in response.headers:
                    hops += 1
                    if hops > MAX_REDIRECTS:
                        raise UpstreamError(f"too many redirects while downloading {display_url(url)}")
                    redirected_by_label_studio = to_label_studio
                    url = urllib.parse.urljoin(url, response.headers["Location"])
                    continue
                if (
                    response.status_code == 401
                    and to_label_studio
                    and self._auth.is_personal_access_token
                    and not retried_auth
                ):
                    self._auth.invalidate()
                    retried_auth = True
                    continue
                if response.status_code != 200:
                    raise UpstreamError(_status_message(response.status_code, url, to_label_studio))
                data = self._read_limited(response, url, deadline)
            return FetchedImage(data=data, sha256=hashlib.sha256(data).hexdigest())

    def check(self, uri: object, task_id: object = None) -> None:
        """The checks :meth:`fetch` makes before its first request, without sending it: the URI's form, the
        host policy and SSRF guard on its URL (the host's addresses resolved), Label Studio's image paths.
        :meth:`fetch` still checks every redirect and the address it connects to.

        Raises:
            BadRequestError, ForbiddenURLError, UpstreamError (an unresolvable host), ConfigurationError.
        """
        url = self.policy.check_url(self._label_studio.image_url(uri, task_id), False)
        if self.policy.is_label_studio(url):
            self._label_studio.check_image_path(url)

    def _remaining(self, deadline: float, url: str) -> float:
        """Seconds left before ``deadline``.

        Raises:
            UpstreamError: none left (per-read timeouts alone let a host that trickles bytes hold a thread).
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            total = _DEADLINE_FACTOR * self._settings.fetch_timeout
            raise UpstreamError(
                f"the download of {display_url(url)} took longer than {total:g} s "
                "(twice LITESAM_FETCH_TIMEOUT); the image host is too slow"
            )
        return remaining

    def _read_limited(self, response: requests.Response, url: str, deadline: float) -> bytes:
        limit = self._settings.max_image_bytes
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(
                f"the image {display_url(url)} has {int(declared)} bytes; the limit is {limit} (LITESAM_MAX_IMAGE_BYTES)"
            )
        buffer = bytearray()
        try:
            while True:
                self._remaining(deadline, url)
                # read1 returns what has arrived (a full-size read would wait for a whole chunk)
                chunk = response.raw.read1(_CHUNK, decode_content=True)
                if not chunk:
                    break
                buffer.extend(chunk)
                if len(buffer) > limit:
                    raise PayloadTooLargeError(
                        f"the image {display_url(url)} is larger than {limit} bytes (LITESAM_MAX_IMAGE_BYTES)"
                    )
        except (requests.RequestException, Urllib3HTTPError, OSError) as exc:
            raise UpstreamError(
                f"the download of {display_url(url)} broke off: {type(exc).__name__}"
            ) from None
        return bytes(buffer)


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode image bytes to H×W×3 uint8 RGB at the natural, EXIF-transposed size.

    16-bit grayscale keeps its 8 high bits; alpha is dropped; palette and CMYK are converted.

    Raises:
        PayloadTooLargeError: more than ``max_pixels`` pixels (checked before decoding).
        BadRequestError: not an image, or a corrupt or truncated one.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise PayloadTooLargeError(
                    f"the image is {width}×{height} = {width * height} pixels; the limit is {max_pixels} "
                    "(LITESAM_MAX_IMAGE_PIXELS)"
                )
            transposed = ImageOps.exif_transpose(image)
            return _to_rgb(transposed)
    except Image.DecompressionBombError:
        raise PayloadTooLargeError("the image has too many pixels to decode safely") from None
    except UnidentifiedImageError:
        raise BadRequestError("the file is not an image in a format this backend can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadRequestError(f"the image is corrupt or truncated: {exc}") from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image).astype(np.int64)
        gray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def _request_url(url: str) -> str:
    """``url`` as requests sends it (what urllib3 then connects to).

    Parsers disagree on odd host parts (``http://evil.com\\@label-studio/`` is Label Studio's for
    ``urllib.parse`` and evil.com's for urllib3), so a host part with a backslash, whitespace, a control
    character or user info (``@``) is refused outright.

    Raises:
        ForbiddenURLError: such a host part, or not an absolute http(s) URL.
    """
    raw = _RAW_AUTHORITY.match(url)
    if raw and any(c in "\\@" or c.isspace() or not c.isprintable() for c in raw.group(1)):
        raise ForbiddenURLError(
            "refusing to fetch an image URL whose host part contains a backslash, whitespace or user info (@)"
        )
    try:
        target = requests.Request("GET", url).prepare().url
        parts = parse_url(target)
    except (requests.RequestException, ValueError, UnicodeError):
        raise ForbiddenURLError(
            f"refusing to fetch {display_url(url)}: it is not a valid http(s) URL"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.host or parts.auth:
        raise ForbiddenURLError(f"refusing to fetch {display_url(url)}: only http(s) URLs are fetched")
    return target


def _origin(url: str) -> tuple[str, str, int]:
    """Scheme, host and port that requests connects to for ``url`` (raises ForbiddenURLError)."""
    parts: Url = parse_url(_request_url(url))
    scheme = parts.scheme or ""
    return scheme, (parts.host or "").lower().strip("[]"), parts.port or (443 if scheme == "https" else 80)


def _status_message(status: int, url: str, to_label_studio: bool) -> str:
    where = "Label Studio" if to_label_studio else "the image host"
    hint = ""
    if to_label_studio and status in (401, 403):
        hint = "; check LABEL_STUDIO_API_KEY (a personal access token, or a legacy token with legacy tokens enabled)"
    elif to_label_studio and status == 404:
        hint = (
            "; check that the file exists and, for local files, that the project has a matching local storage"
        )
    return f"{where} answered {status} for the image {display_url(url)}{hint}"


class _PeerCheckMixin:
    """Checks the address a new connection actually reached (DNS may change between check and connect)."""

    peer_check: Callable[[str, int, str], None]

    def _new_conn(self):  # noqa: ANN202 (urllib3's signature)
        sock = super()._new_conn()
        try:
            type(self).peer_check(self.host, self.port, sock.getpeername()[0])
        except BaseException:
            sock.close()
            raise
        return sock


class _GuardedAdapter(HTTPAdapter):
    """A requests adapter whose connections refuse addresses the host policy forbids."""

    def __init__(self, peer_check: Callable[[str, int, str], None]) -> None:
        checker = staticmethod(peer_check)
        http_conn = type("GuardedHTTPConnection", (_PeerCheckMixin, HTTPConnection), {"peer_check": checker})
        https_conn = type(
            "GuardedHTTPSConnection", (_PeerCheckMixin, HTTPSConnection), {"peer_check": checker}
        )
        self._pool_classes = {
            "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type(
                "GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}
            ),
        }
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(self._pool_classes)
