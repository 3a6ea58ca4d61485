"""Errors the service reports to its clients.

Every error a client can see is a `CloudContainerError` carrying an HTTP status and a stable
`code`; the API renders it as `{"error": {"code": ..., "message": ...}}`.

    CloudContainerError                500 internal_error
    ├── BadRequest                     400 bad_request
    ├── Unauthorized                   401 unauthorized (invalid_credentials, token_expired, ...)
    ├── Forbidden                      403 forbidden (email_not_verified, ...)
    ├── NotFound                       404 not_found  (also for other users' resources)
    ├── Conflict                       409 conflict
    ├── PreconditionFailed             412 precondition_failed (etag_mismatch)
    ├── PayloadTooLarge                413 payload_too_large
    ├── ValidationFailed               422 validation_error
    ├── TooManyRequests                429 too_many_requests (carries retry_after)
    ├── InsufficientStorage            507 insufficient_storage (no_space, quota_exceeded)
    └── Unavailable                    503 unavailable

Lower layers (SQLAlchemy, SMTP, OS) raise their own exceptions; the boundary that calls them maps
them to one of these with `raise ... from exc`.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "CloudContainerError",
    "Conflict",
    "Forbidden",
    "InsufficientStorage",
    "NotFound",
    "PayloadTooLarge",
    "PreconditionFailed",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
]


class CloudContainerError(Exception):
    """Root of every error a client may see."""

    status_code: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self, message: str, *, code: str | None = None, details: Any | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}


class BadRequest(CloudContainerError):
    status_code = 400
    default_code = "bad_request"


class Unauthorized(CloudContainerError):
    status_code = 401
    default_code = "unauthorized"


class Forbidden(CloudContainerError):
    status_code = 403
    default_code = "forbidden"


class NotFound(CloudContainerError):
    status_code = 404
    default_code = "not_found"


class Conflict(CloudContainerError):
    status_code = 409
    default_code = "conflict"


class PreconditionFailed(CloudContainerError):
    status_code = 412
    default_code = "precondition_failed"


class PayloadTooLarge(CloudContainerError):
    status_code = 413
    default_code = "payload_too_large"


class ValidationFailed(CloudContainerError):
    status_code = 422
    default_code = "validation_error"


class TooManyRequests(CloudContainerError):
    status_code = 429
    default_code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class InsufficientStorage(CloudContainerError):
    status_code = 507
    default_code = "insufficient_storage"


class Unavailable(CloudContainerError):
    status_code = 503
    default_code = "unavailable"
