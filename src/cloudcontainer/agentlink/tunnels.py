"""TCP tunnels through a sandbox's agent (agent/tunnel.py), as asyncio transports.

`open_tunnel(link, port, protocol_factory)` dials a port inside the sandbox and returns an
`asyncio.Transport` whose protocol sees exactly what it would see on a socket: the preview
proxy cannot tell a tunnel from a direct connection. Each direction is flow-controlled on
its own (protocol.TUNNEL_WINDOW): we send at most a window the agent has not acknowledged
and buffer the rest, calling the protocol's `pause_writing` past WRITE_HIGH; we acknowledge
the agent's bytes once they were handed to the protocol, and stop acknowledging while the
protocol paused our reading, which stops the agent reading the server's socket. So a
100 MB download to a slow browser holds a window of bytes, and nothing else waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import structlog

from cloudcontainer.agent.messages import TunnelArgs, TunnelOpenArgs, TunnelOpened
from cloudcontainer.agent.protocol import (
    TUNNEL_ACK,
    TUNNEL_ACK_EVERY,
    TUNNEL_DATA,
    TUNNEL_EOF,
    TUNNEL_WINDOW,
)
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError, AgentUnavailable

__all__ = ["TunnelTransport", "open_tunnel"]

log = structlog.get_logger(__name__)

FRAME_BYTES = 64 * 1024  # one TUNNEL_DATA frame: small enough to interleave with others
WRITE_HIGH = 64 * 1024  # buffered beyond the window: the protocol is asked to pause
WRITE_LOW = 16 * 1024
CLOSE_SECONDS = 5.0
EARLY_CLOSES = 1024  # `tunnel.closed` events kept for tunnels whose answer is still coming


class _Mux:
    """The tunnels of one link: routes `tunnel.closed` and the link's end to them."""

    def __init__(self, link: AgentClient) -> None:
        self.link = link
        self.tunnels: dict[int, TunnelTransport] = {}
        # A tunnel's `tunnel.closed` travels behind its bytes and may overtake the answer
        # that named it: kept here until that answer is read.
        self.early_closes: OrderedDict[int, str] = OrderedDict()
        self.tasks: set[asyncio.Task[None]] = set()
        link.on_event(self._on_event)

    def _on_event(self, name: str, data: dict[str, Any]) -> None:
        if name == "tunnel.closed":
            tunnel = self.tunnels.get(data["tunnel_id"])
            if tunnel is not None:
                tunnel.remote_closed(data["reason"])
            else:
                self.early_closes[data["tunnel_id"]] = data["reason"]
                while len(self.early_closes) > EARLY_CLOSES:
                    self.early_closes.popitem(last=False)
        elif name == "link.closed":
            for tunnel in list(self.tunnels.values()):
                tunnel.remote_closed("agent link closed")

    def adopt(self, tunnel: TunnelTransport) -> None:
        self.tunnels[tunnel.tunnel_id] = tunnel
        reason = self.early_closes.pop(tunnel.tunnel_id, None)
        if reason is not None:
            tunnel.remote_closed(reason)
        elif self.link.closed.is_set():
            tunnel.remote_closed("agent link closed")

    def close_remote(self, tunnel_id: int) -> None:
        """Ask the agent to close a tunnel, in the background (nobody waits for it)."""
        if self.link.closed.is_set():
            return
        task = asyncio.get_running_loop().create_task(self._close_remote(tunnel_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _close_remote(self, tunnel_id: int) -> None:
        args: TunnelArgs = {"tunnel_id": tunnel_id}
        with contextlib.suppress(AgentOpError, AgentUnavailable):  # already gone there
            await self.link.call("tunnel.close", timeout=CLOSE_SECONDS, **args)


_muxes: weakref.WeakKeyDictionary[AgentClient, _Mux] = weakref.WeakKeyDictionary()


def _mux(link: AgentClient) -> _Mux:
    mux = _muxes.get(link)
    if mux is None:
        mux = _muxes[link] = _Mux(link)
    return mux


class TunnelTransport(asyncio.Transport):
    """One tunnel, behaving as a socket's transport towards its protocol."""

    def __init__(self, mux: _Mux, tunnel_id: int, protocol: asyncio.Protocol, port: int) -> None:
        super().__init__({"peername": ("tunnel", port), "tunnel_id": tunnel_id})
        self._mux = mux
        self._link = mux.link
        self.tunnel_id = tunnel_id
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._credit = TUNNEL_WINDOW  # bytes we may send before the agent acknowledges more
        self._owed = 0  # agent bytes handed to the protocol, not acknowledged yet
        self._outbox: deque[memoryview] = deque()  # bytes waiting for credit (sliced free)
        self._outbox_bytes = 0
        self._eof_wanted = False  # write_eof() called: EOF follows the outbox
        self._eof_sent = False
        self._writing_paused = False  # we called protocol.pause_writing()
        self._reading_paused = False  # the protocol called pause_reading()
        self._inbox: deque[bytes] = deque()  # agent bytes held while reading is paused
        self._inbox_eof = False
        self._remote_reason: str | None = None  # the agent closed the tunnel
        self._closing = False
        self._lost = False
        self._unsubscribe: list[Callable[[], None]] = []

    def start(self) -> None:
        link = self._link
        self._unsubscribe = [
            link.on_stream(TUNNEL_ACK, self.tunnel_id, self._on_ack),
            link.on_stream(TUNNEL_DATA, self.tunnel_id, self._on_data),
            link.on_stream(TUNNEL_EOF, self.tunnel_id, self._on_eof),
        ]
        self._mux.adopt(self)

    # -- from the agent -------------------------------------------------------------------

    def _on_data(self, kind: int, payload: bytes) -> None:
        if self._lost:
            return
        if self._reading_paused or self._inbox:
            self._inbox.append(payload)
            return
        self._protocol.data_received(payload)
        self._acknowledge(len(payload))

    def _acknowledge(self, count: int) -> None:
        """Owe the agent `count` more bytes of credit; pay once TUNNEL_ACK_EVERY is owed."""
        self._owed += count
        if self._owed < TUNNEL_ACK_EVERY or self._lost or self._link.closed.is_set():
            return
        credit, self._owed = self._owed, 0
        # A link that closed meanwhile reaches us as link.closed.
        with contextlib.suppress(AgentUnavailable):
            self._link.send_stream_now(TUNNEL_ACK, self.tunnel_id, credit.to_bytes(4, "big"))

    def _on_eof(self, kind: int, payload: bytes) -> None:
        if self._lost:
            return
        if self._reading_paused or self._inbox:
            self._inbox_eof = True
            return
        self._deliver_eof()

    def _deliver_eof(self) -> None:
        self._inbox_eof = False
        if not self._protocol.eof_received():
            self.close()

    def _on_ack(self, kind: int, payload: bytes) -> None:
        if len(payload) == 4:
            self._credit += int.from_bytes(payload, "big")
            self._flush()

    def remote_closed(self, reason: str) -> None:
        """The agent ended the tunnel (after its last bytes) or the link went away."""
        if self._lost:
            return
        self._remote_reason = reason
        if not (self._reading_paused and self._inbox):
            self._lose()

    # -- to the agent ---------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof_wanted or self._lost or not data:
            return
        view = memoryview(data if isinstance(data, bytes) else bytes(data))
        self._outbox.append(view)
        self._outbox_bytes += len(view)
        self._flush()
        if self._outbox_bytes > WRITE_HIGH and not self._writing_paused:
            self._writing_paused = True
            self._protocol.pause_writing()

    def _flush(self) -> None:
        """Send what the window allows; then EOF, and the close, once all is sent."""
        if self._lost:
            return
        try:
            while self._outbox and self._credit > 0:
                chunk = self._outbox.popleft()
                size = min(len(chunk), self._credit, FRAME_BYTES)
                if size < len(chunk):
                    self._outbox.appendleft(chunk[size:])
                self._link.send_stream_now(TUNNEL_DATA, self.tunnel_id, bytes(chunk[:size]))
                self._credit -= size
                self._outbox_bytes -= size
            if not self._outbox and self._eof_wanted and not self._eof_sent:
                self._eof_sent = True
                self._link.send_stream_now(TUNNEL_EOF, self.tunnel_id, b"")
        except AgentUnavailable:
            self._remote_reason = "agent link closed"
            self._lose()
            return
        if self._writing_paused and self._outbox_bytes <= WRITE_LOW:
            self._writing_paused = False
            self._protocol.resume_writing()
        if self._closing and not self._outbox:
            self._mux.close_remote(self.tunnel_id)
            self._lose()

    def write_eof(self) -> None:
        if self._closing or self._lost:
            return
        self._eof_wanted = True
        self._flush()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self._outbox_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return WRITE_LOW, WRITE_HIGH

    # -- reading control ------------------------------------------------------------------

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        # Held bytes go first; the protocol may pause us again while taking them.
        delivered = 0
        while self._inbox and not self._reading_paused and not self._lost:
            payload = self._inbox.popleft()
            self._protocol.data_received(payload)
            delivered += len(payload)
        self._acknowledge(delivered)
        if self._inbox or self._reading_paused or self._lost:
            return
        if self._inbox_eof:
            self._deliver_eof()
        if self._remote_reason is not None:
            self._lose()

    def held_bytes(self) -> int:
        """Bytes received while reading was paused, not yet handed to the protocol: at most
        a window, since none of them was acknowledged."""
        return sum(len(payload) for payload in self._inbox)

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._lost

    # -- ending ---------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """Send what is buffered, then end the tunnel (as a socket's close does)."""
        if self._closing or self._lost:
            return
        self._closing = True
        self._flush()

    def abort(self) -> None:
        if self._lost:
            return
        self._closing = True
        self._outbox.clear()
        self._outbox_bytes = 0
        self._mux.close_remote(self.tunnel_id)
        self._lose()

    def _lose(self) -> None:
        """Tell the protocol the connection is gone, once, on a later turn of the loop (as
        asyncio does: never from inside the protocol's own call)."""
        if self._lost:
            return
        self._lost = True
        self._inbox.clear()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._mux.tunnels.pop(self.tunnel_id, None)
        reason = self._remote_reason
        error = None if reason in (None, "eof", "closed") else ConnectionResetError(reason)
        self._loop.call_soon(self._protocol.connection_lost, error)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # the window and WRITE_HIGH/WRITE_LOW bound this transport; nothing to tune

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]


async def open_tunnel(
    link: AgentClient, port: int, protocol_factory: Callable[[], asyncio.Protocol], *,
    host: str | None = None, timeout: float = 15.0,
) -> tuple[TunnelTransport, asyncio.Protocol]:  # fmt: skip
    """Dial `host:port` inside the sandbox (loopback by default) through its agent, like
    `loop.create_connection`. Raises AgentOpError (ECONNREFUSED when nothing listens) or
    AgentUnavailable."""
    mux = _mux(link)
    protocol = protocol_factory()
    holder: list[TunnelTransport] = []

    def adopt(answer: Any) -> None:
        # Run as the answer is read, before any later message: the tunnel's own bytes and
        # its close find their transport.
        tunnel = TunnelTransport(mux, answer["tunnel_id"], protocol, port)
        holder.append(tunnel)
        protocol.connection_made(tunnel)
        tunnel.start()

    args: TunnelOpenArgs = {"port": port}
    if host is not None:
        args["host"] = host
    opened: TunnelOpened = await link.call_in_order("tunnel.open", adopt, timeout=timeout, **args)
    assert holder[0].tunnel_id == opened["tunnel_id"]
    return holder[0], protocol
