"""Writing to WebSocket clients that may stop reading (issue 9).

A client that stops reading must not hold the gateway: each send waits at most the server's
`client_send_timeout_seconds` (uvicorn makes a send wait while the socket's buffer is full), and
what waits to be sent is bounded (`Outbox`). Past either, the client is dropped: a close with
1008 and the reason `client not reading` is attempted (it cannot reach a client that reads
nothing; the transport is then aborted, see internals/uvicorn.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Generic, TypeVar

import structlog
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

__all__ = ["NOT_READING", "ClientNotReading", "Outbox", "drop", "send"]

log = structlog.get_logger(__name__)
T = TypeVar("T")

NOT_READING = "client not reading"
WS_POLICY_VIOLATION = 1008
CLOSE_WAIT_SECONDS = 1.0


class ClientNotReading(Exception):
    """The client took longer than the send timeout to take one message."""


async def send(websocket: WebSocket, message: str | bytes, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            if isinstance(message, bytes):
                await websocket.send_bytes(message)
            else:
                await websocket.send_text(message)
    except TimeoutError:
        raise ClientNotReading from None


async def drop(websocket: WebSocket, why: str = NOT_READING) -> None:
    """Close with 1008 and `why`, if the close can still leave; never waits long."""
    log.info("websocket client dropped", path=websocket.url.path, reason=why)
    with contextlib.suppress(TimeoutError, RuntimeError, WebSocketDisconnect):
        async with asyncio.timeout(CLOSE_WAIT_SECONDS):
            await websocket.close(code=WS_POLICY_VIOLATION, reason=why)


class Outbox(Generic[T]):
    """A bounded queue of what is to be sent; putting into a full one marks it `overflowed`
    (the item is dropped: the client is to be dropped too)."""

    def __init__(self, max_items: int) -> None:
        self._queue: asyncio.Queue[T] = asyncio.Queue(max_items)
        self.overflowed = asyncio.Event()

    def put(self, item: T) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed.set()

    async def get(self) -> T:
        return await self._queue.get()

    def empty(self) -> bool:
        return self._queue.empty()
