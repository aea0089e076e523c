"""The backend's named errors, each carrying the HTTP status it is answered with.

Bad input raises one of these with a message written for the person who sent the request (a Label Studio
admin reading the backend's answer or logs, or an API user). The web layer turns them into
``{"error": message}`` with :attr:`BackendError.status`; nothing else in the backend builds error responses.
Messages never contain secrets (tokens, passwords) or tracebacks.
"""


class BackendError(Exception):
    """Base class; ``status`` is the HTTP status code of the answer."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequestError(BackendError):
    """Malformed request: JSON, context, prompts, label, label config or image content."""

    status = 400


class UnauthorizedError(BackendError):
    """Basic auth is configured and the request did not carry the right credentials."""

    status = 401


class ForbiddenURLError(BackendError):
    """The image URL points to a host the SSRF guard refuses (not Label Studio, not allowed, or private)."""

    status = 403


class PayloadTooLargeError(BackendError):
    """The request body or the image is larger than the configured byte or pixel limit."""

    status = 413


class UpstreamError(BackendError):
    """Label Studio or an image host answered with an error, or could not be reached."""

    status = 502


class ConfigurationError(BackendError):
    """The backend itself is misconfigured (no checkpoint, bad checkpoint, missing Label Studio URL)."""

    status = 500
