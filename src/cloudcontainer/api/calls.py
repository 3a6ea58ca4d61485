"""File calls on a container's event WebSocket: WebContainer's `fs.*`, in the order sent.

`@cloudcontainer/api` (clients/js) keeps one socket per container for events, watches and
these calls, so the FIFO that bolt.diy relies on (unawaited mkdirs, then writes) holds by
construction: the calls of one socket reach the agent in the order they arrived (the file
API's per-client sequencer, files/ordering.py, with the socket as its client), while the
next call may already be on its way — they pipeline, they do not overtake.

A call is `{"type": "call", "call": N, "op": "fs.write", "args": {...}}`; its answer, once it
is done (answers may come in another order than the calls), `{"type": "result", "call": N,
"result": ...}` or `{"type": "result", "call": N, "error": {code, message, errno?}}`, where
`errno` is the agent's Node-style code (`ENOENT`) when the sandbox refused. Contents travel
as UTF-8 text or base64 and are limited to SOCKET_CONTENT_BYTES each way; larger files go
through the HTTP file API, which streams (the client does this on its own).

At most MAX_CALLS_IN_FLIGHT calls per socket are running or have an answer waiting to be
sent; past that the socket is not read, so a client that sends calls and reads no answers
holds a bounded amount of memory (each answer is at most SOCKET_CONTENT_BYTES as base64).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError

from cloudcontainer.agentlink.errors import AgentOpError, AgentUnavailable
from cloudcontainer.api.schemas import RequestModel
from cloudcontainer.errors import CloudContainerError, NotFound
from cloudcontainer.files.ordering import ClientOrder
from cloudcontainer.state import Services

__all__ = ["MAX_CALLS_IN_FLIGHT", "SOCKET_CONTENT_BYTES", "CallCommand", "Calls"]

SOCKET_CONTENT_BYTES = 1024 * 1024
MAX_CALLS_IN_FLIGHT = 16
_socket_ids = itertools.count(1)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

CallId = Annotated[int, Field(ge=0, le=2**53 - 1)]
Path = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00]*$")]
# Base64 of SOCKET_CONTENT_BYTES is 4/3 of it; UTF-8 text of it is at most that many chars.
Content = Annotated[str, Field(max_length=(SOCKET_CONTENT_BYTES * 4) // 3 + 4)]


class CallCommand(RequestModel):
    type: Literal["call"]
    call: CallId
    op: Literal["fs.read", "fs.write", "fs.mkdir", "fs.list", "fs.delete", "fs.move"]
    args: dict[str, Any] = {}


class _Read(RequestModel):
    path: Path


class _Write(RequestModel):
    path: Path
    content: Content
    encoding: Literal["utf-8", "base64"] = "utf-8"
    mkdirs: bool = False


class _Mkdir(RequestModel):
    path: Path
    recursive: bool = False


class _List(RequestModel):
    path: Path


class _Delete(RequestModel):
    path: Path
    recursive: bool = False
    force: bool = False


class _Move(RequestModel):
    from_: Path = Field(alias="from")
    to: Path


_ARGS: dict[str, TypeAdapter[Any]] = {
    op: TypeAdapter(model)
    for op, model in {
        "fs.read": _Read, "fs.write": _Write, "fs.mkdir": _Mkdir, "fs.list": _List,
        "fs.delete": _Delete, "fs.move": _Move,
    }.items()
}  # fmt: skip


class CallFailed(CloudContainerError):
    status_code = 400
    default_code = "invalid_call"


class Calls:
    """The calls of one event socket: started in arrival order, answered through `answer`."""

    def __init__(
        self, services: Services, user_id: str, container_id: str,
        answer: Callable[[dict[str, Any]], None],
    ) -> None:  # fmt: skip
        self._services = services
        self._user_id = user_id
        self._container_id = container_id
        self._answer = answer
        self._client = f"socket:{next(_socket_ids)}"  # its own sequence in the sequencer
        self._seq = 0
        self._slots = asyncio.Semaphore(MAX_CALLS_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, command: CallCommand) -> None:
        """Start `command` behind the calls before it; waits while too many are in flight
        (the caller then reads no more from the socket)."""
        await self._slots.acquire()
        self._seq += 1
        order = ClientOrder(self._client, self._seq)
        task = asyncio.create_task(self._run(command, order))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def sent(self) -> None:
        """An answer left: its slot is free."""
        self._slots.release()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, command: CallCommand, order: ClientOrder) -> None:
        answer: dict[str, Any] = {"type": "result", "call": command.call}
        try:
            async with self._services.order.turn(self._container_id, order):
                answer["result"] = await self._perform(command)
        except CloudContainerError as exc:
            answer["error"] = _error(exc.code, exc.message, exc.__cause__)
        except AgentUnavailable as exc:
            answer["error"] = _error("agent_unavailable", str(exc), None)
        except AgentOpError as exc:
            answer["error"] = _error(exc.errno.lower(), exc.message, exc)
        self._answer(answer)

    async def _perform(self, command: CallCommand) -> Any:
        try:
            args = _ARGS[command.op].validate_python(command.args)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise CallFailed(f"{command.op} {where}: {first['msg']}".strip()) from None
        perform: Callable[[Any], Awaitable[Any]] = getattr(self, "_" + command.op[3:])
        return await perform(args)

    # -- the operations -------------------------------------------------------------------

    async def _read(self, args: _Read) -> dict[str, Any]:
        content = await self._services.files.read(
            self._user_id, self._container_id, args.path, max_bytes=SOCKET_CONTENT_BYTES
        )
        try:
            return {"content": content.data.decode("utf-8"), "encoding": "utf-8"}
        except UnicodeDecodeError:
            return {"content": base64.b64encode(content.data).decode(), "encoding": "base64"}

    async def _write(self, args: _Write) -> dict[str, Any]:
        if args.encoding == "base64":
            try:
                data = base64.b64decode(args.content, validate=True)
            except binascii.Error:
                raise CallFailed("fs.write content: not base64") from None
        else:
            # A lone surrogate (JSON allows "\ud800") is written as U+FFFD, as Node does.
            data = _LONE_SURROGATE.sub("\ufffd", args.content).encode()
        if len(data) > SOCKET_CONTENT_BYTES:
            raise CallFailed(
                f"Contents over {SOCKET_CONTENT_BYTES} bytes go through PUT .../files.",
                code="payload_too_large",
            )
        written = await self._services.files.write(
            self._user_id, self._container_id, args.path, data, mkdirs=args.mkdirs
        )
        return {"path": written["path"], "size": written["size"], "mtime": written["mtime"]}

    async def _mkdir(self, args: _Mkdir) -> dict[str, Any]:
        entry = await self._services.files.mkdir(
            self._user_id, self._container_id, args.path, args.recursive
        )
        return {"path": entry["path"]}

    async def _list(self, args: _List) -> dict[str, Any]:
        entries = await self._services.files.list(
            self._user_id, self._container_id, args.path, False
        )
        return {"entries": [{"name": e["name"], "type": e["type"]} for e in entries]}

    async def _delete(self, args: _Delete) -> None:
        try:
            await self._services.files.delete(
                self._user_id, self._container_id, args.path, args.recursive
            )
        except NotFound as exc:
            if not (args.force and exc.code == "file_not_found"):
                raise

    async def _move(self, args: _Move) -> dict[str, Any]:
        entry = await self._services.files.move(
            self._user_id, self._container_id, args.from_, args.to
        )
        return {"path": entry["path"]}


def _error(code: str, message: str, cause: BaseException | None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if isinstance(cause, AgentOpError):
        error["errno"] = cause.errno
    return error
