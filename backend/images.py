"""Fetch a task's image safely and decode it to the pixels Label Studio shows.

Where an image comes from (the raw URI in ``task["data"][<image key>]``, labelstudio-protocol.md §4.4):

* ``/data/upload/…``, ``/data/local-files/?d=…`` and ``/storage-data/…``: relative to Label Studio, fetched
  from ``LABEL_STUDIO_URL`` with the configured key. Only these paths and the presign endpoint are fetched
  with the key (also as absolute URLs); any other Label Studio path (``/api/…``) is refused (403), unless
  Label Studio itself redirected there;
* ``s3://``, ``gs://``, ``azure-blob://``, ``azure-spi://``: through Label Studio's presign endpoint
  ``/tasks/<task id>/presign/?fileuri=<urlsafe base64 of the URI>``, which redirects to a signed URL or
  proxies the bytes (so the task id is needed);
* ``http(s)://…``: fetched directly, with the key only when the host is Label Studio's.

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

import base64
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
    ConfigurationError,
    ForbiddenURLError,
    PayloadTooLargeError,
    UpstreamError,
)
from .ls_auth import LabelStudioAuth
from .settings import Settings

logger = logging.getLogger(__name__)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
_CONNECT_TIMEOUT_S = 5.0
_DEADLINE_FACTOR = 2  # a whole download may take this many times the fetch timeout
_LABEL_STUDIO_IMAGE_PATH = re.compile(
    r"/(?:data/upload/|data/local-files/|storage-data/|tasks/\d+/presign/\Z)"
)
_IMMUTABLE_UPLOAD = re.compile(r"/data/upload/\d+/[^/?#\\\s]+")
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

    def __init__(self, settings: Settings, auth: LabelStudioAuth) -> None:
        self._settings = settings
        self._auth = auth
        self.policy = HostPolicy(settings.label_studio_url, settings.allowed_hosts)
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy or .netrc credentials from the environment
        adapter = _GuardedAdapter(self.policy.check_address)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["User-Agent"] = "litesam-backend"

    def source_url(self, uri: object, task_id: object = None) -> str:
        """The absolute URL to GET for a task's image URI (see the module docstring).

        Raises:
            BadRequestError: not a string, an unsupported scheme, or a cloud URI without a task id.
            ConfigurationError: a Label Studio URI while LABEL_STUDIO_URL is not set.
        """
        if not isinstance(uri, str) or not uri.strip():
            raise BadRequestError("the task's image field must be a non-empty URL string")
        uri = uri.strip()
        scheme = urllib.parse.urlsplit(uri).scheme.lower()
        if uri.startswith("/"):
            return self._label_studio_url(uri) + uri
        if scheme in CLOUD_SCHEMES:
            if not isinstance(task_id, int) or isinstance(task_id, bool):
                raise BadRequestError(f"the cloud storage URI {scheme}://… needs the task id to be presigned")
            encoded = base64.urlsafe_b64encode(uri.encode()).decode()
            return f"{self._label_studio_url(uri)}/tasks/{task_id}/presign/?fileuri={encoded}"
        if scheme in ("http", "https"):
            return uri
        raise BadRequestError(
            f"unsupported image URL {_display(uri)}: expected /data/upload/…, /data/local-files/?d=…, "
            f"a cloud storage URI ({', '.join(s + '://' for s in CLOUD_SCHEMES)}) or an http(s) URL"
        )

    def immutable_source(self, uri: object) -> str | None:
        """A stable name for an image that never changes behind its URI, else None.

        Label Studio uploads (``/data/upload/<project>/<random prefix>-<name>``) are never rewritten, so a
        cache may map them to the sha256 of their bytes and skip the download. Local files, cloud objects and
        plain URLs can change in place and are always downloaded. Only the exact form
        ``/data/upload/<digits>/<name>`` counts (no query string, no ``..`` or ``%2e``): anything else could
        name another file under the same alias.
        """
        if (
            isinstance(uri, str)
            and _IMMUTABLE_UPLOAD.fullmatch(uri)
            and ".." not in uri
            and "%2e" not in uri.lower()
            and self._settings.label_studio_url
        ):
            return self._settings.label_studio_url + uri
        return None

    def fetch(self, uri: object, task_id: object = None) -> FetchedImage:
        """Download the image of a task field, following the rules of the module docstring.

        Raises:
            BadRequestError, ForbiddenURLError, PayloadTooLargeError, UpstreamError, ConfigurationError.
        """
        url = self.source_url(uri, task_id)
        deadline = time.monotonic() + _DEADLINE_FACTOR * self._settings.fetch_timeout
        redirected_by_label_studio = False
        retried_auth = False
        hops = 0
        while True:
            url = self.policy.check_url(url, redirected_by_label_studio)
            to_label_studio = self.policy.is_label_studio(url)
            if to_label_studio and not redirected_by_label_studio:
                self._check_label_studio_path(url)
            headers = (
                {"Authorization": self._auth.header()} if to_label_studio and self._auth.configured else {}
            )
            request = self._session.prepare_request(requests.Request("GET", url, headers=headers))
            if request.url != url:  # requests must send the very URL the policy checked
                raise ForbiddenURLError(f"refusing to fetch {_display(url)}: its URL is not stable")
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
                    f"could not download the image {_display(url)}: {type(exc).__name__}"
                ) from None
            with response:
                if response.is_redirect and "Location" in response.headers:
                    hops += 1
                    if hops > MAX_REDIRECTS:
                        raise UpstreamError(f"too many redirects while downloading {_display(url)}")
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

    def _remaining(self, deadline: float, url: str) -> float:
        """Seconds left before ``deadline``.

        Raises:
            UpstreamError: none left (per-read timeouts alone let a host that trickles bytes hold a thread).
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            total = _DEADLINE_FACTOR * self._settings.fetch_timeout
            raise UpstreamError(
                f"the download of {_display(url)} took longer than {total:g} s "
                "(twice LITESAM_FETCH_TIMEOUT); the image host is too slow"
            )
        return remaining

    def _read_limited(self, response: requests.Response, url: str, deadline: float) -> bytes:
        limit = self._settings.max_image_bytes
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(
                f"the image {_display(url)} has {int(declared)} bytes; the limit is {limit} (LITESAM_MAX_IMAGE_BYTES)"
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
                        f"the image {_display(url)} is larger than {limit} bytes (LITESAM_MAX_IMAGE_BYTES)"
                    )
        except (requests.RequestException, Urllib3HTTPError, OSError) as exc:
            raise UpstreamError(f"the download of {_display(url)} broke off: {type(exc).__name__}") from None
        return bytes(buffer)

    def _check_label_studio_path(self, url: str) -> None:
        """Refuse a Label Studio URL (fetched with the key) outside the paths images live under.

        Raises:
            ForbiddenURLError: not under /data/upload/, /data/local-files/, /storage-data/ or
                /tasks/<id>/presign/ (after percent-decoding), or with a ``..`` segment or a backslash.
        """
        base = (parse_url(self._settings.label_studio_url or "").path or "").rstrip("/")
        path = urllib.parse.unquote(parse_url(url).path or "/")
        relative = path[len(base) :] if path.startswith(base + "/") else ""
        if (
            not _LABEL_STUDIO_IMAGE_PATH.match(relative)
            or ".." in relative.split("/")
            or "\\" in relative
        ):
            raise ForbiddenURLError(
                f"refusing to fetch {_display(url)} with the Label Studio key: images are read only from "
                "/data/upload/…, /data/local-files/?d=…, /storage-data/… and /tasks/<id>/presign/"
            )

    def _label_studio_url(self, uri: str) -> str:
        if self._settings.label_studio_url is None:
            raise ConfigurationError(
                f"the image {_display(uri)} is stored in Label Studio, but LABEL_STUDIO_URL is not set"
            )
        return self._settings.label_studio_url


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
        raise ForbiddenURLError(f"refusing to fetch {_display(url)}: it is not a valid http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.host or parts.auth:
        raise ForbiddenURLError(f"refusing to fetch {_display(url)}: only http(s) URLs are fetched")
    return target


def _origin(url: str) -> tuple[str, str, int]:
    """Scheme, host and port that requests connects to for ``url`` (raises ForbiddenURLError)."""
    parts: Url = parse_url(_request_url(url))
    scheme = parts.scheme or ""
    return scheme, (parts.host or "").lower().strip("[]"), parts.port or (443 if scheme == "https" else 80)


def _display(url: str) -> str:
    """A URL for messages: no query string or credentials (presigned URLs carry signatures there)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme:
        return url.split("?", 1)[0][:200]
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))[:200]


def _status_message(status: int, url: str, to_label_studio: bool) -> str:
    where = "Label Studio" if to_label_studio else "the image host"
    hint = ""
    if to_label_studio and status in (401, 403):
        hint = "; check LABEL_STUDIO_API_KEY (a personal access token, or a legacy token with legacy tokens enabled)"
    elif to_label_studio and status == 404:
        hint = (
            "; check that the file exists and, for local files, that the project has a matching local storage"
        )
    return f"{where} answered {status} for the image {_display(url)}{hint}"


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
