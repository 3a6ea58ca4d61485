"""TCP tunnels to servers inside the sandbox, through the gateway's transport
(agentlink/tunnels.py): bytes both ways, half-close, refusal, and flow control that keeps a
slow reader at either end from holding up anything but its own tunnel."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import unix_connect

from cloudcontainer.agent.protocol import (
    AUTH_HEADER,
    PROC_OUTPUT,
    TUNNEL_ACK,
    TUNNEL_DATA,
    TUNNEL_WINDOW,
    pack_frame,
    unpack_frame,
)
from cloudcontainer.agentlink import tunnels
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError
from cloudcontainer.agentlink.tunnels import TunnelTransport
from tests.agent.conftest import (
    SECRET,
    SYSTEM_PYTHON,
    WAIT_SECONDS,
    Events,
    RunningAgent,
    Stream,
    listen,
    until,
)
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


class Collector(Stream, asyncio.Protocol):
    """What the preview proxy would be: records a tunnel's bytes, EOF and end."""

    def __init__(self) -> None:
        Stream.__init__(self)
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.paused_writing = False

    def data_received(self, data: bytes) -> None:
        self.data.extend(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False


async def open_tunnel(
    client: AgentClient, port: int, **options: Any
) -> tuple[TunnelTransport, Collector]:
    """A tunnel through the gateway's own transport (agentlink/tunnels.py)."""
    transport, protocol = await tunnels.open_tunnel(client, port, Collector, **options)
    assert isinstance(protocol, Collector)
    return transport, protocol


async def http_get(client: AgentClient, port: int, path: str) -> bytes:
    transport, stream = await open_tunnel(client, port)
    transport.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    response = await stream.wait_eof()
    transport.write_eof()
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
        await open_tunnel(client, free_port())
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
        transport, stream = await open_tunnel(client, port, host=host)
        transport.write(b"ping")
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
        transport, stream = await open_tunnel(client, port, host=address)
        transport.write(b"hello own address")
        await stream.wait_for(b"hello own address")


async def test_half_close_lets_the_server_finish_then_the_tunnel_closes(
    client: AgentClient,
) -> None:
    events = Events(client)
    async with tcp_server(echo) as port:
        transport, stream = await open_tunnel(client, port)
        transport.write(b"last words")
        transport.write_eof()
        assert await stream.wait_eof() == b"last words"
        closed = await events.wait("tunnel.closed", tunnel_id=transport.tunnel_id)
        assert await stream.lost is None
    assert closed["reason"] == "eof"


async def test_large_payloads_cross_both_ways_intact(client: AgentClient) -> None:
    payload = os.urandom(8 * 1024 * 1024)
    async with tcp_server(echo) as port:
        transport, stream = await open_tunnel(client, port)
        transport.write(payload)  # buffered by the transport, sent a window at a time
        transport.write_eof()
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
        transport, stream = await open_tunnel(client, port)
        transport.close()
        await until(ended.is_set, "the server to see the connection end")
        closed = await events.wait("tunnel.closed", tunnel_id=transport.tunnel_id)
        assert await stream.lost is None
    assert closed["reason"] == "closed"
    with pytest.raises(AgentOpError) as caught:
        await client.call("tunnel.close", tunnel_id=transport.tunnel_id)
    assert caught.value.errno == "ENOENT"


async def test_server_closing_first_still_needs_the_clients_eof(client: AgentClient) -> None:
    events = Events(client)

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        writer.close()

    async with tcp_server(hang_up) as port:
        transport, stream = await open_tunnel(client, port)
        assert await stream.wait_eof() == b"bye"
        await client.call("ping")
        assert not events.matching("tunnel.closed")
        assert not stream.lost.done()
        transport.write_eof()
        await events.wait("tunnel.closed", tunnel_id=transport.tunnel_id)
        assert await stream.lost is None


async def test_a_server_resetting_the_connection_reaches_the_protocol_as_an_error(
    client: AgentClient,
) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with tcp_server(reset) as port:
        transport, stream = await open_tunnel(client, port)
        transport.write(b"boom")
        error = await asyncio.wait_for(stream.lost, WAIT_SECONDS)
    assert isinstance(error, ConnectionResetError)


async def test_a_session_cannot_use_another_sessions_tunnel(agent: RunningAgent) -> None:
    owner, other = await agent.connect(), await agent.connect()
    received = bytearray()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.extend(data)
        writer.close()

    async with tcp_server(record) as port:
        transport, _ = await open_tunnel(owner, port)
        tunnel_id = transport.tunnel_id
        await other.send_stream(TUNNEL_DATA, tunnel_id, b"intruder")
        await other.send_stream(TUNNEL_ACK, tunnel_id, (1 << 30).to_bytes(4, "big"))
        with pytest.raises(AgentOpError) as caught:
            await other.call("tunnel.close", tunnel_id=tunnel_id)
        transport.write(b"owner")
        transport.write_eof()
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
        _, stream = await open_tunnel(client, port)
        await client.aclose()
        await until(ended.is_set, "the server to see the connection end")
        assert isinstance(await stream.lost, ConnectionResetError)


# -- flow control: a slow reader at either end holds up its own tunnel and nothing else ----


@asynccontextmanager
async def raw_session(agent: RunningAgent) -> AsyncIterator[Any]:
    """A WebSocket to the agent that speaks the protocol by hand (and acknowledges nothing
    unless told to)."""
    assert agent.address.unix_path is not None
    headers = {AUTH_HEADER: f"Bearer {SECRET}"}
    async with unix_connect(
        agent.address.unix_path, uri="ws://agent/", additional_headers=headers, max_size=None,
    ) as ws:  # fmt: skip
        yield ws


def flood_server(stop: asyncio.Event, counter: list[int]) -> Handler:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = b"x" * 65536
        while not stop.is_set():
            writer.write(chunk)
            await writer.drain()
            counter[0] += len(chunk)
        writer.close()

    return flood


async def recv_until(ws: Any, want: Callable[[Any], bool]) -> tuple[int, Any]:
    """(tunnel bytes received meanwhile, the first message `want` accepts)."""
    received = 0
    while True:
        message = await asyncio.wait_for(ws.recv(), WAIT_SECONDS)
        if isinstance(message, bytes):
            kind, _, payload = unpack_frame(message)
            if kind == TUNNEL_DATA:
                received += len(payload)
        if want(message):
            return received, message


def answer_to(request_id: int) -> Callable[[Any], bool]:
    return lambda message: isinstance(message, str) and f'"id":{request_id},' in message


async def test_the_agent_sends_no_more_than_a_window_the_gateway_has_not_acknowledged(
    agent: RunningAgent,
) -> None:
    stop, sent = asyncio.Event(), [0]
    async with tcp_server(flood_server(stop, sent)) as port, raw_session(agent) as ws:
        await ws.send(json.dumps({"id": 1, "op": "tunnel.open", "args": {"port": port}}))
        received, reply = await recv_until(ws, answer_to(1))
        tunnel_id = json.loads(reply)["result"]["tunnel_id"]
        # Ping until a full window has come: the agent is stopped by the window, not by
        # us, and it still answers at once.
        for request_id in range(2, 1000):
            await ws.send(json.dumps({"id": request_id, "op": "ping", "args": {}}))
            got, _ = await recv_until(ws, answer_to(request_id))
            received += got
            if received >= TUNNEL_WINDOW:
                break
        assert received == TUNNEL_WINDOW
        # Without credit nothing more comes, whatever the server sent meanwhile: its bytes
        # wait in its socket, not in the agent.
        await until(lambda: sent[0] > 2 * TUNNEL_WINDOW, "the server to have sent more")
        await ws.send(json.dumps({"id": 5000, "op": "ping", "args": {}}))
        got, _ = await recv_until(ws, answer_to(5000))
        assert got == 0
        # Credit for half a window lets exactly half a window more through.
        await ws.send(pack_frame(TUNNEL_ACK, tunnel_id, (TUNNEL_WINDOW // 2).to_bytes(4, "big")))
        received = 0
        while received < TUNNEL_WINDOW // 2:
            got, _ = await recv_until(ws, lambda message: isinstance(message, bytes))
            received += got
        await ws.send(json.dumps({"id": 5001, "op": "ping", "args": {}}))
        got, _ = await recv_until(ws, answer_to(5001))
        assert received + got == TUNNEL_WINDOW // 2
        stop.set()


async def test_a_server_that_never_reads_holds_up_only_its_own_tunnel(
    agent: RunningAgent, client: AgentClient
) -> None:
    """The gateway sends a window, then buffers: the agent's session keeps serving file
    calls, terminal input and other tunnels, and the stalled tunnel is not aborted."""
    release = asyncio.Event()
    taken = bytearray()

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        while data := await reader.read(1 << 20):
            taken.extend(data)
        writer.close()

    payload = os.urandom(100 * 1024 * 1024)
    async with tcp_server(deaf) as deaf_port, tcp_server(echo) as echo_port:
        stalled, stalled_stream = await open_tunnel(client, deaf_port)
        stalled.write(payload)
        assert stalled_stream.paused_writing  # the proxy would stop reading its browser
        shell = await client.call("proc.spawn", command="cat", pty=True)
        typed = listen(client, PROC_OUTPUT, shell["proc_id"])
        other, other_stream = await open_tunnel(client, echo_port)
        for round_trip in range(20):
            word = f"keystroke-{round_trip}".encode()
            await client.send_input(shell["proc_id"], word)
            await typed.wait_for(word)
            other.write(b"hmr-" + word)
            await other_stream.wait_for(b"hmr-" + word)
            (agent.workspace / "file.txt").write_bytes(word)
            chunk = await client.call("fs.read", path="/file.txt")
            assert base64.b64decode(chunk["data"]) == word
        assert not stalled_stream.lost.done()
        # Once the server reads, every byte arrives, in order.
        release.set()
        stalled.write_eof()
        await until(lambda: len(taken) == len(payload), "the whole payload", timeout=60)
        assert taken == payload
        assert not stalled_stream.paused_writing


async def test_a_browser_that_stops_reading_a_download_stalls_only_that_download(
    agent: RunningAgent, client: AgentClient
) -> None:
    """The proxy pauses a tunnel's reading when its browser is slow: the agent then stops
    reading the dev server after a window, and everything else keeps moving."""
    stop, sent = asyncio.Event(), [0]
    async with tcp_server(flood_server(stop, sent)) as flood_port, tcp_server(echo) as echo_port:
        download, download_stream = await open_tunnel(client, flood_port)
        await download_stream.wait_for(b"x")
        download.pause_reading()
        delivered = len(download_stream.data)
        other, other_stream = await open_tunnel(client, echo_port)
        for round_trip in range(20):
            message = f"hmr-update-{round_trip}".encode()
            other.write(message)
            await other_stream.wait_for(message)
        assert len(download_stream.data) == delivered  # nothing reaches a paused protocol
        assert download.held_bytes() <= TUNNEL_WINDOW  # and the gateway holds one window
        download.resume_reading()
        await until(lambda: len(download_stream.data) > 8 * TUNNEL_WINDOW, "the download again")
        stop.set()
