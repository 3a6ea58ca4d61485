"""TCP tunnels to servers inside the sandbox: bytes both ways, half-close, refusal, backpressure."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import unix_connect

from cloudcontainer.agent.protocol import (
    AUTH_HEADER,
    TUNNEL_DATA,
    TUNNEL_EOF,
    pack_frame,
    unpack_frame,
)
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError
from tests.agent.conftest import SECRET, SYSTEM_PYTHON, Events, RunningAgent, Stream, listen, until
from tests.support.net import free_port

SERVE = (
    "import http.server as h, sys; h.ThreadingHTTPServer.request_queue_size = 128;"
    "h.test(h.SimpleHTTPRequestHandler, h.ThreadingHTTPServer, port=int(sys.argv[1]),"
    " bind='127.0.0.1')"
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def tcp_server(handler: Handler, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """A server in the test process; the agent shares the host's network, so it can dial it."""
    server = await asyncio.start_server(handler, host, 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def http_server(client: AgentClient, agent: RunningAgent) -> int:
    """python's http.server, spawned by the agent, serving the workspace; returns its port."""
    (agent.workspace / "hello.txt").write_bytes(b"hello through the tunnel\n")
    events = Events(client)
    port = free_port()
    # `python -m http.server` listens with a backlog of 5: many tunnels dialling at once would
    # see SYNs dropped and retried for seconds, like any client would.
    await client.call("proc.spawn", command=SYSTEM_PYTHON, args=["-c", SERVE, str(port)])
    await events.wait("port", port=port, state="open")
    return port


async def open_tunnel(client: AgentClient, port: int, **options: Any) -> tuple[int, Stream]:
    tunnel_id: int = (await client.call("tunnel.open", port=port, **options))["tunnel_id"]
    return tunnel_id, listen(client, TUNNEL_DATA, tunnel_id, eof_kind=TUNNEL_EOF)


async def http_get(client: AgentClient, port: int, path: str) -> bytes:
    tunnel_id, stream = await open_tunnel(client, port)
    request = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    await client.send_stream(TUNNEL_DATA, tunnel_id, request)
    response = await stream.wait_eof()
    await client.send_stream(TUNNEL_EOF, tunnel_id, b"")
    return response


async def test_http_get_through_a_tunnel_returns_the_servers_bytes(
    agent: RunningAgent, client: AgentClient
) -> None:
    port = await http_server(client, agent)
    response = await http_get(client, port, "/hello.txt")
    assert response.startswith(b"HTTP/1.0 200 OK\r\n")
    assert response.endswith(b"\r\n\r\nhello through the tunnel\n")


async def test_many_concurrent_tunnels_each_get_their_own_response(
    agent: RunningAgent, client: AgentClient
) -> None:
    for index in range(40):
        (agent.workspace / f"file{index}.txt").write_text(
            f"content of file {index}\n" * (index + 1)
        )
    port = await http_server(client, agent)
    responses = await asyncio.gather(*(http_get(client, port, f"/file{i}.txt") for i in range(40)))
    for index, response in enumerate(responses):
        assert response.endswith(b"\r\n\r\n" + f"content of file {index}\n".encode() * (index + 1))


async def test_tunnel_to_a_closed_port_is_econnrefused(client: AgentClient) -> None:
    with pytest.raises(AgentOpError) as caught:
        await client.call("tunnel.open", port=free_port())
    assert caught.value.errno == "ECONNREFUSED"


@pytest.mark.parametrize("host", ["192.0.2.1", "8.8.8.8", "2001:db8::1", "example.com", "10.0.0.1"])
async def test_tunnel_to_a_host_outside_the_sandbox_is_eacces(
    client: AgentClient, host: str
) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with tcp_server(refuse) as port:
        with pytest.raises(AgentOpError) as caught:
            await client.call("tunnel.open", port=port, host=host)
    assert caught.value.errno == "EACCES"


@pytest.mark.parametrize("port", [0, 65536, -1, "80", True])
async def test_tunnel_to_an_invalid_port_is_einval(client: AgentClient, port: Any) -> None:
    with pytest.raises(AgentOpError) as caught:
        await client.call("tunnel.open", port=port)
    assert caught.value.errno == "EINVAL"


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then close."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.mark.parametrize(
    ("bind", "host"),
    [
        ("0.0.0.0", "127.0.0.1"),
        ("0.0.0.0", "localhost"),
        ("0.0.0.0", "0.0.0.0"),
        ("0.0.0.0", "127.0.0.2"),
        ("::1", "::1"),
        ("::", "::"),
    ],
)
async def test_tunnel_to_a_loopback_address_connects(
    client: AgentClient, bind: str, host: str
) -> None:
    async with tcp_server(echo, host=bind) as port:
        tunnel_id, stream = await open_tunnel(client, port, host=host)
        await client.send_stream(TUNNEL_DATA, tunnel_id, b"ping")
        await stream.wait_for(b"ping")


def own_address() -> str | None:
    """A non-loopback address of this host, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


async def test_tunnel_to_the_sandboxs_own_address_connects(client: AgentClient) -> None:
    address = own_address()
    if address is None:
        pytest.skip("this host has no non-loopback address")
    async with tcp_server(echo, host=address) as port:
        tunnel_id, stream = await open_tunnel(client, port, host=address)
        await client.send_stream(TUNNEL_DATA, tunnel_id, b"hello own address")
        await stream.wait_for(b"hello own address")


async def test_half_close_lets_the_server_finish_then_the_tunnel_closes(
    client: AgentClient,
) -> None:
    events = Events(client)
    async with tcp_server(echo) as port:
        tunnel_id, stream = await open_tunnel(client, port)
        await client.send_stream(TUNNEL_DATA, tunnel_id, b"last words")
        await client.send_stream(TUNNEL_EOF, tunnel_id, b"")
        assert await stream.wait_eof() == b"last words"
        closed = await events.wait("tunnel.closed", tunnel_id=tunnel_id)
    assert closed["reason"] == "eof"


async def test_large_payloads_cross_both_ways_intact(client: AgentClient) -> None:
    payload = os.urandom(8 * 1024 * 1024)
    async with tcp_server(echo) as port:
        tunnel_id, stream = await open_tunnel(client, port)
        for offset in range(0, len(payload), 65536):
            await client.send_stream(TUNNEL_DATA, tunnel_id, payload[offset : offset + 65536])
        await client.send_stream(TUNNEL_EOF, tunnel_id, b"")
        assert await stream.wait_eof() == payload


async def test_bytes_a_server_sends_first_are_not_lost(client: AgentClient) -> None:
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    async with tcp_server(banner) as port:
        _, stream = await open_tunnel(client, port)
        await stream.wait_for(b"220 ready\r\n")


async def test_tunnel_close_ends_the_connection_and_announces_it(client: AgentClient) -> None:
    events = Events(client)
    ended = asyncio.Event()

    async def wait_for_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        ended.set()
        writer.close()

    async with tcp_server(wait_for_eof) as port:
        tunnel_id, _ = await open_tunnel(client, port)
        await client.call("tunnel.close", tunnel_id=tunnel_id)
        await until(ended.is_set, "the server to see the connection end")
        closed = await events.wait("tunnel.closed", tunnel_id=tunnel_id)
    assert closed["reason"] == "closed"
    with pytest.raises(AgentOpError) as caught:
        await client.call("tunnel.close", tunnel_id=tunnel_id)
    assert caught.value.errno == "ENOENT"


async def test_server_closing_first_still_needs_the_clients_eof(client: AgentClient) -> None:
    events = Events(client)

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        writer.close()

    async with tcp_server(hang_up) as port:
        tunnel_id, stream = await open_tunnel(client, port)
        assert await stream.wait_eof() == b"bye"
        await client.call("ping")
        assert not events.matching("tunnel.closed")
        await client.send_stream(TUNNEL_EOF, tunnel_id, b"")
        await events.wait("tunnel.closed", tunnel_id=tunnel_id)


async def test_a_session_cannot_use_another_sessions_tunnel(agent: RunningAgent) -> None:
    owner, other = await agent.connect(), await agent.connect()
    received = bytearray()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.extend(data)
        writer.close()

    async with tcp_server(record) as port:
        tunnel_id, _ = await open_tunnel(owner, port)
        await other.send_stream(TUNNEL_DATA, tunnel_id, b"intruder")
        with pytest.raises(AgentOpError) as caught:
            await other.call("tunnel.close", tunnel_id=tunnel_id)
        await owner.send_stream(TUNNEL_DATA, tunnel_id, b"owner")
        await owner.send_stream(TUNNEL_EOF, tunnel_id, b"")
        await until(lambda: received == b"owner", "the owner's bytes")
    assert caught.value.errno == "ENOENT"


async def test_tunnels_close_when_their_session_disconnects(agent: RunningAgent) -> None:
    client = await agent.connect()
    ended = asyncio.Event()

    async def wait_for_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        ended.set()
        writer.close()

    async with tcp_server(wait_for_eof) as port:
        await open_tunnel(client, port)
        await client.aclose()
        await until(ended.is_set, "the server to see the connection end")


async def test_tunnel_stops_reading_the_server_while_the_session_is_congested(
    agent: RunningAgent,
) -> None:
    """A gateway that stops reading must not make the agent buffer a flood without bound."""
    sent = 0
    stop = asyncio.Event()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        chunk = b"x" * 65536
        while not stop.is_set():
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
        writer.close()

    assert agent.address.unix_path is not None
    headers = {AUTH_HEADER: f"Bearer {SECRET}"}
    async with (
        tcp_server(flood) as port,
        unix_connect(
            agent.address.unix_path,
            uri="ws://agent/",
            additional_headers=headers,
            max_size=None,
            max_queue=4,
        ) as ws,  # fmt: skip
    ):
        await ws.send(json.dumps({"id": 1, "op": "tunnel.open", "args": {"port": port}}))
        reply = json.loads(await ws.recv())
        tunnel_id = reply["result"]["tunnel_id"]
        # Stop reading the WebSocket until the flood stalls (nothing sent for a while).
        last = -1
        while sent != last:
            last = sent
            await asyncio.sleep(0.5)
        assert 0 < sent < 64 * 1024 * 1024
        stop.set()
        # Reading again drains everything, in order and without loss.
        await ws.send(json.dumps({"id": 2, "op": "ping", "args": {}}))
        received = 0
        while True:
            message = await ws.recv()
            if isinstance(message, str):
                continue
            kind, channel, payload = unpack_frame(message)
            assert channel == tunnel_id
            if kind == TUNNEL_EOF:
                break
            assert kind == TUNNEL_DATA
            assert payload == b"x" * len(payload)
            received += len(payload)
        assert received == sent
        await ws.send(pack_frame(TUNNEL_EOF, tunnel_id, b""))
