"""`/api/containers`: lifecycle, `exec`, and the per-container event WebSocket."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response, WebSocket, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.websockets import WebSocketDisconnect

from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError, AgentUnavailable
from cloudcontainer.agentlink.status import disk_usage, listening_ports
from cloudcontainer.api import wsio
from cloudcontainer.api.audit import record
from cloudcontainer.api.calls import CallCommand, Calls
from cloudcontainer.api.deps import CurrentPrincipal, ServicesDep
from cloudcontainer.api.schemas import RequestModel, WholeNumber
from cloudcontainer.audit import actions
from cloudcontainer.auth.sockets import OpenSocket
from cloudcontainer.db import Container
from cloudcontainer.errors import CloudContainerError, Forbidden
from cloudcontainer.files.watch import WatchFeed, WatchRequest
from cloudcontainer.images import toolchains
from cloudcontainer.sandbox.service import Resources, Status
from cloudcontainer.sandbox.templates import TEMPLATE_NAMES
from cloudcontainer.state import Services
from cloudcontainer.tasks import until_first_ends
from cloudcontainer.terminals.exec import ExecSpec, Execution, Output, OutputOverflow

router = APIRouter(prefix="/api/containers", tags=["containers"])

WS_POLICY_VIOLATION = 1008
# Messages waiting for one event-socket client. File contents are bounded by bytes on their own
# (watch_max_pending_bytes); this bounds the rest (answers, container events): a client that
# sends commands and reads no answer is dropped past it.
OUTBOX_MAX_MESSAGES = 4096
Outbox = wsio.Outbox[tuple[dict[str, Any], int]]
Glob = Annotated[str, Field(min_length=1, max_length=1024)]


class ResourcesIn(RequestModel):
    cpu: Annotated[float, Field(gt=0, le=64, description="Cores.")] = 1.0
    memory_mb: Annotated[int, Field(ge=64, le=262_144), WholeNumber] = 2048
    pids: Annotated[int, Field(ge=16, le=65_536), WholeNumber] = 1024
    disk_mb: Annotated[
        int | None,
        Field(
            ge=64,
            le=1_048_576,
            description="Disk quota of /home and /home/project, MiB; default: the server's.",
        ),
        WholeNumber,
    ] = None


class ToolchainIn(RequestModel):
    node: Annotated[
        str,
        # Documented as an enum; the service answers another with 422 unknown_toolchain.
        Field(
            min_length=1,
            max_length=8,
            json_schema_extra={"enum": list(toolchains.NODE_MAJORS)},
            description="Node.js major (GET /api/toolchains lists them); default the newest.",
        ),
    ] = toolchains.DEFAULT_NODE


class ContainerCreate(RequestModel):
    # PostgreSQL refuses text holding a NUL: without the pattern one gave a 500 there.
    project_id: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[^\x00]+$")]
    template: Annotated[
        str,
        # Documented as an enum; the service answers an unknown one with 422 unknown_template.
        Field(min_length=1, max_length=32, json_schema_extra={"enum": list(TEMPLATE_NAMES)}),
    ] = "node"
    resources: ResourcesIn | None = None
    toolchain: ToolchainIn | None = None
    ephemeral: bool = Field(
        False,
        description="One client session's container (`@cloudcontainer/api`'s boot): no "
        "snapshot of the project is restored into it or taken of it, and it is deleted once "
        "no event or terminal WebSocket has been open to it for `ephemeral_grace_seconds`.",
    )


class ToolchainOut(BaseModel):
    node: str = Field(description="The Node.js major first on the container's PATH.")


class ResourcesOut(BaseModel):
    cpu: float
    memory_mb: int
    pids: int
    disk_mb: int = Field(description="Disk quota, MiB; 0: none (the host's disk).")


class DiskOut(BaseModel):
    """The filesystem holding the workspace, as the sandbox sees it now."""

    total_bytes: int
    used_bytes: int
    free_bytes: int


class AgentOut(BaseModel):
    connected: bool
    version: str | None = None


class ContainerOut(BaseModel):
    id: str
    project_id: str
    owner_id: str
    status: str
    status_reason: str
    runtime: str
    template: str
    ephemeral: bool
    toolchain: ToolchainOut
    resources: ResourcesOut
    restart_count: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    agent: AgentOut
    ports: list[int] = Field(default_factory=list, description="TCP ports processes listen on.")
    disk: DiskOut | None = Field(None, description="Disk use; while the agent is connected.")


class ExecRequest(RequestModel):
    command: Annotated[str, Field(min_length=1, max_length=4096)]
    args: Annotated[list[Annotated[str, Field(max_length=131_072)]], Field(max_length=1024)] = []
    cwd: Annotated[str | None, Field(max_length=4096)] = None
    env: Annotated[dict[str, Annotated[str, Field(max_length=131_072)]], Field(max_length=256)] = {}
    timeout: Annotated[float, Field(gt=0, le=3600, description="Seconds before a kill.")] = 60
    stdin: Annotated[str | None, Field(max_length=1_048_576)] = None


async def _describe(services: Services, container: Container) -> ContainerOut:
    link: AgentClient | None = services.containers.links.get(container.id)
    connected = link is not None and not link.closed.is_set()
    ports: list[int] = []
    disk: DiskOut | None = None
    if connected and link is not None:
        with contextlib.suppress(AgentUnavailable, AgentOpError):
            ports = sorted({p["port"] for p in await listening_ports(link, timeout=2)})
        with contextlib.suppress(AgentUnavailable, AgentOpError):
            usage = await disk_usage(link, timeout=2)
            disk = DiskOut(total_bytes=usage["total"], used_bytes=usage["used"],
                           free_bytes=usage["free"])  # fmt: skip
    return ContainerOut(
        id=container.id, project_id=container.project_id, owner_id=container.owner_id,
        status=container.status, status_reason=container.status_reason,
        runtime=container.runtime, template=container.template, ephemeral=container.ephemeral,
        toolchain=ToolchainOut(node=container.node),
        resources=ResourcesOut(cpu=container.cpu, memory_mb=container.memory_mb,
                               pids=container.pids_limit, disk_mb=container.disk_mb),
        restart_count=container.restart_count, created_at=container.created_at,
        updated_at=container.updated_at, started_at=container.started_at,
        agent=AgentOut(connected=connected,
                       version=link.hello.get("version") if connected and link else None),
        ports=ports, disk=disk,
    )  # fmt: skip


Wait = Annotated[
    bool, Query(description="Answer once the container is running, stopped or failed.")
]


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_container(
    body: ContainerCreate, request: Request, principal: CurrentPrincipal, services: ServicesDep,
    wait: Wait = False,
) -> ContainerOut:  # fmt: skip
    """Create a container for a project; it starts in the background (or `wait=true`)."""
    resources = None
    if body.resources is not None:
        given = body.resources
        resources = Resources(given.cpu, given.memory_mb, given.pids, given.disk_mb)
    container = await services.containers.create(
        principal.user_id, body.project_id, body.template, resources,
        node=body.toolchain.node if body.toolchain else None, ephemeral=body.ephemeral,
    )  # fmt: skip
    await record(
        request, actions.CONTAINER_CREATED, principal, target_type="container",
        target_id=container.id, detail={"project_id": container.project_id,
                                        "template": container.template,
                                        "ephemeral": container.ephemeral},
    )  # fmt: skip
    if wait:
        container = await services.containers.wait_settled(principal.user_id, container.id)
    return await _describe(services, container)


@router.get("")
async def list_containers(
    principal: CurrentPrincipal,
    services: ServicesDep,
    all: Annotated[bool, Query(description="Admins only: everyone's containers.")] = False,
) -> list[ContainerOut]:
    if all and not principal.user.is_admin:
        raise Forbidden(
            "Listing every user's containers needs an administrator.", code="admin_required"
        )
    containers = await services.containers.list(None if all else principal.user_id)
    # Each running container's agent is asked for its ports: all at once, not in turn.
    return list(await asyncio.gather(*(_describe(services, c) for c in containers)))


@router.get("/{container_id}")
async def get_container(
    container_id: str, principal: CurrentPrincipal, services: ServicesDep
) -> ContainerOut:
    return await _describe(services, await services.containers.get(principal.user_id, container_id))


@router.delete("/{container_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_container(
    container_id: str, request: Request, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    """Destroy the container and its workspace. A second DELETE answers 404."""
    await services.containers.delete(principal.user_id, container_id)
    await record(request, actions.CONTAINER_DELETED, principal, target_type="container",
                 target_id=container_id)  # fmt: skip
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _after(services: Any, principal: Any, container: Container, wait: bool) -> ContainerOut:
    if wait:
        container = await services.containers.wait_settled(principal.user_id, container.id)
    return await _describe(services, container)


@router.post("/{container_id}/start", status_code=status.HTTP_202_ACCEPTED)
async def start_container(
    container_id: str, principal: CurrentPrincipal, services: ServicesDep, wait: Wait = False
) -> ContainerOut:
    container = await services.containers.start(principal.user_id, container_id)
    return await _after(services, principal, container, wait)


@router.post("/{container_id}/stop")
async def stop_container(
    container_id: str, principal: CurrentPrincipal, services: ServicesDep
) -> ContainerOut:
    """Stop every process; the workspace is kept."""
    container = await services.containers.stop(principal.user_id, container_id)
    return await _describe(services, container)


@router.post("/{container_id}/restart", status_code=status.HTTP_202_ACCEPTED)
async def restart_container(
    container_id: str, principal: CurrentPrincipal, services: ServicesDep, wait: Wait = False
) -> ContainerOut:
    """Stop and start again; running processes are started again with it."""
    container = await services.containers.restart(principal.user_id, container_id)
    return await _after(services, principal, container, wait)


@router.post(
    "/{container_id}/exec",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "NDJSON lines."}},
)
async def exec_command(
    container_id: str, body: ExecRequest, principal: CurrentPrincipal, services: ServicesDep
) -> StreamingResponse:
    """Run a command to completion. Answers NDJSON: `{"type": "stdout"|"stderr", "data"}`
    lines as output arrives, then `{"type": "exit", "code": N}` (a signal n gives 128+n;
    a timeout kills the command and adds `"timed_out": true`). A command the server's
    command policy denies is refused with 403 `command_denied`."""
    spec = ExecSpec(
        command=body.command, args=body.args, cwd=body.cwd, env=body.env, timeout=body.timeout,
        stdin=None if body.stdin is None else body.stdin.encode(),
    )  # fmt: skip
    execution = await services.exec.start(principal.user_id, container_id, spec)
    return StreamingResponse(_ndjson(execution), media_type="application/x-ndjson")


async def _ndjson(execution: Execution) -> AsyncIterator[bytes]:
    """The events as NDJSON lines; output as text, each stream decoded on its own."""
    decoders = {
        name: codecs.getincrementaldecoder("utf-8")(errors="replace")
        for name in ("stdout", "stderr")
    }
    try:
        async with contextlib.aclosing(execution.events()) as events:
            async for event in events:
                if isinstance(event, Output):
                    if text := decoders[event.stream].decode(event.data):
                        yield _line({"type": event.stream, "data": text})
                elif isinstance(event, OutputOverflow):
                    yield _line({"type": "error", "code": "client_too_slow", "message":
                                 f"More than {event.limit} bytes of output waited for this "
                                 "client; the command was killed."})  # fmt: skip
                else:
                    exit_line: dict[str, Any] = {"type": "exit", "code": event.code}
                    if event.timed_out:
                        exit_line["timed_out"] = True
                    yield _line(exit_line)
    except CloudContainerError as exc:
        yield _line({"type": "error", "code": exc.code, "message": exc.message})


def _line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode() + b"\n"


class WatchCommand(RequestModel):
    """Watch files: PARITY.md watch semantics, globs applied in the sandbox."""

    type: Literal["watch"]
    id: Annotated[str, Field(min_length=1, max_length=64)]
    include: Annotated[list[Glob], Field(max_length=100)] = []
    exclude: Annotated[list[Glob], Field(max_length=100)] = []
    content: bool = True
    since: Annotated[str | None, Field(max_length=64)] = None
    initial: bool = False


class UnwatchCommand(RequestModel):
    type: Literal["unwatch"]
    id: Annotated[str, Field(min_length=1, max_length=64)]


EventCommand = TypeAdapter(
    Annotated[WatchCommand | UnwatchCommand | CallCommand, Field(discriminator="type")]
)


@router.websocket("/{container_id}/events")
async def container_events(websocket: WebSocket, container_id: str, ticket: str = "") -> None:
    """Status changes, agent events (ports, process exits), file watches and file calls, as
    JSON frames. The client sends `watch`/`unwatch` commands and `call`s (api/calls.py); see
    docs/api.md for the whole protocol.
    `?ticket=` is from POST /api/auth/ws-ticket for this path; the socket is closed with 1008
    when the session or key behind it ends."""
    services: Services = websocket.app.state.services
    try:
        principal = await services.credentials.redeem_ws_ticket(ticket, websocket.url.path)
        container = await services.containers.get(principal.user_id, container_id)
    except CloudContainerError:
        await websocket.close(code=WS_POLICY_VIOLATION)
        return
    # Tracked from the ticket's check on: a logout while the socket opens still counts.
    with services.sockets.track(principal) as tracked:
        await _serve_events(websocket, services, principal.user_id, container, tracked)


async def _serve_events(
    websocket: WebSocket, services: Services, user_id: str, container: Container,
    tracked: OpenSocket,
) -> None:  # fmt: skip
    outbox: Outbox = wsio.Outbox(OUTBOX_MAX_MESSAGES)
    feed = WatchFeed(
        services.containers, user_id, container.id,
        lambda message, size: outbox.put((message, size)), services.metrics,
        max_pending_bytes=services.settings.watch_max_pending_bytes,
    )  # fmt: skip
    calls = Calls(services, user_id, container.id, lambda answer: outbox.put((answer, 0)))
    timeout = services.settings.client_send_timeout_seconds
    async with services.events.subscribe(container.id) as queue:
        await websocket.accept()
        outbox.put(({"type": "status", "status": container.status,
                     "reason": container.status_reason}, 0))  # fmt: skip
        try:
            with services.containers.hold(container.id):
                await until_first_ends(
                    _send_events(websocket, outbox, feed, calls, timeout),
                    _read_commands(websocket, feed, calls, outbox),
                    _pump_bus(queue, feed, outbox),
                    outbox.overflowed.wait(), tracked.wait(),
                )  # fmt: skip
            if outbox.overflowed.is_set():
                await wsio.drop(websocket)
            elif tracked.ended.is_set():
                with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                    await websocket.close(code=WS_POLICY_VIOLATION, reason=tracked.reason)
        finally:
            await calls.close()
            await feed.close()


async def _send_events(
    websocket: WebSocket, outbox: Outbox, feed: WatchFeed, calls: Calls, timeout: float
) -> None:
    """The only writer of the socket: messages in the order they were queued. A client that
    takes nothing for `timeout` seconds is dropped (api/wsio.py)."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message, size = await outbox.get()
            try:
                await wsio.send(websocket, json.dumps(message, separators=(",", ":")), timeout)
            except wsio.ClientNotReading:
                await wsio.drop(websocket)
                return
            if size:
                feed.sent(size)
            if message["type"] == "result":
                calls.sent()
            if message.get("type") == "status" and message.get("status") == Status.DELETED:
                await websocket.close(code=1000)
                return
            if outbox.empty():
                with contextlib.suppress(CloudContainerError, AgentUnavailable, AgentOpError):
                    await feed.caught_up()


async def _pump_bus(queue: asyncio.Queue[dict[str, Any]], feed: WatchFeed, outbox: Outbox) -> None:
    """Container events to the client; a container running again gets the watches back."""
    while True:
        event = await queue.get()
        outbox.put((event, 0))
        if event.get("type") == "status" and event.get("status") == Status.RUNNING:
            with contextlib.suppress(CloudContainerError, AgentUnavailable, AgentOpError):
                await feed.relink()


async def _read_commands(
    websocket: WebSocket, feed: WatchFeed, calls: Calls, outbox: Outbox
) -> None:
    """Client commands: watches answered in order, calls started in order (their answers
    come when done); returns when the client goes away."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        answer = await _command(feed, calls, message.get("text"))
        if answer is not None:
            outbox.put((answer, 0))


async def _command(feed: WatchFeed, calls: Calls, text: str | None) -> dict[str, Any] | None:
    if text is None:
        return _command_error(None, "invalid_command", "Commands are JSON text frames.")
    try:
        command = EventCommand.validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return _command_error(None, "invalid_command", f"{where}: {first['msg']}".lstrip(": "))
    if isinstance(command, CallCommand):
        await calls.start(command)
        return None
    try:
        if isinstance(command, WatchCommand):
            request = WatchRequest(
                id=command.id, include=command.include, exclude=command.exclude,
                content=command.content, since=command.since, initial=command.initial,
            )  # fmt: skip
            return await feed.watch(request)
        return await feed.unwatch(command.id)
    except CloudContainerError as exc:
        return _command_error(command.id, exc.code, exc.message)
    except (AgentUnavailable, AgentOpError) as exc:
        return _command_error(command.id, "agent_unavailable", str(exc))


def _command_error(command_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "id": command_id, "error": {"code": code, "message": message}}
