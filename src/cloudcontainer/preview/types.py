"""What the preview engine and the service that drives it exchange.

The engine (`proxy.py`) knows nothing of containers, tokens or tunnels: the service hands it a
`Gate` that decides per request and a `Dialer` that reaches the upstream dev server.

Errors: `UpstreamUnavailable` is the one exception a dialer raises (any `OSError` counts the same).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Dialer = Callable[
    [Callable[[], asyncio.Protocol]],
    Awaitable[tuple[asyncio.BaseTransport, asyncio.Protocol]],
]


class UpstreamUnavailable(Exception):
    """Nothing listens upstream, or the container cannot be reached; `str()` is a human reason."""


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    """What the gate sees, once per request (every keep-alive turn)."""

    method: str
    target: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    client_ip: str
    websocket: bool
    document: bool

    def header(self, name: str) -> str | None:
        """The first value of header `name` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the request upstream, with these changes."""

    target: str | None = None
    response_headers: tuple[tuple[str, str], ...] = ()
    inject: bytes | None = None
    coep: str | None = "credentialless"
    cors_origins: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer without reaching upstream (401 page, redirect, 429, a script)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


Gate = Callable[[ProxyRequest], Awaitable[Forward | Reply]]


@dataclass(frozen=True, slots=True)
class ProxyLimits:
    """Bounds per client connection; seconds for the timeouts."""

    max_head_bytes: int = 65536
    max_headers: int = 128
    head_timeout: float = 15.0
    idle_timeout: float = 120.0
    body_idle_timeout: float = 60.0
    # Next compiles a page for long before answering.
    upstream_head_timeout: float = 300.0
    # No timeout once a WebSocket is upgraded: Vite pings every 30 s and reloads on a drop.
