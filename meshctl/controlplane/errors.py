"""Errors of the control plane's store and API, each carrying the HTTP status and reason it maps to.

    StoreError            base; ``reason`` is the word the HTTP API puts in ``{"reason": ...}``
    ├── NotFound          404  the object does not exist
    ├── Conflict          409  it already exists, or the caller's resourceVersion is stale
    ├── Invalid           422  the document failed validation (wraps the ValidationError)
    ├── BadRequest        400  malformed request (not text in its charset, not JSON/YAML,
    │                          nested too deeply, kind not matching the path)
    └── Unauthorized      401  a write without the right bearer token
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the store and the HTTP API raise on purpose."""

    status = 500
    reason = "InternalError"


class NotFound(StoreError):
    """The named object does not exist."""

    status = 404
    reason = "NotFound"


class Conflict(StoreError):
    """The object already exists, or the expected resourceVersion is not the current one."""

    status = 409
    reason = "Conflict"


class Invalid(StoreError):
    """A document failed validation; ``str()`` is the precise ``FILE doc N: field: message``."""

    status = 422
    reason = "Invalid"

    def __init__(self, message: str, cause: Exception | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class BadRequest(StoreError):
    """The request cannot be understood (undecodable body, kind or name not matching the path)."""

    status = 400
    reason = "BadRequest"


class Unauthorized(StoreError):
    """A write request without a valid ``Authorization: Bearer`` token."""

    status = 401
    reason = "Unauthorized"
