"""Errors from talking to an agent, mapped into the service's error tree.

    Unavailable (cloudcontainer.errors)  503
    └── AgentUnavailable                 503 agent_unavailable: starting, stopped, link broke
        └── AgentProtocolError           502 sandbox_protocol_error: it answered garbage
    CloudContainerError
    └── AgentOpError                     400 (errno-derived code): the agent refused an op

AgentProtocolError is an AgentUnavailable so that everything that copes with an agent that
went away (the supervisor's health check, cleanup that suppresses failures) copes with one
that lies: the agent is the tenant's, and may send anything (issue 9).
"""

from __future__ import annotations

from typing import ClassVar

from cloudcontainer.errors import CloudContainerError, Unavailable

__all__ = ["AgentOpError", "AgentProtocolError", "AgentUnavailable"]


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
