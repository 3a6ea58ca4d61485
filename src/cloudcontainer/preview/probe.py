"""Whether a port answers HTTP (`server-ready`), and what it speaks.

One `HEAD /` through the agent's tunnel (the service's dial): an HTTP status line means
`http`, except `426 Upgrade Required`, which is how WebSocket-only servers (the `ws` package)
answer plain requests: `websocket`. Bytes that are not HTTP, or silence past ANSWER_SECONDS,
mean another TCP protocol: `tcp`. Refused means not yet: None (the caller tries again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from cloudcontainer.agentlink.errors import AgentOpError, AgentUnavailable

Dial = Callable[[Callable[[], asyncio.Protocol]], Awaitable[tuple[Any, asyncio.Protocol]]]

__all__ = ["probe_protocol"]

# A dev server compiles the page on its first request (Next.js: seconds).
ANSWER_SECONDS = 30.0


class _FirstBytes(asyncio.Protocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data
        if b"\r\n" in self.data or len(self.data) >= 64:
            self._done()

    def eof_received(self) -> bool:
        self._done()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()

    def _done(self) -> None:
        if not self.answer.done():
            self.answer.set_result(self.data)


async def probe_protocol(dial: Dial, port: int) -> str | None:
    """Probe `port` over a tunnel `dial(protocol_factory)` opens (as `open_tunnel` does)."""
    try:
        transport, protocol = await dial(_FirstBytes)
    except (AgentOpError, AgentUnavailable):
        return None
    assert isinstance(protocol, _FirstBytes)
    request = f"HEAD / HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n"
    transport.write(f"{request}User-Agent: cloudcontainer-probe\r\n\r\n".encode())
    try:
        first = await asyncio.wait_for(protocol.answer, ANSWER_SECONDS)
    except TimeoutError:
        return "tcp"
    finally:
        transport.abort()
    if not first.startswith(b"HTTP/"):
        return "tcp" if first else None
    status = first.split(b" ", 2)[1:2]
    return "websocket" if status == [b"426"] else "http"
