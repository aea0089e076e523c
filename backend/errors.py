"""The backend's named errors, each carrying the HTTP status it is answered with.

This is the backend's one error vocabulary. Bad input raises one of these with a message written for the
person who sent the request (a Label Studio admin reading the backend's answer or logs, or an API user).
Each process has one boundary that turns them into answers: the HTTP app's error handlers
(:mod:`backend.app`: ``{"error": message}`` with :attr:`BackendError.status`) and, in job workers, the failure
module (:mod:`backend.jobs.failures`: a task's, chunk's or job's recorded reason). Messages never contain
secrets (tokens, passwords) or tracebacks.
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


class UnsupportedMediaTypeError(BackendError):
    """A body that must be JSON came with another content type (``POST /jobs``: no cross-site HTML form posts)."""

    status = 415


class JobNotFoundError(BackendError):
    """No pre-annotation job with this id (never created, or its record expired)."""

    status = 404


class JobBusyError(BackendError):
    """The project's running job does not cover the tasks asked for; they can be queued once it ends."""

    status = 409


class QueueUnavailableError(BackendError):
    """Redis (the job queue) does not answer: jobs can be neither queued nor read."""

    status = 503


class LabelStudioUnavailable(UpstreamError):
    """Label Studio could not be reached or answered with a server error (a job retries the step later)."""


class UpstreamTooLargeError(UpstreamError):
    """Label Studio, or a proxy in front of it, refused a request body as too large (HTTP 413); a job's writer
    sends its predictions in smaller batches instead."""


class TaskInputError(BadRequestError):
    """One task of a pre-annotation job cannot be done because of its own input (no image, unreadable or
    too large image, refused URL); a job records the reason for that task only and goes on."""
