"""Real upstream servers for the preview proxy tests: raw asyncio, uvicorn (ASGI), websockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from websockets.asyncio.server import ServerConnection, serve

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class Upstream:
    """A running upstream: its port and what it saw."""

    port: int
    connections: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)


def dialer(port: int) -> Callable[[Callable[[], asyncio.Protocol]], Awaitable[Any]]:
    """The proxy's dialer for a loopback port."""

    async def dial(factory: Callable[[], asyncio.Protocol]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.create_connection(factory, "127.0.0.1", port)

    return dial


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[Upstream]:
    """An asyncio stream server running `handler` per connection."""
    tasks: set[asyncio.Task[None]] = set()
    writers: set[asyncio.StreamWriter] = set()
    upstream = Upstream(port=0)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream.connections += 1
        writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # Cancelled at teardown: ending normally keeps asyncio's server callback quiet.
            pass
        finally:
            tasks.discard(task)
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    try:
        yield upstream
    finally:
        server.close()
        for writer in list(writers):
            writer.transport.abort()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    """One request head: its request line and its headers (names lower-cased)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


@asynccontextmanager
async def asgi_server(app: Asgi) -> AsyncIterator[Upstream]:
    """uvicorn serving `app` on a free loopback port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Upstream(port=port)
    finally:
        server.should_exit = True
        await task


async def read_body(receive: Receive) -> bytes:
    """The whole request body of an ASGI request."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def echo_app(seen: list[dict[str, Any]]) -> Asgi:
    """Answers every request with what it received, as JSON; `seen` records each."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        record = {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode(),
            "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
            "body": body.decode("latin-1"),
            "client_port": scope["client"][1],
        }
        seen.append(record)
        payload = json.dumps(record).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    return app


@asynccontextmanager
async def ws_server() -> AsyncIterator[Upstream]:
    """A websockets echo server; it records each handshake's path and subprotocol."""
    upstream = Upstream(port=0)

    async def handler(conn: ServerConnection) -> None:
        upstream.connections += 1
        upstream.requests.append(
            {
                "path": conn.request.path if conn.request else "",
                "subprotocol": conn.subprotocol,
                "headers": dict(conn.request.headers) if conn.request else {},
            }
        )
        async for message in conn:
            await conn.send(message)

    async with serve(handler, "127.0.0.1", 0, subprotocols=["vite-hmr", "vite-ping"]) as server:
        upstream.port = next(iter(server.sockets)).getsockname()[1]
        yield upstream
