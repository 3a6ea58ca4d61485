"""Listening-port discovery: `port` events and `ports.list`, read from /proc/net/tcp{,6}.

Every TCP socket in LISTEN state counts, whatever it is bound to (127.0.0.1 and ::1
included: the gateway reaches those through a tunnel), except the agent's own port. The
watcher polls every 100 ms while the agent's processes live: a spawn wakes it, and it keeps
scanning for a short linger after the last exit (a killed process group's grandchildren close
their sockets a moment after its leader is reaped) so closes are reported. Then, while other
processes still live in the sandbox (a server started with `setsid … &` by a command that has
ended), it scans every second; when nothing but the agent is left, it sleeps until the next
spawn, and an idle sandbox costs nothing. Python >= 3.9, stdlib only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    Optional,
    Tuple,
)

from cloudcontainer.agent.server import Registry, Session

if TYPE_CHECKING:  # for the checker only: no memory in the sandbox
    from cloudcontainer.agent.messages import ListeningPort

POLL_SECONDS = 0.1
LINGER_SECONDS = 1.0
IDLE_POLL_SECONDS = 1.0  # while only processes the agent did not start live
LISTEN = "0A"
TABLES = (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6))


# sock_diag over netlink asks the kernel for listening sockets only. Reading /proc/net/tcp
# walks the host's whole TCP hash table instead (~4 ms per file here, whatever the netns),
# which at 10 polls a second would cost each busy sandbox ~9% of a core.
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
TCPF_LISTEN = 1 << 10
_NLMSG = struct.Struct("=IHHII")
_DIAG_REQUEST = struct.Struct("=BBBBI48x")  # inet_diag_req_v2 with an empty socket id


def netlink_listeners(uid: Optional[int] = None) -> Iterator[Tuple[int, str]]:
    """(port, bind address) of every TCP socket listening in this network namespace, owned
    by `uid` when given (Docker's embedded DNS listens in the sandbox's netns as root)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as sock:
        for sequence, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            body = _DIAG_REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, TCPF_LISTEN)
            header = _NLMSG.pack(_NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY,
                                 NLM_F_REQUEST | NLM_F_DUMP, sequence, 0)  # fmt: skip
            sock.send(header + body)
            for message in _netlink_replies(sock):
                # inet_diag_msg: family, state, timer, retrans, then the socket id:
                # sport (big-endian), dport, src[16], dst[16], ...
                port = struct.unpack_from(">H", message, 4)[0]
                owner = struct.unpack_from("=I", message, 64)[0]  # after expires, rqueue, wqueue
                if uid is not None and owner != uid:
                    continue
                raw = message[8:12] if family == socket.AF_INET else message[8:24]
                yield port, socket.inet_ntop(family, raw)


def _netlink_replies(sock: socket.socket) -> Iterator[bytes]:
    while True:
        data = sock.recv(65536)
        offset = 0
        while offset + _NLMSG.size <= len(data):
            length, kind, _, _, _ = _NLMSG.unpack_from(data, offset)
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                raise OSError("sock_diag refused the request")
            yield data[offset + _NLMSG.size : offset + length]
            offset += (length + 3) & ~3


def parse_table(text: str, family: int, uid: Optional[int] = None) -> Iterator[Tuple[int, str]]:
    """(port, bind address) of each LISTEN socket in a /proc/net/tcp-style table (owned by
    `uid` when given)."""
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or fields[3] != LISTEN:
            continue
        if uid is not None and int(fields[7]) != uid:
            continue
        address, _, port = fields[1].partition(":")
        yield int(port, 16), _address(address, family)


def _address(text: str, family: int) -> str:
    # The kernel prints the address as 32-bit words in host byte order.
    words = [int(text[i : i + 8], 16) for i in range(0, len(text), 8)]
    return socket.inet_ntop(family, struct.pack("=%dI" % len(words), *words))


def _rank(address: str) -> int:
    """Which bind address to report when a port has several: wildcard first, then loopback."""
    if address in ("0.0.0.0", "::"):
        return 0 if address == "0.0.0.0" else 1
    if address.startswith("127.") or address == "::1":
        return 2
    return 3


class PortWatcher:
    def __init__(self, broadcast: Callable[[str, Dict[str, Any]], None], live: Callable[[], int],
                 exclude: Iterable[int] = (), tables: Any = TABLES) -> None:  # fmt: skip
        self._broadcast = broadcast
        self._live = live
        self._exclude = frozenset(exclude)
        self._tables = tables
        self._netlink = True
        # Only the sandbox user's sockets are the sandbox's ports (not Docker's DNS, say).
        self._uid = os.getuid() if tables is TABLES else None
        self.ports: Dict[int, str] = {}
        self._task: Optional[asyncio.Future[None]] = None
        self._fast = False
        # Made on first use, inside the running loop (python 3.9 binds an Event at creation).
        self._woken: Optional[asyncio.Event] = None
        self._ancestors = _ancestors()

    def scan(self) -> Dict[int, str]:
        found: Dict[int, str] = {}
        for port, address in self._listeners():
            if port in self._exclude:
                continue
            if port not in found or _rank(address) < _rank(found[port]):
                found[port] = address
        return found

    def _listeners(self) -> Iterable[Tuple[int, str]]:
        if self._tables is TABLES and self._netlink:
            try:
                return list(netlink_listeners(self._uid))
            except OSError:
                self._netlink = False  # not allowed here: read /proc from now on
        return list(self._read_tables())

    def _read_tables(self) -> Iterator[Tuple[int, str]]:
        for path, family in self._tables:
            try:
                with open(path) as handle:
                    text = handle.read()
            except OSError:  # no IPv6 in this sandbox
                continue
            yield from parse_table(text, family, self._uid)

    def refresh(self) -> Dict[int, str]:
        """Scan now, broadcast what opened or closed since the last scan, return the ports."""
        current = self.scan()
        for port in sorted(set(self.ports) - set(current)):
            self._broadcast("port", {"port": port, "state": "close", "address": self.ports[port]})
        for port in sorted(set(current) - set(self.ports)):
            self._broadcast("port", {"port": port, "state": "open", "address": current[port]})
        self.ports = current
        return current

    @property
    def polling(self) -> bool:
        """Scanning every POLL_SECONDS (the agent's processes live, or just ended)."""
        return self._task is not None and self._fast

    def wake(self) -> None:
        """Poll fast (called whenever a process starts or exits)."""
        self._fast = True
        self._wakeup().set()
        if self._task is None:
            self._task = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        idle_since: Optional[float] = None
        try:
            while True:
                if self._fast or self._others_alive():
                    self.refresh()
                if self._live() > 0:
                    idle_since, self._fast = None, True
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= LINGER_SECONDS:
                    self._fast = False
                if self._fast:
                    await asyncio.sleep(POLL_SECONDS)
                    continue
                woken = self._wakeup()
                woken.clear()
                if self._others_alive():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(woken.wait(), IDLE_POLL_SECONDS)
                else:  # nothing but the agent: nothing can listen until it spawns again
                    await woken.wait()
                idle_since = None if self._fast else idle_since
        finally:
            self._task = None

    def _wakeup(self) -> asyncio.Event:
        if self._woken is None:
            self._woken = asyncio.Event()
        return self._woken

    def _others_alive(self) -> bool:
        """Whether a process the agent is not waiting for lives in the sandbox (its
        ancestors, the runtime's init, do not count)."""
        try:
            names = os.listdir("/proc")
        except OSError:
            return True
        return any(name.isdigit() and int(name) not in self._ancestors for name in names)


def _ancestors() -> FrozenSet[int]:
    """This process and its parents, up to the namespace's init."""
    found = {os.getpid()}
    pid = os.getppid()
    while pid > 0 and pid not in found:
        found.add(pid)
        try:
            with open("/proc/%d/stat" % pid) as handle:
                pid = int(handle.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return frozenset(found)


def register(registry: Registry, watcher: PortWatcher) -> None:
    async def listing(session: Session, args: Dict[str, Any]) -> List[ListeningPort]:
        return [
            {"port": port, "address": address}
            for port, address in sorted(watcher.refresh().items())
        ]

    registry.add("ports.list", listing)
