"""The agent's WebSocket server: authentication, sessions, request dispatch, fan-out.

One `Agent` per sandbox holds the services (files, processes, ports, tunnels). Each
connection is a `Session`. Requests from one session run in the order they arrive (fs
operations keep a client's FIFO order) on the session's worker task; ops marked concurrent
(waiting for a process, dialing a port) run as tasks of their own. The receive loop itself
never waits on an op or a stream: terminal input and tunnel bytes are handed over the moment
they arrive, whatever file work is queued, and file work big enough to matter runs on one
thread (`off_loop`) so it never stalls the event loop. Outbound, answers, events and process
output go before bulk stream bytes (tunnels, archives), taking turns when both wait.
Python >= 3.9, stdlib + websockets.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hmac
import json
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Set, Tuple, TypeVar, Union

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
# Handed a frame the moment it arrives; must not block (flow control is the stream's own).
BinaryHandler = Callable[["Session", int, bytes], None]
# Run in order with the session's requests (an upload's bytes before the op that finishes it).
OrderedBinaryHandler = Callable[["Session", int, bytes], Awaitable[None]]
T = TypeVar("T")

# Process output stops being read while a session has this much urgent data queued (the
# process then blocks on its terminal, as on a slow real one) and is read again below
# OUTPUT_RESUME_BYTES; a session past SESSION_QUEUE_BYTES (several processes writing at
# once) loses droppable output, says so with `proc.lagged`, and re-attaching replays
# scrollback. Answers and events are never dropped.
OUTPUT_PAUSE_BYTES = 1024 * 1024
OUTPUT_RESUME_BYTES = 256 * 1024
SESSION_QUEUE_BYTES = 4 * 1024 * 1024
# Requests and ordered frames queued for the session's worker: past either bound the receive
# loop waits for room (the gateway is trusted, but memory is the sandbox's).
INBOUND_QUEUE_ITEMS = 4096
INBOUND_QUEUE_BYTES = 64 * 1024 * 1024
# File work on more bytes than this goes to the file thread.
OFF_LOOP_BYTES = 256 * 1024

_file_thread: Optional[ThreadPoolExecutor] = None


async def off_loop(function: Callable[..., T], *args: Any) -> T:
    """Run blocking file work on the agent's one file thread: the event loop keeps echoing
    keystrokes and moving tunnel bytes meanwhile. One thread, so file operations still run
    one at a time, in order, as they did on the loop."""
    global _file_thread
    if _file_thread is None:
        _file_thread = ThreadPoolExecutor(1, thread_name_prefix="files")
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_file_thread, functools.partial(function, *args))


# What this agent takes from the gateway, which is trusted: file writes come in parts of 8 MiB
# (protocol.WRITE_CHUNK_BYTES), but a snapshot restore sends a file of up to 64 MiB in one
# fs.apply. What the agent sends is capped at protocol.MAX_MESSAGE_BYTES (send_json).
MAX_MESSAGE_BYTES = 128 * 1024 * 1024


class Registry:
    """Maps op names to handlers; `concurrent` ops run as tasks instead of in order."""

    def __init__(self) -> None:
        self.handlers: Dict[str, Tuple[Handler, bool]] = {}
        self.binary: Dict[int, BinaryHandler] = {}
        self.ordered_binary: Dict[int, OrderedBinaryHandler] = {}

    def op(self, name: str, *, concurrent: bool = False) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.handlers[name] = (handler, concurrent)
            return handler

        return register

    def add(self, name: str, handler: Handler, *, concurrent: bool = False) -> None:
        self.handlers[name] = (handler, concurrent)


class Session:
    """One gateway connection: two outbound queues, the receive loop and the ordered worker."""

    def __init__(self, agent: Agent, ws: ServerConnection) -> None:
        self.agent = agent
        self.ws = ws
        self._urgent: Deque[Union[str, bytes]] = collections.deque()
        self._bulk: Deque[Union[str, bytes]] = collections.deque()
        self._urgent_bytes = 0
        self._bulk_bytes = 0
        self._wakeup = asyncio.Event()
        self._sent = asyncio.Event()  # set after each send, so producers can wait for a drain
        self._inbound: Deque[Tuple[Any, ...]] = collections.deque()
        self._inbound_bytes = 0
        self._inbound_ready = asyncio.Event()
        self._inbound_room = asyncio.Event()
        self._tasks: Set[asyncio.Task[None]] = set()
        self.closed = False
        self.state: Dict[str, Any] = {}  # what ops keep per connection (unfinished uploads)
        self.on_close: List[Callable[[], Any]] = []  # run once the connection ended

    # -- sending --------------------------------------------------------------------------

    def _enqueue(self, message: Union[str, bytes], bulk: bool = False) -> None:
        if bulk:
            self._bulk.append(message)
            self._bulk_bytes += len(message)
        else:
            self._urgent.append(message)
            self._urgent_bytes += len(message)
        self._wakeup.set()

    def send_json(self, message: Dict[str, Any], bulk: bool = False) -> None:
        """Queue a message; `bulk` keeps it behind the bulk stream bytes queued before it
        (a tunnel's `tunnel.closed` after its last bytes)."""
        if self.closed:
            return
        text = json.dumps(message, separators=(",", ":"))  # ASCII: as many bytes as chars
        if len(text) > MAX_SEND_BYTES:
            replacement = _too_large(message, len(text))
            if replacement is None:
                return
            text = replacement
        self._enqueue(text, bulk)

    def event(self, name: str, data: Dict[str, Any], bulk: bool = False) -> None:
        self.send_json({"event": name, "data": data}, bulk)

    def send_stream(self, kind: int, channel: int, payload: bytes, *, droppable: bool,
                    bulk: bool = False) -> bool:  # fmt: skip
        """Queue stream bytes; False when dropped because this session is not draining.
        `bulk` streams (tunnels, archives) are flow-controlled by their own windows and
        give way to answers, events and process output."""
        if self.closed:
            return False
        if droppable and self._urgent_bytes > SESSION_QUEUE_BYTES:
            return False
        self._enqueue(pack_frame(kind, channel, payload), bulk)
        return True

    def queued_bytes(self) -> int:
        return self._urgent_bytes + self._bulk_bytes

    def urgent_bytes(self) -> int:
        return self._urgent_bytes

    async def drained(self, limit: int, urgent: bool = False) -> None:
        """Wait until at most `limit` bytes (of the urgent queue alone when `urgent`) are
        queued, or the session closed."""
        while not self.closed and (self.urgent_bytes() if urgent else self.queued_bytes()) > limit:
            self._sent.clear()
            await self._sent.wait()

    def _next_message(self, prefer_bulk: bool) -> Tuple[Union[str, bytes], bool]:
        """The next message to send, and whether it came from the bulk queue. When both
        queues wait they take turns, so a keystroke's echo waits behind at most one bulk
        frame and a download is never starved by a chatty terminal."""
        if self._bulk and (prefer_bulk or not self._urgent):
            message = self._bulk.popleft()
            self._bulk_bytes -= len(message)
            return message, True
        message = self._urgent.popleft()
        self._urgent_bytes -= len(message)
        return message, False

    async def _sender(self) -> None:
        prefer_bulk = False
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._urgent or self._bulk:
                message, was_bulk = self._next_message(prefer_bulk)
                prefer_bulk = not was_bulk
                await self.ws.send(message)
                self._sent.set()

    # -- receiving ------------------------------------------------------------------------

    async def run(self) -> None:
        sender = asyncio.ensure_future(self._sender())
        worker = asyncio.ensure_future(self._worker())
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    self._on_binary(message)
                else:
                    self._on_text(message)
                while (len(self._inbound) >= INBOUND_QUEUE_ITEMS
                       or self._inbound_bytes >= INBOUND_QUEUE_BYTES):  # fmt: skip
                    self._inbound_room.clear()
                    await self._inbound_room.wait()
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self._sent.set()
            sender.cancel()
            worker.cancel()
            self._inbound.clear()
            for task in list(self._tasks):
                task.cancel()
            for callback in self.on_close:
                callback()

    def _queue_inbound(self, job: Tuple[Any, ...], size: int) -> None:
        self._inbound.append((*job, size))
        self._inbound_bytes += size
        self._inbound_ready.set()

    async def _worker(self) -> None:
        """Runs the session's requests and ordered frames one at a time, in arrival order."""
        while True:
            if not self._inbound:
                self._inbound_ready.clear()
                await self._inbound_ready.wait()
                continue
            job = self._inbound.popleft()
            self._inbound_bytes -= job[-1]
            self._inbound_room.set()
            if job[0] == "op":
                await self._call(job[1], job[2], job[3])
            elif job[0] == "task":  # a concurrent op starts after what came before it
                task = asyncio.ensure_future(self._call(job[1], job[2], job[3]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                await self._ordered_frame(job[1], job[2], job[3])

    async def _ordered_frame(self, handler: OrderedBinaryHandler, channel: int,
                             payload: bytes) -> None:  # fmt: skip
        try:
            await handler(self, channel, payload)
        except asyncio.CancelledError:
            raise
        except Exception:  # the agent must outlive any single bad frame
            log.exception("stream frame failed")

    def _on_binary(self, frame: bytes) -> None:
        try:
            kind, channel, payload = unpack_frame(frame)
        except ValueError:
            return
        registry = self.agent.registry
        ordered = registry.ordered_binary.get(kind)
        if ordered is not None:
            self._queue_inbound(("frame", ordered, channel, payload), len(frame))
            return
        handler = registry.binary.get(kind)
        if handler is None:
            return
        try:
            handler(self, channel, payload)
        except Exception:  # the agent must outlive any single bad frame
            log.exception("stream frame failed")

    def _on_text(self, text: str) -> None:
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
        kind = "task" if concurrent else "op"
        self._queue_inbound((kind, request_id, handler, args), len(text))

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
