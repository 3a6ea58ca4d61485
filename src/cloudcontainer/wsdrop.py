"""uvicorn's WebSocket protocol, made to let go of clients that do not read (issue 9).

Once the application is done with a connection (it closed it, or gave up on a client that stopped
reading) uvicorn closes the transport gracefully: asyncio then keeps the socket until its write
buffer drains, and a peer that never reads never drains it, so the socket and its buffer stay
for ever. `DroppingWebSocketProtocol` aborts such a transport `ABORT_AFTER_SECONDS` later, and
after a keepalive ping that went unanswered. Use it as `uvicorn.Config(ws=...)`.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["ABORT_AFTER_SECONDS", "DroppingWebSocketProtocol"]

ABORT_AFTER_SECONDS = 5.0


class DroppingWebSocketProtocol(WebSocketsSansIOProtocol):
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
