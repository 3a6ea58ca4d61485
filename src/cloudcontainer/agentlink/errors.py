"""Errors from talking to an agent, mapped into the service's error tree."""

from __future__ import annotations

from cloudcontainer.errors import CloudContainerError, Unavailable

__all__ = ["AgentOpError", "AgentUnavailable"]


class AgentUnavailable(Unavailable):
    """The sandbox's agent cannot be reached (starting, stopped, crashed, or the link broke)."""

    default_code = "agent_unavailable"


class AgentOpError(CloudContainerError):
    """The agent refused or failed an operation; `errno` is its errno-style code (ENOENT...)."""

    status_code = 400
    default_code = "agent_error"

    def __init__(self, errno: str, message: str) -> None:
        super().__init__(message, code=errno.lower())
        self.errno = errno
