"""TCP tunnels from the gateway to servers inside the sandbox (previews of any port).

`tunnel.open {port, host?}` dials host:port (default 127.0.0.1) and answers `{tunnel_id}`;
bytes then travel as binary TUNNEL_DATA frames whose channel is the tunnel id, TUNNEL_EOF
half-closes a direction, and `tunnel.close` or a session disconnect ends it. The owning
session gets `tunnel.closed {tunnel_id, reason}` once, however it ended. Only loopback and
the sandbox's own addresses may be dialled, so the agent is never an open proxy.

Backpressure both ways, nothing buffered without bound: a tunnel stops reading its socket
while its session has more than PAUSE_BYTES queued and resumes below RESUME_BYTES; data
from the gateway is written to the socket and, when the socket's buffer passes WRITE_HIGH,
the session stops reading its WebSocket until the server catches up — for at most
STALL_SECONDS (less than the WebSocket ping timeout), then the tunnel is aborted so a
server that never reads cannot wedge the session. Python >= 3.9, stdlib only.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from cloudcontainer.agent.protocol import TUNNEL_DATA, TUNNEL_EOF, AgentError
from cloudcontainer.agent.server import Registry, Session

if TYPE_CHECKING:  # for the checker only: no memory in the sandbox
    from cloudcontainer.agent.messages import TunnelOpened

PAUSE_BYTES = 1024 * 1024
RESUME_BYTES = 256 * 1024
WRITE_HIGH = 1024 * 1024
STALL_SECONDS = 10.0
DIAL_SECONDS = 10.0
READ_CHUNK = 65536
IPV6_LOOPBACK = bytes(15) + b"\x01"


class Tunnel:
    def __init__(self, tunnel_id: int, session: Session, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:  # fmt: skip
        self.tunnel_id = tunnel_id
        self.session = session
        self.reader = reader
        self.writer = writer
        self.pump: Optional[asyncio.Future[None]] = None
        self.read_done = False  # the server sent EOF
        self.write_done = False  # the gateway sent EOF
        self.closed = False


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
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address, port, limit=READ_CHUNK), DIAL_SECONDS
            )
        except asyncio.TimeoutError:
            raise AgentError("ETIMEDOUT", "connect ETIMEDOUT %s:%d" % (address, port)) from None
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, "EIO")
            raise AgentError(code, "connect %s %s:%d" % (code, address, port)) from None
        if session.closed:
            writer.close()
            raise AgentError("ECONNABORTED", "the session closed while dialling")
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH)
        tunnel = Tunnel(self._next_id, session, reader, writer)
        self._next_id += 1
        self.tunnels[tunnel.tunnel_id] = tunnel
        # The pump first runs after the caller queued the reply, so the gateway learns the
        # tunnel id before any of its data arrives.
        tunnel.pump = asyncio.ensure_future(self._pump(tunnel))
        return tunnel

    async def _pump(self, tunnel: Tunnel) -> None:
        """Server -> gateway, pausing while the session's queue is congested."""
        session = tunnel.session
        try:
            while True:
                if session.queued_bytes() > PAUSE_BYTES:
                    await session.drained(RESUME_BYTES)
                if session.closed:
                    return
                data = await tunnel.reader.read(READ_CHUNK)
                if not data:
                    break
                session.send_stream(TUNNEL_DATA, tunnel.tunnel_id, data, droppable=False)
        except OSError as exc:
            self.close(tunnel, _reason(exc), abort=True)
            return
        session.send_stream(TUNNEL_EOF, tunnel.tunnel_id, b"", droppable=False)
        tunnel.read_done = True
        if tunnel.write_done:
            self.close(tunnel, "eof")

    async def write(self, tunnel: Tunnel, data: bytes) -> None:
        """Gateway -> server; waits (holding up the session) while the server is not reading."""
        writer = tunnel.writer
        if tunnel.write_done or writer.is_closing():
            return
        writer.write(data)
        if writer.transport.get_write_buffer_size() <= WRITE_HIGH:
            return
        try:
            await asyncio.wait_for(writer.drain(), STALL_SECONDS)
        except asyncio.TimeoutError:
            self.close(tunnel, "stalled", abort=True)
        except OSError as exc:
            self.close(tunnel, _reason(exc), abort=True)

    def write_eof(self, tunnel: Tunnel) -> None:
        if tunnel.write_done:
            return
        tunnel.write_done = True
        if tunnel.read_done:
            self.close(tunnel, "eof")
        elif not tunnel.writer.is_closing() and tunnel.writer.can_write_eof():
            tunnel.writer.write_eof()

    def close(self, tunnel: Tunnel, reason: str, abort: bool = False) -> None:
        if tunnel.closed:
            return
        tunnel.closed = True
        self.tunnels.pop(tunnel.tunnel_id, None)
        if tunnel.pump is not None and tunnel.pump is not asyncio.current_task():
            tunnel.pump.cancel()
        if abort:
            tunnel.writer.transport.abort()
        else:
            tunnel.writer.close()  # flushes what is buffered, then closes
        tunnel.session.event("tunnel.closed", {"tunnel_id": tunnel.tunnel_id, "reason": reason})

    def get(self, session: Session, tunnel_id: Any) -> Tunnel:
        tunnel = self.tunnels.get(int(tunnel_id))
        if tunnel is None or tunnel.session is not session:
            raise AgentError("ENOENT", "no such tunnel: %s" % tunnel_id)
        return tunnel

    def close_session(self, session: Session) -> None:
        for tunnel in [t for t in self.tunnels.values() if t.session is session]:
            self.close(tunnel, "session closed", abort=True)


def _reason(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "EIO")


def register(registry: Registry, tunnels: Tunnels) -> None:
    async def open_(session: Session, args: Dict[str, Any]) -> TunnelOpened:
        tunnel = await tunnels.open(session, args["port"], args.get("host") or "127.0.0.1")
        return {"tunnel_id": tunnel.tunnel_id}

    async def close(session: Session, args: Dict[str, Any]) -> None:
        tunnels.close(tunnels.get(session, args["tunnel_id"]), "closed")
        return None

    async def on_data(session: Session, channel: int, payload: bytes) -> None:
        tunnel = tunnels.tunnels.get(channel)
        if tunnel is not None and tunnel.session is session:
            await tunnels.write(tunnel, payload)

    async def on_eof(session: Session, channel: int, payload: bytes) -> None:
        tunnel = tunnels.tunnels.get(channel)
        if tunnel is not None and tunnel.session is session:
            tunnels.write_eof(tunnel)

    registry.add("tunnel.open", open_, concurrent=True)
    registry.add("tunnel.close", close)
    registry.binary[TUNNEL_DATA] = on_data
    registry.binary[TUNNEL_EOF] = on_eof
