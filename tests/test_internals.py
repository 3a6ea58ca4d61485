"""The libraries' private internals the gateway relies on (src/cloudcontainer/internals/) still
exist and behave as relied on. A failure here after an upgrade names what moved: fix the one
internals module, or pin the library back. A version outside the verified sets only warns; the
behavioural checks are what decide."""

from __future__ import annotations

import asyncio
import inspect
import socket
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from starlette import _exception_handler as starlette_exception_handler
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from cloudcontainer.coalesce import CoalescingTransport
from cloudcontainer.internals import fastapi as fastapi_internals
from cloudcontainer.internals import uvicorn as uvicorn_internals
from cloudcontainer.internals import websockets as websockets_internals
from cloudcontainer.internals.fastapi import (
    add_headers,
    exception_handler_for,
    route_template,
    set_plain_handler,
)
from cloudcontainer.internals.uvicorn import CoalescingHttpProtocol, DroppingWebSocketProtocol
from cloudcontainer.internals.websockets import dispatching_connection
from tests.support.net import free_port


class UnverifiedVersion(UserWarning):
    """A library version the internals modules were not verified on (the tests decide)."""


@pytest.mark.filterwarnings("default::tests.test_internals.UnverifiedVersion")
@pytest.mark.parametrize(
    ("library", "verified"),
    [
        ("uvicorn", uvicorn_internals.VERIFIED_VERSIONS),
        ("websockets", websockets_internals.VERIFIED_VERSIONS),
        ("fastapi", fastapi_internals.VERIFIED_VERSIONS["fastapi"]),
        ("starlette", fastapi_internals.VERIFIED_VERSIONS["starlette"]),
    ],
)
def test_installed_versions_were_verified(library: str, verified: frozenset[str]) -> None:
    installed = version(library)
    if installed not in verified:
        warnings.warn(
            UnverifiedVersion(
                f"{library} {installed} is not among the versions cloudcontainer.internals was "
                f"verified on ({', '.join(sorted(verified))}): if the other tests here pass, "
                "add it to VERIFIED_VERSIONS"
            ),
            stacklevel=1,
        )


# -- uvicorn ---------------------------------------------------------------------------------


class RecordingWebSocketProtocol(DroppingWebSocketProtocol):
    """The gateway's protocol, noting when uvicorn calls the hooks it overrides."""

    instances: list[RecordingWebSocketProtocol] = []
    asgi_done = asyncio.Event()
    keepalive_timed_out = asyncio.Event()

    async def run_asgi(self) -> None:
        self.instances.append(self)
        await super().run_asgi()
        self.asgi_done.set()

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self.keepalive_timed_out.set()


@asynccontextmanager
async def uvicorn_server(app: Any, **options: Any) -> AsyncIterator[uvicorn.Server]:
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="off",
        http=CoalescingHttpProtocol, ws=RecordingWebSocketProtocol, **options,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    try:
        yield server
    finally:
        server.should_exit = True
        await task


async def test_uvicorn_http_protocol_writes_through_the_transport_given_to_connection_made() -> (
    None
):
    seen: list[Any] = []
    servers: list[uvicorn.Server] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.extend(servers[0].server_state.connections)
        await PlainTextResponse("through the coalescing transport")(scope, receive, send)

    async with uvicorn_server(app) as server:
        servers.append(server)
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{server.config.port}/")
    assert response.text == "through the coalescing transport"
    assert [type(protocol) for protocol in seen] == [CoalescingHttpProtocol]
    assert isinstance(seen[0].transport, CoalescingTransport), (
        "uvicorn's HttpToolsProtocol no longer keeps the transport given to connection_made"
    )


async def test_uvicorn_websocket_protocol_runs_the_app_in_run_asgi_and_keeps_its_state() -> None:
    RecordingWebSocketProtocol.instances.clear()
    RecordingWebSocketProtocol.asgi_done.clear()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    async with uvicorn_server(app) as server:
        async with connect(f"ws://127.0.0.1:{server.config.port}/") as websocket:
            with pytest.raises(ConnectionClosed):
                await websocket.recv()
        async with asyncio.timeout(5):
            await RecordingWebSocketProtocol.asgi_done.wait()  # run_asgi returned after the app
        (protocol,) = RecordingWebSocketProtocol.instances
        assert protocol.loop is asyncio.get_running_loop()
        assert isinstance(protocol.disconnected, bool)
        assert isinstance(protocol.transport.get_write_buffer_size(), int)


async def test_uvicorn_calls_keepalive_timeout_when_a_ping_goes_unanswered() -> None:
    RecordingWebSocketProtocol.keepalive_timed_out.clear()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()  # until the disconnect

    async with uvicorn_server(app, ws_ping_interval=0.05, ws_ping_timeout=0.05) as server:
        loop = asyncio.get_running_loop()
        with socket.create_connection(("127.0.0.1", server.config.port)) as raw:
            raw.setblocking(False)
            await loop.sock_sendall(raw, (
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ))  # fmt: skip
            assert (await loop.sock_recv(raw, 4096)).startswith(b"HTTP/1.1 101")
            async with asyncio.timeout(5):  # a client that never answers the ping
                await RecordingWebSocketProtocol.keepalive_timed_out.wait()


# -- websockets ------------------------------------------------------------------------------


@asynccontextmanager
async def websockets_server(
    handler: Callable[[ServerConnection], Awaitable[None]],
) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/"


async def test_websockets_connection_hands_over_whole_messages_as_parsed() -> None:
    async def handler(connection: ServerConnection) -> None:
        await connection.send("text")
        await connection.send(b"\x00binary")
        await connection.send(["frag", "mented"])  # one message in three frames
        await connection.wait_closed()

    received: list[str | bytes] = []
    async with websockets_server(handler) as url:
        connection_class = dispatching_connection(received.append)
        async with connect(url, create_connection=connection_class) as websocket:
            assert isinstance(websocket, connection_class)
            assert isinstance(websocket.transport, CoalescingTransport), (
                "websockets' connection_made no longer keeps the transport it is given"
            )
            async with asyncio.timeout(5):
                while len(received) < 3:
                    await asyncio.sleep(0.01)
    assert received == ["text", b"\x00binary", "fragmented"], (
        "ClientConnection.process_event no longer sees every frame as a websockets.frames.Frame"
    )


async def test_websockets_connection_ends_on_a_message_it_cannot_take() -> None:
    async def handler(connection: ServerConnection) -> None:
        await connection.send(b"\xff", text=True)  # not UTF-8
        await connection.wait_closed()

    async with websockets_server(handler) as url:
        connection_class = dispatching_connection(lambda message: None)
        async with connect(url, create_connection=connection_class) as websocket:
            async with asyncio.timeout(5):
                await websocket.wait_closed()


async def test_websockets_connection_refuses_a_message_over_max_size() -> None:
    async def handler(connection: ServerConnection) -> None:
        await connection.send(["a" * 600, "b" * 600])  # frames each under, together over
        await connection.wait_closed()

    received: list[str | bytes] = []
    async with websockets_server(handler) as url:
        connection_class = dispatching_connection(received.append)
        async with connect(url, create_connection=connection_class, max_size=1000) as websocket:
            async with asyncio.timeout(5):
                await websocket.wait_closed()
    assert websocket.protocol.close_sent is not None
    assert websocket.protocol.close_sent.code == 1009  # message too big
    assert received == []


# -- FastAPI and Starlette -------------------------------------------------------------------


def refuse() -> None:
    raise AssertionError("FastAPI's handler solved a dependency of a plain route")


async def test_fastapi_route_answers_with_the_plain_handler_set_on_it() -> None:
    app = FastAPI()

    @app.get("/plain/{name}", dependencies=[Depends(refuse)])
    async def documented(name: str) -> dict[str, str]:
        return {"name": name}

    async def respond(request: Request) -> Response:
        return PlainTextResponse(f"plain {request.path_params['name']}")

    (route,) = [r for r in app.router.routes if isinstance(r, APIRoute) and r.path.startswith("/p")]
    set_plain_handler(route, respond)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        response = await client.get("/plain/x")
    assert response.text == "plain x", "Route.handle no longer calls APIRoute.app"
    assert "/plain/{name}" in app.openapi()["paths"]


class Base(Exception):
    pass


class Child(Base):
    pass


async def handled(request: Request, exc: Exception) -> Response:
    return PlainTextResponse(type(exc).__name__)


@pytest.mark.parametrize("exc", [Child(), Base(), KeyError(), RuntimeError()], ids=type)
def test_exception_handler_lookup_matches_starlettes(exc: Exception) -> None:
    app = FastAPI(exception_handlers={Base: handled, LookupError: handled, Exception: handled})
    ours = exception_handler_for({"app": app}, exc)
    # Starlette's exception middleware gets every handler but the catch-all one.
    middleware_handlers = {k: v for k, v in app.exception_handlers.items() if k is not Exception}
    theirs = starlette_exception_handler._lookup_exception_handler(middleware_handlers, exc)
    assert ours is theirs


def test_response_headers_raw_is_the_live_header_list() -> None:
    response = Response("body")
    extra = Response()
    extra.set_cookie("a", "1")
    extra.set_cookie("b", "2")
    add_headers(response, extra)
    assert len(response.headers.getlist("set-cookie")) == 2, (
        "MutableHeaders.raw is no longer the header list itself"
    )


async def test_the_route_template_is_in_the_scope_after_routing() -> None:
    app = FastAPI()
    templates: list[str | None] = []

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    async def outermost(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, receive, send)
        templates.append(route_template(scope))

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=outermost), base_url="http://test"
    ) as client:
        assert (await client.get("/items/7")).status_code == 200
        assert (await client.get("/nowhere")).status_code == 404
    assert templates == ["/items/{item_id}", None], "scope['route'] is no longer set by routing"


def test_the_overridden_hooks_keep_their_signatures() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.asyncio.client import ClientConnection

    expectations = [
        (HttpToolsProtocol.connection_made, ["self", "transport"]),
        (WebSocketsSansIOProtocol.run_asgi, ["self"]),
        (WebSocketsSansIOProtocol.keepalive_timeout, ["self"]),
        (ClientConnection.process_event, ["self", "event"]),
        (ClientConnection.connection_made, ["self", "transport"]),
    ]
    for function, parameters in expectations:
        assert list(inspect.signature(function).parameters) == parameters, function.__qualname__
    assert inspect.iscoroutinefunction(WebSocketsSansIOProtocol.run_asgi)
