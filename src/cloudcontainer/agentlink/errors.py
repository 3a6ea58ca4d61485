"""Errors from talking to an agent, mapped into the service's error tree.

    Unavailable (cloudcontainer.errors)  503
    └── AgentUnavailable                 503 agent_unavailable: starting, stopped, link broke
        └── AgentProtocolError           502 sandbox_protocol_error: it answered garbage
    CloudContainerError
    └── AgentOpError                     400 (errno-derived code): the agent refused an op

AgentProtocolError is an AgentUnavailable so that everything that copes with an agent that
went away (the supervisor's health check, cleanup that suppresses failures) copes with one
that lies: the agent is the tenant's, and may send anything (issue 9).

An AgentOpError becomes the API's error for its errno (`agent_errors`, `api_error`) here, the
one place every service maps them: ENOENT is 404 file_not_found wherever it comes from.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from cloudcontainer.agent.protocol import WORKSPACE
from cloudcontainer.errors import (
    BadRequest,
    CloudContainerError,
    Conflict,
    Forbidden,
    InsufficientStorage,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    Unavailable,
)

__all__ = [
    "AgentOpError", "AgentProtocolError", "AgentUnavailable", "ErrorTable", "agent_errors",
    "api_error",
]  # fmt: skip


class AgentUnavailable(Unavailable):
    """The sandbox's agent cannot be reached (starting, stopped, crashed, or the link broke)."""

    default_code = "agent_unavailable"


class AgentProtocolError(AgentUnavailable):
    """The agent answered something the protocol does not allow (wrong shape or types, an
    oversized or undecodable value): the sandbox's agent misbehaves, this gateway is fine."""

    status_code: ClassVar[int] = 502
    default_code = "sandbox_protocol_error"


class AgentOpError(CloudContainerError):
    """The agent refused or failed an operation; `errno` is its errno-style code (ENOENT...)."""

    status_code = 400
    default_code = "agent_error"

    def __init__(self, errno: str, message: str) -> None:
        super().__init__(message, code=errno.lower())
        self.errno = errno


# errno -> (the API error, its code)
ErrorTable = dict[str, tuple[type[CloudContainerError], str]]

_ERRORS: ErrorTable = {
    "ENOENT": (NotFound, "file_not_found"),
    "EISDIR": (Conflict, "is_a_directory"),
    "ENOTDIR": (Conflict, "not_a_directory"),
    "EEXIST": (Conflict, "already_exists"),
    "ENOTEMPTY": (Conflict, "directory_not_empty"),
    "ETAGMISMATCH": (PreconditionFailed, "etag_mismatch"),
    "EINVAL": (BadRequest, "invalid_request"),
    "ENAMETOOLONG": (BadRequest, "path_too_long"),
    "EPERM": (Forbidden, "operation_not_permitted"),
    "EACCES": (Forbidden, "permission_denied"),
    "ENOSPC": (InsufficientStorage, "no_space"),
    "EXDEV": (Conflict, "cross_device"),
    "EDQUOT": (InsufficientStorage, "quota_exceeded"),
    "EFBIG": (PayloadTooLarge, "too_large"),
}


def api_error(errno: str, message: str) -> CloudContainerError:
    """The API error for an agent's errno code (its Node-style message is kept, with paths
    workdir-rooted)."""
    error_class, code = _ERRORS.get(errno, (BadRequest, errno.lower()))
    return error_class(message.replace(WORKSPACE, "") or errno, code=code)


@contextmanager
def agent_errors(own: ErrorTable | None = None, *, failed: str | None = None) -> Iterator[None]:
    """Map the agent's refusals to API errors. A feature's `own` codes (search's EREGEX, an
    archive's EUNSAFE) come first, with the agent's message as it is; with `failed` (what the
    caller was doing: "snapshot"), any refusal is a `Conflict` `<failed>_failed` instead, for
    work that touches many files on the client's behalf and fails as a whole."""
    try:
        yield
    except AgentOpError as exc:
        if failed is not None:
            raise Conflict(
                f"The {failed} failed in the sandbox: {exc.message}", code=f"{failed}_failed"
            ) from exc
        if own is not None and exc.errno in own:
            error_class, code = own[exc.errno]
            raise error_class(exc.message, code=code) from exc
        raise api_error(exc.errno, exc.message) from exc
