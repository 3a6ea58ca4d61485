"""websockets' client connection, taught to hand each message over as its frames are parsed.

Private names used (verified on websockets 15.0.1, `VERIFIED_VERSIONS`):

- `websockets.asyncio.client.ClientConnection.process_event(event)`: called, in the protocol's
  `data_received`, for each event the sans-I/O protocol parsed; a data frame is a
  `websockets.frames.Frame` (`opcode`, `data`, `fin`), and `response` is set once the opening
  handshake is done. Frames not handed to the superclass never reach its message assembler.
- `ClientConnection.connection_made(transport)`: every later write of the connection goes
  through the transport passed here; `transport` is kept as an attribute.
- `websockets.protocol.Event`, the type of what `process_event` receives.
- `ClientConnection.protocol` (the sans-I/O `websockets.protocol.Protocol`: `state`,
  `send_binary`) and `ClientConnection.send_data()`, which writes what the protocol
  produced to the transport: what `send()` does inside its `send_context`, without the
  drain that follows it (`send_now`).

`create_connection` (the connection class `connect` builds) is public API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import structlog
from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, State

from cloudcontainer.coalesce import CoalescingTransport

__all__ = ["VERIFIED_VERSIONS", "DispatchingConnection", "dispatching_connection"]

log = structlog.get_logger(__name__)

VERIFIED_VERSIONS = frozenset({"15.0.1"})
_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


class DispatchingConnection(ClientConnection):
    """Hands each complete data message to `on_message` as soon as its frames are parsed: no
    assembler queue and no reader-task wake-up per message, a tenth of the gateway's CPU on a
    small file call. `recv()` is never used on such a connection. A message it cannot take
    (text that is not UTF-8, a listener failing) ends the connection, as a broken one would;
    one larger than `max_size` ends it with 1009 before it is buffered (websockets checks each
    frame's announced length against what the message may still grow by)."""

    on_message: Callable[[str | bytes], None]
    _opcode: Opcode = Opcode.TEXT
    _fragments: list[bytes]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Frames of calls made in one turn of the loop leave in one send.
        super().connection_made(CoalescingTransport(cast(asyncio.Transport, transport)))

    def process_event(self, event: Event) -> None:
        if self.response is None or not isinstance(event, Frame) or event.opcode not in _DATA:
            super().process_event(event)
            return
        if event.opcode is not Opcode.CONT:
            self._opcode, self._fragments = event.opcode, []
        self._fragments.append(bytes(event.data))
        if not event.fin:
            return
        data, self._fragments = b"".join(self._fragments), []
        try:
            self.on_message(data.decode() if self._opcode is Opcode.TEXT else data)
        except Exception:
            log.exception("agent link dropped: a message it could not take")
            self.transport.abort()

    def send_now(self, data: bytes) -> bool:
        """Write one binary message without waiting for the transport to drain: for streams
        whose flow control is their own (a tunnel's window), sent from plain callbacks.
        False when the connection is no longer open."""
        if self.protocol.state is not State.OPEN or self.fragmented_send_waiter is not None:
            return False
        self.protocol.send_binary(data)
        try:
            self.send_data()
        except OSError:
            self.transport.abort()
            return False
        return True


def dispatching_connection(
    on_message: Callable[[str | bytes], None],
) -> type[DispatchingConnection]:
    """A connection class whose messages go to `on_message`, for `connect(create_connection=)`
    (websockets takes a class, not an instance)."""
    return type("DispatchingConnection", (DispatchingConnection,), {"on_message": on_message})
