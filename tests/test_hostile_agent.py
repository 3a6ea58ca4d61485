"""An agent that sends garbage (issue 9: the agent is the tenant's). The gateway answers clear
JSON errors, never a 500; it drops what breaks the protocol and stays up for everyone else;
it never buffers more than the link's message limit; what was written before stays intact.

The hostile agent is a small WebSocket server speaking the agent protocol on a unix socket,
as the real agent does; its answers are scripted per test. The first tests drive the gateway's
AgentClient against it directly; the last ones run the whole gateway with real sandboxes and
put the hostile agent in place of one sandbox's agent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import resource
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, unix_serve
from websockets.exceptions import ConnectionClosed

from cloudcontainer.agent.protocol import (
    MAX_MESSAGE_BYTES,
    PROC_OUTPUT,
    READ_CHUNK_BYTES,
    pack_frame,
)
from cloudcontainer.agentlink.client import ORPHAN_FRAMES, AgentAddress, AgentClient
from cloudcontainer.agentlink.errors import AgentOpError, AgentProtocolError, AgentUnavailable
from cloudcontainer.agentlink.files import read_file
from cloudcontainer.errors import PayloadTooLarge
from cloudcontainer.terminals.service import MAX_OPEN_REPORTS
from tests.conftest import Api
from tests.sandbox_helpers import new_container

Reply = Callable[[ServerConnection, int, str, dict[str, Any]], Awaitable[None]]
HELLO = {"version": "0", "protocol": 1, "pid": 1, "uid": 1000, "python": "3.11.0",
         "workspace": "/home/project", "started_at": 1.0}  # fmt: skip
ENTRY = {"path": "/home/project/a.txt", "name": "a.txt", "type": "file", "size": 3,
         "mtime": 1.0, "mode": 0o644, "ino": 7}  # fmt: skip


async def answer(ws: ServerConnection, request_id: int, result: Any) -> None:
    await ws.send(json.dumps({"id": request_id, "ok": True, "result": result}))


class HostileAgent:
    """Answers hello and ping as an agent does; every other op with `reply` (by default: a
    plain answer of null)."""

    def __init__(self) -> None:
        self.reply: Reply = lambda ws, request_id, op, args: answer(ws, request_id, None)
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.connections: list[ServerConnection] = []

    async def handle(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        with contextlib.suppress(ConnectionClosed):
            await self._serve(ws)

    async def _serve(self, ws: ServerConnection) -> None:
        async for message in ws:
            request = json.loads(message)
            op, args, request_id = request["op"], request["args"], request["id"]
            self.requests.append((op, args))
            if op == "hello":
                await answer(ws, request_id, HELLO)
            elif op == "ping":
                await answer(ws, request_id, {"cpu_seconds": 0.0, "time": time.time()})
            else:
                await self.reply(ws, request_id, op, args)


@asynccontextmanager
async def hostile_agent(tmp_path: Path) -> AsyncIterator[tuple[HostileAgent, AgentClient]]:
    agent = HostileAgent()
    path = str(tmp_path / "hostile.sock")
    async with unix_serve(agent.handle, path, max_size=None, compression=None):
        client = AgentClient(AgentAddress(unix_path=path), "secret")
        await client.connect(timeout=5)
        try:
            yield agent, client
        finally:
            await client.aclose()


async def still_answers(client: AgentClient) -> None:
    """The link survived: a plain call is answered."""
    assert (await client.call("ping", timeout=5))["cpu_seconds"] == 0.0
    assert not client.closed.is_set()


# -- the link, against a hostile agent --------------------------------------------------------


async def test_garbage_messages_are_dropped_and_the_link_stays_up(tmp_path: Path) -> None:
    async with hostile_agent(tmp_path) as (agent, client):
        seen: list[str] = []
        client.on_event(lambda name, data: seen.append(name))
        ws = agent.connections[0]
        garbage: list[str | bytes] = [
            "not json", "[1, 2]", '"a string"', "{}", '{"id": "7", "ok": true}',
            '{"id": 999999, "ok": true, "result": null}',  # an id never asked
            '{"event": "link.closed", "data": {}}',  # the gateway's own: must not be forged
            '{"event": "nonsense", "data": {}}',
            '{"event": "proc.exit", "data": {"proc_id": "1", "code": 0}}',
            '{"event": "port", "data": {"port": 80, "state": "open", "address": "x",'
            ' "type": "status"}}',  # an extra key would pose as another event type
            "[" * 100_000,  # deeper than the JSON parser recurses
            b"", b"\x01\x00",  # binary frames shorter than their header
            pack_frame(2, 1, b"input is gateway to agent"),  # a kind agents never send
        ]  # fmt: skip
        for message in garbage:
            await ws.send(message)
        await ws.send(json.dumps({"event": "proc.exit", "data": {"proc_id": 1, "code": 0}}))
        await still_answers(client)
        assert seen == ["proc.exit"]
        assert client.violations == len(garbage)


async def test_malformed_answers_fail_the_call_with_a_protocol_error(tmp_path: Path) -> None:
    answers: dict[str, dict[str, Any]] = {
        "fs.stat": {"ok": True, "result": {**ENTRY, "size": "3"}},
        "fs.list": {"ok": True, "result": [ENTRY, {**ENTRY, "path": "relative"}]},
        "fs.mkdir": {"ok": True, "result": {**ENTRY, "size": -1}},
        "proc.list": {"ok": True, "result": {"not": "a list"}},
        "search.text": {"ok": True, "result": {"files": 1, "matches": 1, "truncated": False,
                                               "timed_out": False, "type": "error"}},
        "fs.remove": {"ok": "yes"},
        "fs.rename": {"ok": False, "error": {"code": "../../etc", "message": "x"}},
        "proc.kill": {"ok": False, "error": "ENOENT"},
    }  # fmt: skip

    async def reply(ws: ServerConnection, request_id: int, op: str, args: Any) -> None:
        await ws.send(json.dumps({"id": request_id, **answers[op]}))

    async with hostile_agent(tmp_path) as (agent, client):
        agent.reply = reply
        for op in answers:
            with pytest.raises(AgentProtocolError) as caught:
                await client.call(op, timeout=5)
            assert (caught.value.status_code, caught.value.code) == (502, "sandbox_protocol_error")
            assert op in caught.value.message
        await still_answers(client)


async def test_a_long_error_message_is_cut(tmp_path: Path) -> None:
    async def reply(ws: ServerConnection, request_id: int, op: str, args: Any) -> None:
        error = {"code": "ENOENT", "message": "x" * 1_000_000}
        await ws.send(json.dumps({"id": request_id, "ok": False, "error": error}))

    async with hostile_agent(tmp_path) as (agent, client):
        agent.reply = reply
        with pytest.raises(AgentOpError) as caught:
            await client.call("fs.stat", path="/a", timeout=5)
        assert caught.value.errno == "ENOENT"
        assert len(caught.value.message) <= 8192


async def test_a_message_over_the_limit_closes_the_link_before_it_is_buffered(
    tmp_path: Path,
) -> None:
    """A frame announcing 1 GiB: the link ends (1009) at its header; pending calls fail with
    a clear error and this process did not grow by the frame."""

    async def reply(ws: ServerConnection, request_id: int, op: str, args: Any) -> None:
        header = struct.pack("!BBQ", 0x81, 127, 1 << 30)  # FIN + text, 64-bit length
        ws.transport.write(header + b"{" * 65536)

    async with hostile_agent(tmp_path) as (agent, client):
        agent.reply = reply
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(AgentUnavailable):
            await client.call("fs.stat", path="/a", timeout=10)
        await asyncio.wait_for(client.closed.wait(), 5)
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        assert grown_kib < 64 * 1024
        assert client._ws is not None
        assert client._ws.protocol.close_sent is not None
        assert client._ws.protocol.close_sent.code == 1009  # message too big


async def test_a_message_just_under_the_limit_is_taken(tmp_path: Path) -> None:
    async def reply(ws: ServerConnection, request_id: int, op: str, args: Any) -> None:
        filler = "a" * (MAX_MESSAGE_BYTES - 200)
        await ws.send(json.dumps({"id": request_id, "ok": True,
                                  "result": {"sub": 1, "cursor": "x", "pad": filler}}))  # fmt: skip

    async with hostile_agent(tmp_path) as (agent, client):
        agent.reply = reply
        assert (await client.call("watch.unsubscribe", timeout=10))["cursor"] == "x"
        await still_answers(client)


async def test_stream_bytes_for_made_up_channels_are_held_in_bounds(tmp_path: Path) -> None:
    async with hostile_agent(tmp_path) as (agent, client):
        ws = agent.connections[0]
        taken: list[bytes] = []
        await ws.send(pack_frame(PROC_OUTPUT, 7, b"early"))
        await still_answers(client)
        client.on_stream(PROC_OUTPUT, 7, lambda kind, payload: taken.append(payload))()
        assert taken == [b"early"]  # held until its listener came
        for channel in range(20_000):  # nobody listens: each is held for a listener to come
            await ws.send(pack_frame(PROC_OUTPUT, channel, b"x" * (channel % 3)))
        await still_answers(client)
        assert len(client._orphan_order) <= ORPHAN_FRAMES
        held = [payload for queue in client._orphans.values() for payload in queue]
        assert len(held) <= ORPHAN_FRAMES
        assert client._orphan_bytes == sum(map(len, held))
        assert client.violations == 0  # honest frames, only too many


async def test_a_file_claimed_huge_is_refused_without_allocating(tmp_path: Path) -> None:
    async def reply(ws: ServerConnection, request_id: int, op: str, args: Any) -> None:
        await answer(ws, request_id, {**ENTRY, "size": 1 << 60, "data": "YWJj", "eof": False})

    async with hostile_agent(tmp_path) as (agent, client):
        agent.reply = reply
        with pytest.raises(PayloadTooLarge):
            await read_file(client, "/a.txt", max_bytes=50 << 20)


async def test_a_read_that_never_ends_stops_at_the_limit(tmp_path: Path) -> None:
    """Whatever size the agent claims, the gateway holds no more than the caller's limit."""
    chunk = base64.b64encode(os.urandom(1024)).decode()

    async def reply(ws: ServerConnection, request_id: int, op: str, args: Any) -> None:
        await answer(ws, request_id, {**ENTRY, "size": 3, "data": chunk, "eof": False})

    async with hostile_agent(tmp_path) as (agent, client):
        agent.reply = reply
        with pytest.raises(PayloadTooLarge):
            await read_file(client, "/a.txt", max_bytes=16 * 1024)
        assert len(agent.requests) < 2 + 17


async def test_invalid_base64_is_a_protocol_error(tmp_path: Path) -> None:
    async def reply(ws: ServerConnection, request_id: int, op: str, args: Any) -> None:
        await answer(ws, request_id, {**ENTRY, "data": "!!!!", "eof": True,
                                      "sha256": "0" * 64})  # fmt: skip

    async with hostile_agent(tmp_path) as (agent, client):
        agent.reply = reply
        with pytest.raises(AgentProtocolError):
            await read_file(client, "/a.txt", max_bytes=1024)
        await still_answers(client)


async def test_reads_ask_for_chunks_under_the_limit(tmp_path: Path) -> None:
    assert READ_CHUNK_BYTES * 4 // 3 + 64 * 1024 < MAX_MESSAGE_BYTES
    async with hostile_agent(tmp_path) as (agent, client):
        agent.reply = lambda ws, request_id, op, args: answer(
            ws, request_id, {**ENTRY, "data": "YWJj", "eof": True, "sha256": "a" * 64}
        )
        read = await read_file(client, "/a.txt", max_bytes=1024)
        assert read.data == b"abc"
        assert agent.requests[-1] == ("fs.read", {"path": "/a.txt", "length": READ_CHUNK_BYTES})


# -- the whole gateway, one sandbox's agent replaced by a hostile one --------------------------

GARBAGE: dict[str, Any] = {
    "fs.read": {**ENTRY, "data": 12, "eof": True},
    "fs.list": [ENTRY, {"path": None}],
    "fs.write": {"ok": "maybe"},
    "fs.batch": {"results": []},  # no result for the batch's one operation
    "proc.list": {"processes": []},
}


async def garbage(ws: ServerConnection, request_id: int, op: str, args: Any) -> None:
    if op == "fs.write":
        error = {"code": "<script>", "message": "x"}
        await ws.send(json.dumps({"id": request_id, "ok": False, "error": error}))
    elif op == "fs.stat":
        await ws.send("\x00 not json")  # and no answer at all: the call times out
    else:
        await answer(ws, request_id, GARBAGE.get(op))


def clear_error(response: Any, status: int, code: str) -> None:
    assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text


@pytest.mark.parametrize("runtime_name", ["local"])
async def test_the_api_answers_clear_errors_and_loses_nothing(
    sandbox_api_factory: Callable[..., Awaitable[Api]], tmp_path: Path
) -> None:
    api = await sandbox_api_factory()
    user = await api.user()
    other = (await new_container(api, user))["id"]
    victim = (await new_container(api, user))["id"]
    files = f"/api/containers/{victim}/files"
    large = os.urandom(20 * 1024 * 1024 + 5)  # past a read chunk and a write part
    for name, content in (("keep.txt", b"precious"), ("large.bin", large)):
        written = await api.client.put(f"{files}/{name}", content=content, headers=user.headers)
        assert written.status_code == 200, written.text
    assert (await api.client.get(f"{files}/large.bin", headers=user.headers)).content == large

    service = api.services.containers
    async with hostile_agent(tmp_path) as (agent, hostile):
        agent.reply = garbage
        real = service.links[victim]
        service.lifecycle.adopt(await service.get(None, victim), hostile)
        try:
            get = await api.client.get(f"{files}/keep.txt", headers=user.headers)
            clear_error(get, 502, "sandbox_protocol_error")
            listing = await api.client.get(f"{files}?path=/", headers=user.headers)
            clear_error(listing, 502, "sandbox_protocol_error")
            put = await api.client.put(f"{files}/keep.txt", content=b"x", headers=user.headers)
            clear_error(put, 502, "sandbox_protocol_error")
            batch = await api.client.post(
                files, headers=user.headers, json={"operations": [{"op": "mkdir", "path": "/d"}]}
            )
            clear_error(batch, 502, "sandbox_protocol_error")
            terminals = await api.client.get(
                f"/api/containers/{victim}/terminals", headers=user.headers
            )
            clear_error(terminals, 502, "sandbox_protocol_error")

            # A flood of events, most of them garbage: dropped, and the other sandbox's
            # files answer meanwhile.
            ws = agent.connections[0]

            async def flood() -> None:
                for n in range(20_000):
                    await ws.send(
                        '{"event": "port", "data": {"port": "x"}}'
                        if n % 10
                        else json.dumps({"event": "proc.lagged", "data": {"proc_id": n}})
                    )

            flooding = asyncio.ensure_future(flood())
            started = time.monotonic()
            while not flooding.done():
                response = await api.client.get(
                    f"/api/containers/{other}/files?path=/", headers=user.headers
                )
                assert response.status_code == 200, response.text
            assert time.monotonic() - started < 60
            await flooding
            await still_answers(hostile)
            assert hostile.violations >= 18_000

            # Command lines it claims were typed: kept at a bounded rate, not one row each.
            flood_started = time.monotonic()
            for n in range(3000):
                await ws.send(json.dumps({"event": "proc.command", "data": {
                    "proc_id": n, "phase": "start", "command": f"cmd-{n}"}}))  # fmt: skip
            await still_answers(hostile)
            seconds = time.monotonic() - flood_started
            project = (await service.get(None, victim)).project_id
            commands = api.services.terminals.commands
            async with asyncio.timeout(30):  # the rows kept are written in the background
                while len(rows := await commands.history(project, "cmd-", 10_000)) < 100:
                    await asyncio.sleep(0.05)
            per_minute = api.services.settings.history_reports_per_minute
            assert len(rows) <= min(MAX_OPEN_REPORTS, per_minute * (1 + (seconds + 1) / 60))

            # An answer far too large: the link ends; the sandbox is started again.
            async def too_large(ws: ServerConnection, request_id: int, op: str, a: Any) -> None:
                await ws.send("x" * (MAX_MESSAGE_BYTES + 1))

            agent.reply = too_large
            gone = await api.client.get(f"{files}/keep.txt", headers=user.headers)
            assert gone.status_code in (502, 503), gone.text
            assert gone.json()["error"]["code"] in ("agent_unavailable", "sandbox_protocol_error")
        finally:
            await real.aclose()

    # The supervisor sees the link gone and starts the sandbox again: every file is intact.
    async with asyncio.timeout(120):
        while True:
            kept = await api.client.get(f"{files}/keep.txt", headers=user.headers)
            if kept.status_code == 200:
                break
            assert kept.status_code in (502, 503), kept.text
            await asyncio.sleep(0.2)
    assert kept.content == b"precious"
    assert (await api.client.get(f"{files}/large.bin", headers=user.headers)).content == large


def test_every_op_the_agent_serves_has_its_answer_checked(tmp_path: Path) -> None:
    """A new op gets a check in agentlink/schema.py, or this fails."""
    from cloudcontainer.agent.main import build
    from cloudcontainer.agentlink.schema import RESULTS

    agent = build("secret", str(tmp_path), {})
    assert set(agent.registry.handlers) == set(RESULTS)


def test_a_flood_of_events_for_a_terminal_is_bounded() -> None:
    """Each proc.exit an agent sends for a terminal queues a message for its clients: a
    client that does not keep up falls behind (and resyncs), as with output."""
    from cloudcontainer.terminals.service import CONTROL_BYTES, TerminalClient

    client = TerminalClient()
    for _ in range(100_000):
        client.put({"type": "exit", "code": 0})
    assert client.lagged
    assert len(client.queue) <= client.max_pending // CONTROL_BYTES
