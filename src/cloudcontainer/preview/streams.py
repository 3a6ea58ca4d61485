"""The two halves a client connection is made of: its requests as parsed, and its upstream."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

from cloudcontainer.preview import headers as h

_DOCUMENT_DESTS = frozenset({"document", "iframe", "frame"})


class UpstreamOwner(Protocol):
    """What an upstream connection reports to the client connection that owns it."""

    def upstream_data(self, upstream: UpstreamProtocol, data: bytes) -> None: ...
    def upstream_lost(self, upstream: UpstreamProtocol) -> None: ...
    def pause_reading(self, reason: str) -> None: ...
    def resume_reading(self, reason: str) -> None: ...


class IncomingRequest:
    """A parsed request head, and its body while it arrives."""

    def __init__(self) -> None:
        self.url = bytearray()
        self.headers: h.Headers = []
        self.head_bytes = 0
        self.method = ""
        self.head_done = False
        self.partial = 0  # bytes received while the head is incomplete
        self.http10 = False
        self.keep_alive = False
        self.upgrade = False
        self.chunked = False
        self.complete = False
        self.held: deque[bytes] = deque()
        self.held_bytes = 0
        self.early = b""  # bytes after an upgrade request's head
        self.sink: Callable[[bytes], None] | None = None
        self.discard = False

    def body(self, data: bytes) -> None:
        framed = b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data
        self._out(framed)

    def end(self) -> None:
        self.complete = True
        if self.chunked:
            self._out(b"0\r\n\r\n")

    def _out(self, data: bytes) -> None:
        if self.discard:
            return
        if self.sink is not None:
            self.sink(data)
        else:
            self.held.append(data)
            self.held_bytes += len(data)

    def drop_body(self) -> None:
        """Discard the body, what is held and what is still to come."""
        self.discard = True
        self.held.clear()
        self.held_bytes = 0

    def replayable(self) -> bool:
        """Whether sending this request twice is harmless: idempotent, bodiless, whole."""
        return (
            self.method in ("GET", "HEAD", "OPTIONS")
            and self.complete
            and not self.chunked
            and h.get(self.headers, "content-length") in (None, "0")
            and not self.upgrade
        )

    def attach(self, sink: Callable[[bytes], None]) -> None:
        """Send what is held to `sink`, and all that follows."""
        self.sink = sink
        while self.held:
            sink(self.held.popleft())
        self.held_bytes = 0


class Refusal:
    """A request the parser refused: answered in its turn, then the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


class UpstreamProtocol(asyncio.Protocol):
    """The upstream side of one client connection."""

    def __init__(self, conn: UpstreamOwner) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.requests = 0  # sent on this connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.conn.upstream_data(self, data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.upstream_lost(self)

    def pause_writing(self) -> None:
        self.conn.pause_reading("upstream-full")

    def resume_writing(self) -> None:
        self.conn.resume_reading("upstream-full")

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()

    def usable(self) -> bool:
        return self.transport is not None and not self.lost and not self.transport.is_closing()

    def close(self, *, abort: bool = False) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


def is_document(req: IncomingRequest) -> bool:
    """A navigation: Sec-Fetch-Dest document|iframe|frame, or a GET accepting text/html."""
    dest = h.get(req.headers, "sec-fetch-dest")
    if dest is not None:
        return dest.lower() in _DOCUMENT_DESTS
    return req.method == "GET" and "text/html" in (h.get(req.headers, "accept") or "")
