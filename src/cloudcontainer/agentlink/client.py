"""A connection to one sandbox's agent: calls, events, and stream channels over one WebSocket."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import structlog
from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from cloudcontainer.agent.messages import Hello
from cloudcontainer.agent.protocol import (
    ARCHIVE_DATA,
    ARCHIVE_END,
    AUTH_HEADER,
    HEADER_SIZE,
    MAX_MESSAGE_BYTES,
    PROC_INPUT,
    PROC_OUTPUT,
    PROC_STDERR,
    TUNNEL_ACK,
    TUNNEL_DATA,
    TUNNEL_EOF,
    pack_frame,
    unpack_frame,
)
from cloudcontainer.agentlink.errors import AgentOpError, AgentProtocolError, AgentUnavailable
from cloudcontainer.agentlink.schema import (
    MAX_ERROR_MESSAGE,
    Violation,
    check_error,
    check_event,
    check_result,
)
from cloudcontainer.internals.websockets import DispatchingConnection, dispatching_connection

__all__ = ["REQUEST_SENT", "AgentAddress", "AgentClient"]

log = structlog.get_logger(__name__)

EventListener = Callable[[str, dict[str, Any]], None]
StreamListener = Callable[[int, bytes], None]
# Stream bytes that arrive before anyone listens on their channel (the answer to a spawn and
# the process's first output can reach us together) are held this long, up to this much, in
# at most this many frames.
ORPHAN_SECONDS = 5.0
ORPHAN_BYTES = 4 * 1024 * 1024
ORPHAN_FRAMES = 1024
# Stream kinds an agent may send; anything else is a protocol violation.
_AGENT_KINDS = frozenset(
    (PROC_OUTPUT, PROC_STDERR, TUNNEL_DATA, TUNNEL_EOF, TUNNEL_ACK, ARCHIVE_DATA, ARCHIVE_END)
)
# Violations are counted on the link and logged at most once per this many seconds.
VIOLATION_LOG_SECONDS = 10.0
# Called (in the caller's context) once a request is on its way to the agent: the per-client
# FIFO of the file API lets the client's next request go at that moment.
REQUEST_SENT: ContextVar[Callable[[], None] | None] = ContextVar("request_sent", default=None)


@dataclass(frozen=True, slots=True)
class AgentAddress:
    """Where an agent listens: a unix socket path on this host, or host:port."""

    unix_path: str | None = None
    host: str | None = None
    port: int | None = None

    def describe(self) -> str:
        return f"unix:{self.unix_path}" if self.unix_path else f"tcp:{self.host}:{self.port}"


def _unix_socket(path: str) -> socket.socket:
    """A connected unix socket. Paths longer than sun_path allows (108 bytes, easily reached
    under deep data directories) are reached through a short /proc/self/fd/N/ alias of their
    directory."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(path.encode()) < 100:
            sock.connect(path)
        else:
            directory = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY)
            try:
                sock.connect(f"/proc/self/fd/{directory}/{os.path.basename(path)}")
            finally:
                os.close(directory)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _expire(future: asyncio.Future[Any], op: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(AgentUnavailable(f"the agent did not answer {op} within {timeout}s"))


class AgentClient:
    """One live connection. `call` sends a request and awaits its answer; events and stream
    bytes go to listeners. When the link drops, pending calls fail with AgentUnavailable and
    `closed` is set; the owner decides whether to reconnect."""

    def __init__(self, address: AgentAddress, secret: str) -> None:
        self.address = address
        self._secret = secret
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._last_id = 0
        self._pending: dict[int, tuple[asyncio.Future[Any], str]] = {}
        self._answer_hooks: dict[int, Callable[[Any], None]] = {}
        self._event_listeners: list[EventListener] = []
        self._stream_listeners: dict[tuple[int, int], StreamListener] = {}
        # Held stream bytes: per channel, and all of them in arrival order (for eviction).
        self._orphans: dict[tuple[int, int], deque[bytes]] = {}
        self._orphan_order: deque[tuple[float, tuple[int, int], deque[bytes], bytes]] = deque()
        self._orphan_bytes = 0
        self.violations = 0  # messages from the agent that broke the protocol, dropped
        self._violations_logged = 0
        self._violation_logged_at = -VIOLATION_LOG_SECONDS
        self._reader: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.hello: Hello = {}

    # -- connecting -----------------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> Hello:
        """Connect, retrying while the agent boots, and return its `hello`."""
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            try:
                self._ws = await self._open(max(0.1, deadline - time.monotonic()))
                break
            except InvalidStatus as exc:
                raise AgentUnavailable(f"agent refused the connection: {exc}") from exc
            except (OSError, WebSocketException, TimeoutError) as exc:
                if time.monotonic() + delay > deadline:
                    raise AgentUnavailable(
                        f"agent at {self.address.describe()} did not answer within {timeout}s"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.02)  # an agent boots in ~0.1 s: poll finely
        self._reader = asyncio.create_task(self._read(), name="agent-reader")
        self.hello = await self.call("hello")
        return self.hello

    async def _open(self, timeout: float) -> ClientConnection:
        headers = {AUTH_HEADER: f"Bearer {self._secret}"}
        options: dict[str, Any] = {
            "additional_headers": headers, "max_size": MAX_MESSAGE_BYTES, "compression": None,
            "open_timeout": timeout, "ping_interval": 20, "ping_timeout": 20,
            "max_queue": 256, "create_connection": dispatching_connection(self._on_message),
        }  # fmt: skip
        if self.address.unix_path:
            sock = _unix_socket(self.address.unix_path)
            try:
                return await unix_connect(sock=sock, uri="ws://agent/", **options)
            except BaseException:
                sock.close()
                raise
        return await connect(f"ws://{self.address.host}:{self.address.port}/", **options)

    async def aclose(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        self._fail_pending()

    # -- calls ----------------------------------------------------------------------------

    async def call(self, op: str, timeout: float | None = 30.0, **args: Any) -> Any:
        """Send a request and await its answer: the untyped transport under the typed
        facade (`files.py`, `fs.py`, `watch.py`...), which services call instead."""
        return await self._call(op, timeout, None, args)

    async def call_in_order(
        self, op: str, on_answer: Callable[[Any], None], timeout: float | None = 30.0,
        **args: Any,
    ) -> Any:  # fmt: skip
        """`call`, with `on_answer(result)` run as the answer is read, before any later message
        of the link: a caller that must neither miss nor see twice the stream bytes that
        follow an answer (a terminal's attach) starts there."""
        return await self._call(op, timeout, on_answer, args)

    async def _call(
        self, op: str, timeout: float | None, on_answer: Callable[[Any], None] | None,
        args: dict[str, Any],
    ) -> Any:  # fmt: skip
        if self._ws is None or self.closed.is_set():
            raise AgentUnavailable("the agent link is closed")
        request_id = self._last_id = next(self._ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[request_id] = (future, op)
        if on_answer is not None:
            self._answer_hooks[request_id] = on_answer
        timer: asyncio.TimerHandle | None = None
        try:
            await self._ws.send(json.dumps({"id": request_id, "op": op, "args": args}))
            if (sent := REQUEST_SENT.get()) is not None:
                sent()
            if timeout is not None:
                # A timer on the future, not asyncio.timeout(): a third of the cost, on the
                # path of every file call.
                timer = loop.call_later(timeout, _expire, future, op, timeout)
            return await future
        except ConnectionClosed as exc:
            raise AgentUnavailable("the agent link closed") from exc
        finally:
            if timer is not None:
                timer.cancel()
            self._pending.pop(request_id, None)
            self._answer_hooks.pop(request_id, None)

    async def send_stream(self, kind: int, channel: int, payload: bytes) -> None:
        if self._ws is None or self.closed.is_set():
            raise AgentUnavailable("the agent link is closed")
        try:
            await self._ws.send(pack_frame(kind, channel, payload))
        except ConnectionClosed as exc:
            raise AgentUnavailable("the agent link closed") from exc

    def send_stream_now(self, kind: int, channel: int, payload: bytes) -> None:
        """Send stream bytes from a plain callback, without waiting for the link to drain:
        only for a stream that bounds what it has in flight itself (a tunnel's window)."""
        ws = self._ws
        if ws is None or self.closed.is_set() or not isinstance(ws, DispatchingConnection):
            raise AgentUnavailable("the agent link is closed")
        if not ws.send_now(pack_frame(kind, channel, payload)):
            raise AgentUnavailable("the agent link closed")

    async def send_input(self, proc_id: int, data: bytes) -> None:
        await self.send_stream(PROC_INPUT, proc_id, data)

    # -- listeners ------------------------------------------------------------------------

    def on_event(self, listener: EventListener) -> Callable[[], None]:
        self._event_listeners.append(listener)
        return lambda: self._event_listeners.remove(listener)

    def on_stream(self, kind: int, channel: int, listener: StreamListener) -> Callable[[], None]:
        """Listen to one channel; bytes that arrived just before are delivered first."""
        self._stream_listeners[(kind, channel)] = listener
        for payload in self._orphans.pop((kind, channel), ()):
            self._orphan_bytes -= len(payload)
            listener(kind, payload)

        def remove() -> None:
            self._stream_listeners.pop((kind, channel), None)

        return remove

    # -- reading --------------------------------------------------------------------------

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._on_binary(message)
        else:
            self._on_text(message)

    async def _read(self) -> None:
        """Messages are handed over as they are parsed (DispatchingConnection); this waits
        for the end of the link."""
        assert self._ws is not None
        try:
            await self._ws.wait_closed()
        finally:
            self.closed.set()
            self._fail_pending()
            for listener in list(self._event_listeners):
                listener("link.closed", {})

    def _on_binary(self, frame: bytes) -> None:
        if len(frame) < HEADER_SIZE or frame[0] not in _AGENT_KINDS:
            self._violation("a binary frame of an unknown kind or without its header")
            return
        kind, channel, payload = unpack_frame(frame)
        listener = self._stream_listeners.get((kind, channel))
        if listener is not None:
            listener(kind, payload)
        else:
            self._hold_orphan((kind, channel), payload)

    def _hold_orphan(self, key: tuple[int, int], payload: bytes) -> None:
        """Keep bytes for a listener that may come; the oldest go first past the limits (in
        arrival order: each frame is looked at once, however many channels an agent makes
        up)."""
        now = time.monotonic()
        order = self._orphan_order
        while order and (
            now - order[0][0] > ORPHAN_SECONDS or self._orphan_bytes + len(payload) > ORPHAN_BYTES
            or len(order) >= ORPHAN_FRAMES
        ):  # fmt: skip
            _, old_key, held, old = order.popleft()
            # Unless a listener took them meanwhile (then the entry is stale), the oldest
            # frame of a channel is the front of its queue.
            if self._orphans.get(old_key) is held and held and held[0] is old:
                held.popleft()
                self._orphan_bytes -= len(old)
                if not held:
                    del self._orphans[old_key]
        if len(payload) > ORPHAN_BYTES:
            return
        held = self._orphans.setdefault(key, deque())
        held.append(payload)
        order.append((now, key, held, payload))
        self._orphan_bytes += len(payload)

    def _on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            self._violation("a text message that is not JSON")
            return
        if type(message) is not dict:
            self._violation("a message that is not an object")
            return
        if "event" in message:
            self._on_event(message.get("event"), message.get("data"))
            return
        request_id = message.get("id")
        if type(request_id) is not int or not 0 < request_id <= self._last_id:
            self._violation("an answer to no request")
            return
        pending = self._pending.get(request_id)
        if pending is None or pending[0].done():
            return  # the call timed out or was cancelled meanwhile
        future, op = pending
        ok, result = message.get("ok"), message.get("result")
        error: Any = message.get("error")
        try:
            if ok is True:
                check_result(op, result)
            elif ok is False:
                check_error(error)
            else:
                raise Violation(op, "an answer without ok: true|false")
        except Violation as exc:
            self._violation(f"a malformed answer ({exc})")
            problem = {"problem": str(exc)[:500]}
            future.set_exception(AgentProtocolError(
                f"The sandbox's agent answered {op} with a malformed message.", details=problem
            ))  # fmt: skip
            return
        if ok:
            if (hook := self._answer_hooks.pop(request_id, None)) is not None:
                try:
                    hook(result)
                except AgentProtocolError as exc:  # it found a value it cannot take
                    future.set_exception(exc)
                    return
            future.set_result(result)
        else:
            future.set_exception(AgentOpError(error["code"], error["message"][:MAX_ERROR_MESSAGE]))

    def _on_event(self, name: Any, data: Any) -> None:
        try:
            check_event(name, data)
        except Violation as exc:
            self._violation(f"a malformed event ({exc})")
            return
        for listener in list(self._event_listeners):
            listener(name, data)

    def _violation(self, what: str) -> None:
        """Drop a message that broke the protocol: counted, logged now and then (an agent
        sending garbage in a loop must not flood the log). The link stays up."""
        self.violations += 1
        now = time.monotonic()
        if now - self._violation_logged_at >= VIOLATION_LOG_SECONDS:
            log.warning(
                "agent broke the protocol; message dropped", agent=self.address.describe(),
                problem=what[:300], dropped=self.violations - self._violations_logged,
            )  # fmt: skip
            self._violation_logged_at = now
            self._violations_logged = self.violations

    def _fail_pending(self) -> None:
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(AgentUnavailable("the agent link closed"))
        self._pending.clear()
