"""`/api/containers/{id}/terminals`: PTY terminals that outlive their connections.

The WebSocket protocol (docs/terminals.md): binary frames are terminal bytes both ways; text
frames are JSON control messages. On attach the server sends `{"type": "attached", "terminal"}`
(with the size to restore), then the scrollback, then live output; `{"type": "exit", "code"}`
when the process ends, then it closes. The client may send `{"type": "resize", "cols", "rows"}`.
"""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Response, WebSocket, status
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.websockets import WebSocketDisconnect

from cloudcontainer.api import wsio
from cloudcontainer.api.deps import CurrentPrincipal, ServicesDep
from cloudcontainer.api.schemas import RequestModel, WholeNumber
from cloudcontainer.errors import CloudContainerError
from cloudcontainer.state import Services
from cloudcontainer.tasks import until_first_ends
from cloudcontainer.terminals.service import Hub, TerminalClient, TerminalSpec

router = APIRouter(prefix="/api/containers/{container_id}/terminals", tags=["terminals"])

WS_POLICY_VIOLATION = 1008
WS_INTERNAL_ERROR = 1011
Size = Annotated[int, Field(ge=1, le=1000), WholeNumber]
# Colours work in every program that looks: the agent sets TERM for PTYs, and this says so too.
COLOUR_ENV = {"TERM": "xterm-256color", "COLORTERM": "truecolor"}


class TerminalCreate(RequestModel):
    command: Annotated[
        str,
        Field(
            min_length=1,
            max_length=4096,
            description="The program on the PTY. `jsh` (the default) is bash with WebContainer's "
            "prompt and the history shared by the container's terminals; `/bin/jsh` with "
            "`--osc` is the bolt shell (docs/terminals.md). Any other program runs as it is: "
            "`bash`, `sh`, `zsh` if the image has it, `node`, ...",
        ),
    ] = "jsh"
    args: Annotated[list[Annotated[str, Field(max_length=131_072)]], Field(max_length=1024)] = []
    cwd: Annotated[str | None, Field(max_length=4096)] = None
    env: Annotated[dict[str, Annotated[str, Field(max_length=131_072)]], Field(max_length=256)] = {}
    cols: Size = 80
    rows: Size = 24


class TerminalOut(BaseModel):
    id: str
    command: str
    args: list[str]
    cwd: str
    cols: int
    rows: int
    state: Literal["running", "exited"]
    exit_code: int | None
    started_at: float


class Resize(RequestModel):
    type: Literal["resize"]
    cols: Size
    rows: Size


ControlMessage = TypeAdapter(Resize)


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_terminal(
    container_id: str, body: TerminalCreate, principal: CurrentPrincipal, services: ServicesDep
) -> TerminalOut:
    """Start a program on a new PTY (`jsh`, that is bash, by default). It runs until it exits
    or is deleted, whoever is attached."""
    spec = TerminalSpec(
        command=body.command, args=body.args, cwd=body.cwd, env={**COLOUR_ENV, **body.env},
        cols=body.cols, rows=body.rows,
    )  # fmt: skip
    return TerminalOut(**await services.terminals.create(principal.user_id, container_id, spec))


@router.get("")
async def list_terminals(
    container_id: str, principal: CurrentPrincipal, services: ServicesDep
) -> list[TerminalOut]:
    """Running and recently exited terminals."""
    terminals = await services.terminals.list(principal.user_id, container_id)
    return [TerminalOut(**terminal) for terminal in terminals]


@router.get("/{terminal_id}")
async def get_terminal(
    container_id: str, terminal_id: str, principal: CurrentPrincipal, services: ServicesDep
) -> TerminalOut:
    return TerminalOut(**await services.terminals.get(principal.user_id, container_id, terminal_id))


@router.delete("/{terminal_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_terminal(
    container_id: str, terminal_id: str, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    """Kill the terminal's whole process group; attached clients get `exit`."""
    await services.terminals.kill(principal.user_id, container_id, terminal_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.websocket("/{terminal_id}")
async def attach_terminal(
    websocket: WebSocket, container_id: str, terminal_id: str, ticket: str = ""
) -> None:
    """Attach to a terminal (`?ticket=` from POST /api/auth/ws-ticket for this path); see
    docs/terminals.md. Closed with 1008 when the session or key behind the ticket ends."""
    services: Services = websocket.app.state.services
    client = TerminalClient()
    try:
        principal = await services.credentials.redeem_ws_ticket(ticket, websocket.url.path)
        # Tracked from the ticket's check on: a logout while the terminal attaches still counts.
        with services.sockets.track(principal) as tracked:
            attach = services.terminals.attach(principal.user_id, container_id, terminal_id, client)
            async with attach as (hub, terminal):
                await websocket.accept()
                with services.containers.hold(container_id):
                    attached = {"type": "attached", "terminal": terminal, "offset": client.offset}
                    await websocket.send_text(_json(attached))
                    if terminal["state"] == "exited":  # its exit event went by before this client
                        client.put({"type": "exit", "code": terminal["exit_code"]})
                    timeout = services.settings.client_send_timeout_seconds
                    await until_first_ends(
                        _send_output(websocket, hub, client, timeout), _read_input(websocket, hub),
                        tracked.wait(),
                    )  # fmt: skip
                if tracked.ended.is_set():
                    await _close(websocket, WS_POLICY_VIOLATION, tracked.reason)
    except CloudContainerError:
        if websocket.client_state.name == "CONNECTING":
            await websocket.close(code=WS_POLICY_VIOLATION)
            return
        await _close(websocket, WS_INTERNAL_ERROR)


async def _send_output(
    websocket: WebSocket, hub: Hub, client: TerminalClient, timeout: float
) -> None:
    """The only writer of output. A client too slow for the output is resynchronised (its
    queue is bounded, see terminals/service.py); one that takes nothing for `timeout` seconds
    is dropped (api/wsio.py)."""
    try:
        while True:
            item = await client.next()
            if item is None:
                await hub.resync(client)
            elif isinstance(item, bytes):
                await wsio.send(websocket, item, timeout)
            else:
                await wsio.send(websocket, _json(item), timeout)
                if item["type"] in ("exit", "error"):
                    await _close(websocket, 1000 if item["type"] == "exit" else WS_INTERNAL_ERROR)
                    return
    except wsio.ClientNotReading:
        await wsio.drop(websocket)


async def _read_input(websocket: WebSocket, hub: Hub) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("bytes") is not None:
            await hub.type(message["bytes"])
        elif message.get("text") is not None:
            await _control(websocket, hub, message["text"])


async def _control(websocket: WebSocket, hub: Hub, text: str) -> None:
    try:
        command = ControlMessage.validate_json(text)
    except ValidationError as exc:
        await websocket.send_text(_json({
            "type": "error", "code": "bad_message",
            "message": "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                 for e in exc.errors()) or "not a control message",
        }))  # fmt: skip
        return
    await hub.resize(command.cols, command.rows)


async def _close(websocket: WebSocket, code: int, reason: str | None = None) -> None:
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # the client closed first
        await websocket.close(code=code, reason=reason)


def _json(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))
