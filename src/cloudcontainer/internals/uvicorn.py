"""uvicorn's protocol classes, subclassed so the gateway's connections send less and let go
of clients that never read. Pass them as `uvicorn.Config(http=..., ws=...)`.

Private names used (verified on uvicorn 0.55.0, `VERIFIED_VERSIONS`):

- `uvicorn.protocols.http.httptools_impl.HttpToolsProtocol.connection_made(transport)`: every
  later write of the connection goes through the transport passed here.
- `uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol`:
  `run_asgi()`, a coroutine that returns once the application is done with the connection;
  `keepalive_timeout()`, called when a keepalive ping went unanswered; and the attributes
  `loop`, `transport` and `disconnected`.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from cloudcontainer.coalesce import CoalescingTransport

__all__ = [
    "ABORT_AFTER_SECONDS",
    "VERIFIED_VERSIONS",
    "CoalescingHttpProtocol",
    "DroppingWebSocketProtocol",
]

VERIFIED_VERSIONS = frozenset({"0.55.0"})
ABORT_AFTER_SECONDS = 5.0


class CoalescingHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a CoalescingTransport: a response's head
    and body leave in one send."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport))


class DroppingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, made to let go of clients that do not read (issue 9).

    Once the application is done with a connection (it closed it, or gave up on a client that
    stopped reading) uvicorn closes the transport gracefully: asyncio then keeps the socket
    until its write buffer drains, and a peer that never reads never drains it, so the socket
    and its buffer stay for ever. This aborts such a transport `ABORT_AFTER_SECONDS` later, and
    after a keepalive ping that went unanswered.
    """

    async def run_asgi(self) -> None:
        await super().run_asgi()
        self._abort_later()

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self._abort_later()

    def _abort_later(self) -> None:
        self.loop.call_later(ABORT_AFTER_SECONDS, self._abort_if_stuck)

    def _abort_if_stuck(self) -> None:
        if not self.disconnected and self.transport.get_write_buffer_size() > 0:
            self.transport.abort()
