"""Where a task's image URI is read from (labelstudio-protocol.md §4.4), given Label Studio's base URL.

* ``/data/upload/…``, ``/data/local-files/?d=…`` and ``/storage-data/…``: relative to Label Studio, fetched
  from ``LABEL_STUDIO_URL`` with the configured key. Only these paths and the presign endpoint are fetched
  with the key (also as absolute URLs): :func:`check_image_path`;
* ``s3://``, ``gs://``, ``azure-blob://``, ``azure-spi://``: through Label Studio's presign endpoint
  ``/tasks/<task id>/presign/?fileuri=<urlsafe base64 of the URI>``, which redirects to a signed URL or
  proxies the bytes (so the task id is needed);
* ``http(s)://…``: fetched directly (with the key only when the host is Label Studio's).
"""

from __future__ import annotations

import base64
import re
import urllib.parse

from urllib3.util import parse_url

from ..errors import BadRequestError, ConfigurationError, ForbiddenURLError

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
_IMAGE_PATH = re.compile(r"/(?:data/upload/|data/local-files/|storage-data/|tasks/\d+/presign/\Z)")
_IMMUTABLE_UPLOAD = re.compile(r"/data/upload/\d+/[^/?#\\\s]+")


def image_url(base_url: str | None, uri: object, task_id: object = None) -> str:
    """The absolute URL to GET for a task's image URI.

    Raises:
        BadRequestError: not a string, an unsupported scheme, or a cloud URI without a task id.
        ConfigurationError: a Label Studio URI while ``base_url`` (LABEL_STUDIO_URL) is not set.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise BadRequestError("the task's image field must be a non-empty URL string")
    uri = uri.strip()
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if uri.startswith("/"):
        return _base(base_url, uri) + uri
    if scheme in CLOUD_SCHEMES:
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            raise BadRequestError(f"the cloud storage URI {scheme}://… needs the task id to be presigned")
        encoded = base64.urlsafe_b64encode(uri.encode()).decode()
        return f"{_base(base_url, uri)}/tasks/{task_id}/presign/?fileuri={encoded}"
    if scheme in ("http", "https"):
        return uri
    raise BadRequestError(
        f"unsupported image URL {display_url(uri)}: expected /data/upload/…, /data/local-files/?d=…, "
        f"a cloud storage URI ({', '.join(s + '://' for s in CLOUD_SCHEMES)}) or an http(s) URL"
    )


def immutable_source(base_url: str | None, uri: object) -> str | None:
    """A stable name for an image that never changes behind its URI, else None.

    Label Studio uploads (``/data/upload/<project>/<random prefix>-<name>``) are never rewritten, so a cache
    may map them to the sha256 of their bytes and skip the download. Local files, cloud objects and plain URLs
    can change in place and are always downloaded. Only the exact form ``/data/upload/<digits>/<name>`` counts
    (no query string, no ``..`` or ``%2e``): anything else could name another file under the same alias.
    """
    if (
        isinstance(uri, str)
        and _IMMUTABLE_UPLOAD.fullmatch(uri)
        and ".." not in uri
        and "%2e" not in uri.lower()
        and base_url
    ):
        return base_url + uri
    return None


def check_image_path(base_url: str | None, url: str) -> None:
    """Refuse a Label Studio URL (fetched with the key) outside the paths images live under.

    Raises:
        ForbiddenURLError: not under /data/upload/, /data/local-files/, /storage-data/ or
            /tasks/<id>/presign/ (after percent-decoding), or with a ``..`` segment or a backslash.
    """
    base = (parse_url(base_url or "").path or "").rstrip("/")
    path = urllib.parse.unquote(parse_url(url).path or "/")
    relative = path[len(base) :] if path.startswith(base + "/") else ""
    if not _IMAGE_PATH.match(relative) or ".." in relative.split("/") or "\\" in relative:
        raise ForbiddenURLError(
            f"refusing to fetch {display_url(url)} with the Label Studio key: images are read only from "
            "/data/upload/…, /data/local-files/?d=…, /storage-data/… and /tasks/<id>/presign/"
        )


def display_url(url: str) -> str:
    """A URL for messages: no query string or credentials (presigned URLs carry signatures there)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme:
        return url.split("?", 1)[0][:200]
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))[:200]


def _base(base_url: str | None, uri: str) -> str:
    if base_url is None:
        raise ConfigurationError(
            f"the image {display_url(uri)} is stored in Label Studio, but LABEL_STUDIO_URL is not set"
        )
    return base_url
