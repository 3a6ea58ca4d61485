"""The preview engine: an HTTP/1.1 + WebSocket reverse proxy on asyncio Protocols.

One client connection owns at most one upstream connection, dialled at its first forwarded
request and reused across keep-alive turns. Every request head is parsed (httptools), so the
header rules of PREVIEWS.md A/B apply on every turn; bodies stream both ways and backpressure
crosses over (a paused writer pauses the other side's reads). A 101 turns the pair into a raw
splice with no timeout.

Files: `connection.py` (one client connection), `streams.py` (its parsed requests and its
upstream), `response.py` (one response's head and framing), `inject.py` (streamed HTML
injection), `headers.py` (the header rules), `pages.py` (what the proxy answers itself).
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import Callable

from cloudcontainer.preview.connection import Connection
from cloudcontainer.preview.types import Dialer, Gate, ProxyLimits

log = logging.getLogger(__name__)


class PreviewListener:
    """One listening port in front of one upstream port."""

    def __init__(
        self,
        *,
        gate: Gate,
        dial: Dialer,
        upstream_port: int,
        ssl: ssl_module.SSLContext | None = None,
        limits: ProxyLimits = ProxyLimits(),
        on_connection: Callable[[int], None] | None = None,
    ) -> None:
        self.gate = gate
        self.dial = dial
        self.upstream_port = upstream_port
        self.limits = limits
        self.scheme = "https" if ssl is not None else "http"
        self._ssl = ssl
        self._on_connection = on_connection
        self._server: asyncio.Server | None = None
        self._port = 0
        self._connections: set[Connection] = set()

    async def start(self, host: str, port: int) -> None:
        """Bind and listen (SO_REUSEADDR); raises OSError when the port is taken."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self), host, port, reuse_address=True, ssl=self._ssl
        )
        self._port = int(self._server.sockets[0].getsockname()[1])

    @property
    def port(self) -> int:
        """The bound port (0 before `start`)."""
        return self._port

    @property
    def connections(self) -> int:
        """Open client connections."""
        return len(self._connections)

    def buffered_bytes(self) -> int:
        """Bytes the proxy holds for all its connections (write buffers and held bodies)."""
        return sum(conn.buffered_bytes() for conn in self._connections)

    async def close(self) -> None:
        """Stop listening and abort every client and upstream connection at once."""
        if self._server is not None:
            self._server.close()
        tasks = [conn.abort() for conn in list(self._connections)]
        await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def opened(self, conn: Connection) -> None:
        self._connections.add(conn)
        self._changed()

    def closed(self, conn: Connection) -> None:
        if conn in self._connections:
            self._connections.discard(conn)
            self._changed()

    def _changed(self) -> None:
        if self._on_connection is not None:
            try:
                self._on_connection(len(self._connections))
            except Exception:
                log.exception("preview on_connection callback failed")
