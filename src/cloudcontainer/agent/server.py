"""The agent's WebSocket server: authentication, sessions, request dispatch, fan-out.

One `Agent` per sandbox holds the services (files, processes, ports, tunnels). Each
connection is a `Session`. Requests from one session run in the order they arrive (fs
operations keep a client's FIFO order); ops marked concurrent (waiting for a process, dialing
a port) run as tasks so they do not hold up the session. Python >= 3.9, stdlib + websockets.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import logging
import socket
from http import HTTPStatus
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Set, Tuple, Union

from websockets.asyncio.server import ServerConnection, serve, unix_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from cloudcontainer.agent.protocol import (
    AUTH_HEADER,
    AgentError,
    pack_frame,
    unpack_frame,
)
from cloudcontainer.agent.protocol import (
    MAX_MESSAGE_BYTES as MAX_SEND_BYTES,
)

log = logging.getLogger("cloudcontainer.agent")

Handler = Callable[["Session", Dict[str, Any]], Awaitable[Any]]
BinaryHandler = Callable[["Session", int, bytes], Awaitable[None]]

# A session whose socket does not drain stops receiving droppable stream bytes past this much
# queued data; it still gets every response and event, and re-attaching replays scrollback.
SESSION_QUEUE_BYTES = 4 * 1024 * 1024
# What this agent takes from the gateway, which is trusted: file writes come in parts of 8 MiB
# (protocol.WRITE_CHUNK_BYTES), but a snapshot restore sends a file of up to 64 MiB in one
# fs.apply. What the agent sends is capped at protocol.MAX_MESSAGE_BYTES (send_json).
MAX_MESSAGE_BYTES = 128 * 1024 * 1024


class Registry:
    """Maps op names to handlers; `concurrent` ops run as tasks instead of in order."""

    def __init__(self) -> None:
        self.handlers: Dict[str, Tuple[Handler, bool]] = {}
        self.binary: Dict[int, BinaryHandler] = {}

    def op(self, name: str, *, concurrent: bool = False) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.handlers[name] = (handler, concurrent)
            return handler

        return register

    def add(self, name: str, handler: Handler, *, concurrent: bool = False) -> None:
        self.handlers[name] = (handler, concurrent)


class Session:
    """One gateway connection: an ordered outbound queue and the request loop."""

    def __init__(self, agent: Agent, ws: ServerConnection) -> None:
        self.agent = agent
        self.ws = ws
        self._queue: Deque[Union[str, bytes]] = collections.deque()
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._sent = asyncio.Event()  # set after each send, so producers can wait for a drain
        self._tasks: Set[asyncio.Task[None]] = set()
        self.closed = False
        self.state: Dict[str, Any] = {}  # what ops keep per connection (unfinished uploads)
        self.on_close: List[Callable[[], Any]] = []  # run once the connection ended

    # -- sending --------------------------------------------------------------------------

    def _enqueue(self, message: Union[str, bytes]) -> None:
        self._queue.append(message)
        self._queued_bytes += len(message)
        self._wakeup.set()

    def send_json(self, message: Dict[str, Any]) -> None:
        if self.closed:
            return
        text = json.dumps(message, separators=(",", ":"))  # ASCII: as many bytes as chars
        if len(text) > MAX_SEND_BYTES:
            replacement = _too_large(message, len(text))
            if replacement is None:
                return
            text = replacement
        self._enqueue(text)

    def event(self, name: str, data: Dict[str, Any]) -> None:
        self.send_json({"event": name, "data": data})

    def send_stream(self, kind: int, channel: int, payload: bytes, *, droppable: bool) -> bool:
        """Queue stream bytes; False when dropped because this session is not draining."""
        if self.closed:
            return False
        if droppable and self._queued_bytes > SESSION_QUEUE_BYTES:
            return False
        self._enqueue(pack_frame(kind, channel, payload))
        return True

    def queued_bytes(self) -> int:
        return self._queued_bytes

    async def drained(self, limit: int) -> None:
        """Wait until at most `limit` bytes are queued, or the session closed."""
        while self._queued_bytes > limit and not self.closed:
            self._sent.clear()
            await self._sent.wait()

    async def _sender(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                message = self._queue.popleft()
                self._queued_bytes -= len(message)
                await self.ws.send(message)
                self._sent.set()

    # -- receiving ------------------------------------------------------------------------

    async def run(self) -> None:
        sender = asyncio.ensure_future(self._sender())
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    await self._on_binary(message)
                else:
                    await self._on_text(message)
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self._sent.set()
            sender.cancel()
            for task in list(self._tasks):
                task.cancel()
            for callback in self.on_close:
                callback()

    async def _on_binary(self, frame: bytes) -> None:
        try:
            kind, channel, payload = unpack_frame(frame)
        except ValueError:
            return
        handler = self.agent.registry.binary.get(kind)
        if handler is not None:
            await handler(self, channel, payload)

    async def _on_text(self, text: str) -> None:
        try:
            request = json.loads(text)
            request_id = request["id"]
            op = request["op"]
            args = request.get("args") or {}
            if not isinstance(op, str) or not isinstance(args, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self.send_json(
                {
                    "id": None,
                    "ok": False,
                    "error": {"code": "EPROTO", "message": "malformed request"},
                }
            )
            return
        entry = self.agent.registry.handlers.get(op)
        if entry is None:
            self._reply_error(request_id, AgentError("ENOSYS", "unknown op: " + op))
            return
        handler, concurrent = entry
        if concurrent:
            task = asyncio.ensure_future(self._call(request_id, handler, args))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            await self._call(request_id, handler, args)

    async def _call(self, request_id: Any, handler: Handler, args: Dict[str, Any]) -> None:
        try:
            result = await handler(self, args)
        except AgentError as exc:
            self._reply_error(request_id, exc)
        except OSError as exc:
            self._reply_error(request_id, os_error(exc))
        except (KeyError, TypeError, ValueError) as exc:
            self._reply_error(request_id, AgentError("EINVAL", "bad arguments: %s" % (exc,)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the agent must outlive any single bad request
            log.exception("op failed")
            self._reply_error(request_id, AgentError("EIO", "internal agent error: %s" % (exc,)))
        else:
            self.send_json({"id": request_id, "ok": True, "result": result})

    def _reply_error(self, request_id: Any, exc: AgentError) -> None:
        self.send_json({"id": request_id, "ok": False, "error": exc.to_dict()})


def _too_large(message: Dict[str, Any], size: int) -> Optional[str]:
    """An answer the gateway would refuse (it takes MAX_SEND_BYTES) becomes an EFBIG error;
    an event is dropped (those that could grow are split by their senders)."""
    if "id" not in message:
        log.warning("event %s dropped: %d bytes", message.get("event"), size)
        return None
    text = "EFBIG: the answer would be %.1f MiB, more than the %d MiB a message may carry" % (
        size / 1048576,
        MAX_SEND_BYTES // 1048576,
    )
    error = {"code": "EFBIG", "message": text}
    return json.dumps({"id": message["id"], "ok": False, "error": error})


def os_error(exc: OSError) -> AgentError:
    """Node-style error: `ENOENT: no such file or directory, open '/home/project/x'`."""
    import errno as errno_module
    import os

    code = errno_module.errorcode.get(exc.errno or 0, "EIO")
    text = os.strerror(exc.errno) if exc.errno else str(exc)
    where = ", '%s'" % exc.filename if exc.filename else ""
    return AgentError(code, "%s: %s%s" % (code, text.lower(), where))


class Agent:
    """Holds the sandbox's services and every connected session."""

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()
        self.registry = Registry()
        self.sessions: Set[Session] = set()
        self.on_session_closed: list = []  # type: ignore[type-arg]

    def broadcast(self, name: str, data: Dict[str, Any]) -> None:
        for session in list(self.sessions):
            session.event(name, data)

    def _check_auth(self, connection: ServerConnection, request: Request) -> Optional[Response]:
        given = request.headers.get(AUTH_HEADER, "")
        expected = b"Bearer " + self._secret
        if not hmac.compare_digest(given.encode("utf-8", "replace"), expected):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "bad agent secret\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        session = Session(self, ws)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            for callback in self.on_session_closed:
                callback(session)

    async def serve_forever(self, listen: str, ready: Optional[Callable[[], None]] = None) -> None:
        options: Dict[str, Any] = dict(
            process_request=self._check_auth,
            max_size=MAX_MESSAGE_BYTES,
            compression=None,
            ping_interval=20,
            ping_timeout=20,
            max_queue=64,
        )
        if listen.startswith("fd:"):
            # A listening socket made by the runtime, outside anything the sandbox can
            # write: the gateway never has to follow a path the tenant controls.
            sock = socket.socket(fileno=int(listen[len("fd:") :]))
            sock.set_inheritable(False)
            server = await unix_serve(self._handle, sock=sock, **options)
        elif listen.startswith("unix:"):
            server = await unix_serve(self._handle, listen[len("unix:") :], **options)
        elif listen.startswith("tcp:"):
            host, _, port = listen[len("tcp:") :].rpartition(":")
            server = await serve(self._handle, host or "0.0.0.0", int(port), **options)
        else:
            raise ValueError("listen must be fd:N, unix:PATH or tcp:HOST:PORT")
        if ready is not None:
            ready()
        async with server:
            await server.serve_forever()
