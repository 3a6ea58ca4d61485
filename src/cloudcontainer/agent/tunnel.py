"""TCP tunnels from the gateway to servers inside the sandbox (previews of any port).

`tunnel.open {port, host?}` dials host:port (default 127.0.0.1) and answers `{tunnel_id}`;
bytes then travel as binary TUNNEL_DATA frames whose channel is the tunnel id, TUNNEL_EOF
half-closes a direction, and `tunnel.close` or a session disconnect ends it. The owning
session gets `tunnel.closed {tunnel_id, reason}` once, however it ended, after the tunnel's
last bytes. Only loopback and the sandbox's own addresses may be dialled, so the agent is
never an open proxy.

Flow control is per tunnel and per direction (protocol.TUNNEL_WINDOW): the agent sends at
most a window of the server's bytes that the gateway has not acknowledged (TUNNEL_ACK, sent
as the gateway's client takes them) and stops reading the socket until credit comes back;
the gateway sends at most a window the agent has not acknowledged, and the agent
acknowledges bytes once the server's socket took them. Nothing here ever waits inside the
session's receive loop, so a server that never reads, or a browser that reads slowly, holds
up its own tunnel and nothing else: not terminal input, not file calls, not another tunnel's
HMR messages. Python >= 3.9, stdlib only.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import socket
from typing import TYPE_CHECKING, Any, Deque, Dict, Optional, Tuple

from cloudcontainer.agent.protocol import (
    TUNNEL_ACK,
    TUNNEL_ACK_EVERY,
    TUNNEL_DATA,
    TUNNEL_EOF,
    TUNNEL_WINDOW,
    AgentError,
)
from cloudcontainer.agent.server import Registry, Session

if TYPE_CHECKING:  # for the checker only: no memory in the sandbox
    from cloudcontainer.agent.messages import TunnelOpened

DIAL_SECONDS = 10.0
IPV6_LOOPBACK = bytes(15) + b"\x01"


class Tunnel(asyncio.Protocol):
    """One dialled connection: the socket's side of the flow control."""

    def __init__(self, tunnels: Tunnels, session: Session) -> None:
        self.tunnels = tunnels
        self.session = session
        self.tunnel_id = 0  # set once the dial succeeded
        self.transport: Optional[asyncio.Transport] = None
        self.unacked = 0  # server bytes sent to the gateway and not yet acknowledged
        self.reading_paused = False
        self.writing_paused = False  # the socket's buffer is full: hold the gateway's credit
        self.owed = 0  # gateway bytes the socket took, not yet acknowledged
        # The server's bytes not sent yet: past the window, or from before the tunnel had
        # its id. Reading stops while there are any, so this is at most one read.
        self.pending: Deque[bytes] = collections.deque()
        self.pending_bytes = 0
        self.lost: Optional[str] = None  # the socket is gone, and why
        self.read_done = False  # the server sent EOF
        self.eof_sent = False
        self.write_done = False  # the gateway sent EOF
        self.closed = False

    # -- the server's side ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        self._send_pending()
        if self.pending and not self.reading_paused:
            self.reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def _send_pending(self) -> None:
        """Send the server's bytes as far as the gateway's credit goes (all of them wait
        until the tunnel has its id: a server may speak before the dial was answered)."""
        if not self.tunnel_id or self.closed:
            return
        while self.pending and self.unacked < TUNNEL_WINDOW:
            data = self.pending.popleft()
            room = TUNNEL_WINDOW - self.unacked
            if len(data) > room:
                self.pending.appendleft(data[room:])
                data = data[:room]
            self.session.send_stream(TUNNEL_DATA, self.tunnel_id, data, droppable=False,
                                     bulk=True)  # fmt: skip
            self.unacked += len(data)
            self.pending_bytes -= len(data)
        if self.read_done and not self.pending and not self.eof_sent:
            self.eof_sent = True
            self.session.send_stream(TUNNEL_EOF, self.tunnel_id, b"", droppable=False, bulk=True)
            if self.write_done:
                self.tunnels.close(self, "eof")

    def eof_received(self) -> bool:
        if not self.closed:
            self.read_done = True
            self._send_pending()
        return True  # keep the socket half-open: the gateway may still be sending

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.lost = _reason(exc) if exc else "eof"
        if self.tunnel_id:
            self.tunnels.close(self, self.lost, transport_gone=True)

    def named(self, tunnel_id: int) -> None:
        """The tunnel has its id: pass on what the server said before it had one."""
        self.tunnel_id = tunnel_id
        self._send_pending()
        self._resume_if_sent()
        if self.lost is not None:
            self.tunnels.close(self, self.lost, transport_gone=True)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._pay_owed()

    # -- the gateway's side ---------------------------------------------------------------

    def acknowledged(self, count: int) -> None:
        """The gateway passed `count` of our bytes on: read the socket again if it was
        waiting for credit."""
        self.unacked = max(0, self.unacked - count)
        self._send_pending()
        self._resume_if_sent()

    def _resume_if_sent(self) -> None:
        if self.reading_paused and not self.pending and not self.closed:
            self.reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        """Bytes from the gateway, which sends no more than a window ahead of our credit; the
        credit goes back once the socket took them (at once, or when its buffer drains)."""
        assert self.transport is not None
        if self.write_done or self.closed:
            return
        self.transport.write(data)
        self.owed += len(data)
        if not self.writing_paused:
            self._pay_owed()

    def _pay_owed(self) -> None:
        if self.owed >= TUNNEL_ACK_EVERY and not self.closed:
            credit, self.owed = self.owed, 0
            self.session.send_stream(TUNNEL_ACK, self.tunnel_id, credit.to_bytes(4, "big"),
                                     droppable=False)  # fmt: skip

    def write_eof(self) -> None:
        assert self.transport is not None
        if self.write_done or self.closed:
            return
        self.write_done = True
        if self.eof_sent:
            self.tunnels.close(self, "eof")
        elif self.transport.can_write_eof():
            self.transport.write_eof()


def dial_address(host: Any) -> str:
    """The address to dial for `host`, or EACCES unless it is loopback or this sandbox's own."""
    if not isinstance(host, str):
        raise AgentError("EINVAL", "host must be a string")
    if host == "localhost":
        return "127.0.0.1"
    family, packed = _parse_ip(host)
    if not packed.strip(b"\0"):  # a server bound to the wildcard answers on loopback
        return "::1" if family == socket.AF_INET6 else "127.0.0.1"
    loopback = packed[0] == 127 if family == socket.AF_INET else packed == IPV6_LOOPBACK
    if loopback or _is_own(host, family):
        return host
    raise AgentError("EACCES", "EACCES: tunnels may only reach this sandbox, not %s" % host)


def _parse_ip(host: str) -> Tuple[int, bytes]:
    # inet_pton rather than ipaddress, whose import costs every sandbox ~400 KiB.
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return family, socket.inet_pton(family, host)
        except OSError:
            continue
    raise AgentError("EACCES", "tunnel host must be an IP address of this sandbox")


def _is_own(host: str, family: int) -> bool:
    # An address can be bound only if an interface here has it (EADDRNOTAVAIL otherwise).
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError:
            return False
    return True


class Tunnels:
    def __init__(self) -> None:
        self.tunnels: Dict[int, Tunnel] = {}
        self._next_id = 1

    async def open(self, session: Session, port: Any, host: Any) -> Tunnel:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise AgentError("EINVAL", "port must be an integer between 1 and 65535")
        address = dial_address(host)
        loop = asyncio.get_event_loop()
        tunnel = Tunnel(self, session)
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: tunnel, address, port), DIAL_SECONDS
            )
        except asyncio.TimeoutError:
            raise AgentError("ETIMEDOUT", "connect ETIMEDOUT %s:%d" % (address, port)) from None
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, "EIO")
            raise AgentError(code, "connect %s %s:%d" % (code, address, port)) from None
        assert tunnel.transport is not None
        if session.closed:
            tunnel.transport.abort()
            raise AgentError("ECONNABORTED", "the session closed while dialling")
        # The socket's own buffer is what the gateway's window already bounds; past this the
        # socket stops taking credit back (pause_writing) until the server reads.
        tunnel.transport.set_write_buffer_limits(high=TUNNEL_WINDOW)
        tunnel_id = self._next_id
        self._next_id += 1
        self.tunnels[tunnel_id] = tunnel
        # The reply is queued right after this returns; the tunnel's bytes may still overtake
        # it on the wire (the two queues take turns): the gateway holds stream bytes that
        # come before their listener.
        tunnel.named(tunnel_id)
        return tunnel

    def close(self, tunnel: Tunnel, reason: str, abort: bool = False,
              transport_gone: bool = False) -> None:  # fmt: skip
        if tunnel.closed:
            return
        tunnel.closed = True
        self.tunnels.pop(tunnel.tunnel_id, None)
        if not transport_gone and tunnel.transport is not None:
            if abort:
                tunnel.transport.abort()
            else:
                tunnel.transport.close()  # flushes what is buffered, then closes
        # Bulk, so that it reaches the gateway after the tunnel's last bytes.
        tunnel.session.event("tunnel.closed", {"tunnel_id": tunnel.tunnel_id, "reason": reason},
                             bulk=True)  # fmt: skip

    def get(self, session: Session, tunnel_id: Any) -> Tunnel:
        tunnel = self.tunnels.get(int(tunnel_id))
        if tunnel is None or tunnel.session is not session:
            raise AgentError("ENOENT", "no such tunnel: %s" % tunnel_id)
        return tunnel

    def of(self, session: Session, channel: int) -> Optional[Tunnel]:
        tunnel = self.tunnels.get(channel)
        return tunnel if tunnel is not None and tunnel.session is session else None

    def close_session(self, session: Session) -> None:
        for tunnel in [t for t in self.tunnels.values() if t.session is session]:
            self.close(tunnel, "session closed", abort=True)


def _reason(exc: BaseException) -> str:
    number = getattr(exc, "errno", None)
    return errno.errorcode.get(number or 0, "EIO")


def register(registry: Registry, tunnels: Tunnels) -> None:
    async def open_(session: Session, args: Dict[str, Any]) -> TunnelOpened:
        tunnel = await tunnels.open(session, args["port"], args.get("host") or "127.0.0.1")
        return {"tunnel_id": tunnel.tunnel_id}

    async def close(session: Session, args: Dict[str, Any]) -> None:
        tunnels.close(tunnels.get(session, args["tunnel_id"]), "closed")
        return None

    def on_data(session: Session, channel: int, payload: bytes) -> None:
        tunnel = tunnels.of(session, channel)
        if tunnel is not None:
            tunnel.write(payload)

    def on_eof(session: Session, channel: int, payload: bytes) -> None:
        tunnel = tunnels.of(session, channel)
        if tunnel is not None:
            tunnel.write_eof()

    def on_ack(session: Session, channel: int, payload: bytes) -> None:
        tunnel = tunnels.of(session, channel)
        if tunnel is not None and len(payload) == 4:
            tunnel.acknowledged(int.from_bytes(payload, "big"))

    registry.add("tunnel.open", open_, concurrent=True)
    registry.add("tunnel.close", close)
    registry.binary[TUNNEL_DATA] = on_data
    registry.binary[TUNNEL_EOF] = on_eof
    registry.binary[TUNNEL_ACK] = on_ack
