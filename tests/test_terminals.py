"""Terminals on real sandboxes and PTYs, through a real server's WebSockets (both runtimes)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from cloudcontainer.terminals.limits import InputRate
from tests.conftest import Api, TestUser
from tests.sandbox_helpers import live_server, new_container
from tests.support.rawws import ServerFrames, read_head, stalled, upgrade

WAIT = 30.0  # an upper bound for things that must happen, never a measured timing


async def setup(api: Api) -> tuple[TestUser, str]:
    user = await api.user()
    return user, (await new_container(api, user))["id"]


async def create(api: Api, user: TestUser, cid: str, **body: Any) -> dict[str, Any]:
    response = await api.client.post(
        f"/api/containers/{cid}/terminals", json=body, headers=user.headers
    )
    assert response.status_code == 201, response.text
    terminal: dict[str, Any] = response.json()
    return terminal


@asynccontextmanager
async def attached(
    api: Api, user: TestUser, base: str, cid: str, tid: str, max_queue: int = 16
) -> AsyncIterator[tuple[ClientConnection, dict[str, Any]]]:
    path = f"/api/containers/{cid}/terminals/{tid}"
    ticket = (
        await api.client.post("/api/auth/ws-ticket", json={"path": path}, headers=user.headers)
    ).json()["ticket"]
    url = f"{base}{path}?ticket={ticket}"
    async with connect(url, max_size=None, max_queue=max_queue) as socket:
        hello = json.loads(await socket.recv())
        assert hello["type"] == "attached"
        yield socket, hello["terminal"]


async def read_until(socket: ClientConnection, needle: bytes) -> bytes:
    """Terminal bytes until `needle` shows (control messages are kept out). Only the new
    bytes are searched: a reader of 64 MB must not spend its time re-reading them."""
    seen = bytearray()
    async with asyncio.timeout(WAIT):
        while True:
            frame = await socket.recv()
            if isinstance(frame, bytes):
                start = max(0, len(seen) - len(needle))
                seen += frame
                if seen.find(needle, start) >= 0:
                    return bytes(seen)


async def control(socket: ClientConnection, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        while True:
            frame = await socket.recv()
            if isinstance(frame, str) and (message := json.loads(frame))["type"] == kind:
                result: dict[str, Any] = message
                return result


async def drain(socket: ClientConnection) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            await socket.recv()


async def test_a_terminal_echoes_resizes_and_reports_its_exit(sandbox_api: Api) -> None:
    user, cid = await setup(sandbox_api)
    terminal = await create(sandbox_api, user, cid, cols=100, rows=30)
    assert terminal["state"] == "running"
    assert (terminal["cols"], terminal["rows"], terminal["command"]) == (100, 30, "jsh")
    async with (
        live_server(sandbox_api) as base,
        attached(sandbox_api, user, base, cid, terminal["id"]) as (socket, hello),
    ):
        assert (hello["cols"], hello["rows"]) == (100, 30)
        await socket.send(b"echo $TERM $COLORTERM; stty size\n")
        seen = await read_until(socket, b"30 100")
        assert b"xterm-256color truecolor" in seen
        await socket.send(json.dumps({"type": "resize", "cols": 120, "rows": 40}))
        await socket.send(b"stty size\n")
        await read_until(socket, b"40 120")
        await socket.send(json.dumps({"type": "resize", "cols": 0, "rows": 100000}))
        refused = await control(socket, "error")
        assert refused["code"] == "bad_message"
        await socket.send(b"exit 3\n")
        assert (await control(socket, "exit"))["code"] == 3
        with pytest.raises(ConnectionClosed):
            await drain(socket)
    listed = (
        await sandbox_api.client.get(f"/api/containers/{cid}/terminals", headers=user.headers)
    ).json()
    assert [(t["id"], t["state"], t["exit_code"]) for t in listed] == [
        (terminal["id"], "exited", 3)
    ]


async def test_clients_share_a_terminal_and_a_reattach_replays_it(sandbox_api: Api) -> None:
    """Output goes to every client, input comes from any; a client that comes later (or
    back) first gets the scrollback and the size to restore."""
    user, cid = await setup(sandbox_api)
    terminal = await create(sandbox_api, user, cid)
    tid = terminal["id"]
    async with live_server(sandbox_api) as base:
        async with attached(sandbox_api, user, base, cid, tid) as (first, _):
            await first.send(b"echo first-$((1+1))\n")  # printed as first-2, typed otherwise
            await read_until(first, b"first-2\r\n")
            async with attached(sandbox_api, user, base, cid, tid) as (second, hello):
                assert (hello["cols"], hello["rows"]) == (80, 24)
                replay = await read_until(second, b"first-2\r\n")  # the scrollback
                assert replay.count(b"first-2\r\n") == 1
                await second.send(b"echo second-$((2+1))\n")
                for socket in (first, second):
                    assert (await read_until(socket, b"second-3\r\n")).count(b"second-3") == 1
        # No client: the shell keeps running, and its scrollback keeps what it printed.
        response = await sandbox_api.client.get(
            f"/api/containers/{cid}/terminals/{tid}", headers=user.headers
        )
        assert response.json()["state"] == "running"
        async with attached(sandbox_api, user, base, cid, tid) as (again, _):
            seen = await read_until(again, b"second-3\r\n")
            assert b"first-2" in seen
            deleted = await sandbox_api.client.delete(
                f"/api/containers/{cid}/terminals/{tid}", headers=user.headers
            )
            assert deleted.status_code == 204
            assert (await control(again, "exit"))["code"] == 128 + 9


async def test_missing_programs_and_others_terminals(sandbox_api: Api) -> None:
    user, cid = await setup(sandbox_api)
    missing = await create(sandbox_api, user, cid, command="no-such-program")
    async with live_server(sandbox_api) as base:
        async with attached(sandbox_api, user, base, cid, missing["id"]) as (socket, _):
            seen = await read_until(socket, b"command not found")
            assert b"no-such-program" in seen
            assert (await control(socket, "exit"))["code"] == 127
        other = await sandbox_api.user()
        for path in (f"/api/containers/{cid}/terminals", f"/api/containers/{cid}/terminals/x"):
            response = await sandbox_api.client.get(path, headers=other.headers)
            assert response.status_code == 404, response.text
        for tid in ("0-1", "nope", missing["id"] + "0"):
            response = await sandbox_api.client.get(
                f"/api/containers/{cid}/terminals/{tid}", headers=user.headers
            )
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "terminal_not_found"
        ticket = (
            await sandbox_api.client.post(
                "/api/auth/ws-ticket",
                json={"path": f"/api/containers/{cid}/terminals/{missing['id']}"},
                headers=other.headers,
            )
        ).json()
        url = f"{base}/api/containers/{cid}/terminals/{missing['id']}?ticket={ticket['ticket']}"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url):
                pass
        assert refused.value.response.status_code == 403
    for body in ({"cols": 0}, {"rows": 100000}, {"command": ""}, {"shell": "zsh"}):
        response = await sandbox_api.client.post(
            f"/api/containers/{cid}/terminals", json=body, headers=user.headers
        )
        assert response.status_code == 422, (body, response.text)


async def test_a_client_that_does_not_read_is_resynchronised_not_buffered(
    sandbox_api: Api,
) -> None:
    """A client that stops reading while the terminal prints 64 MB costs the gateway at most
    its queue bound: it gets `lagged`, then the scrollback, and the end. The other client,
    which reads, gets every byte (the agent paces the output to what the gateway takes, and
    the gateway drops nothing for a reader that keeps up)."""
    user, cid = await setup(sandbox_api)
    terminal = await create(sandbox_api, user, cid)
    tid = terminal["id"]
    loop = asyncio.get_running_loop()
    async with live_server(sandbox_api) as base:
        path = f"/api/containers/{cid}/terminals/{tid}"
        ticket = (await sandbox_api.client.post(
            "/api/auth/ws-ticket", json={"path": path}, headers=user.headers
        )).json()["ticket"]  # fmt: skip
        url = f"{base}{path}?ticket={ticket}"
        # A socket with a tiny buffer that reads nothing after the 101 until the end.
        async with stalled(url, upgrade(url)) as idle, attached(
            sandbox_api, user, base, cid, tid
        ) as (reader, _):  # fmt: skip
            assert b" 101 " in await read_head(idle)
            command = b"head -c 64000000 /dev/zero | tr '\\0' x; echo; echo end-$((6*7))\n"
            await reader.send(command)
            everything = await read_until(reader, b"end-42\r\n")
            assert everything.count(b"x") - command.count(b"x") == 64_000_000  # the echo too
            frames, received, tail, lagged = ServerFrames(), 0, b"", False
            async with asyncio.timeout(WAIT):
                while b"end-42\r\n" not in tail:
                    data = await loop.sock_recv(idle, 1 << 20)
                    assert data, "the gateway closed the idle client instead"
                    for opcode, payload in frames.feed(data):
                        if opcode == 2:
                            received += len(payload)
                            tail = (tail + payload)[-64:]
                        elif opcode == 1:
                            lagged = lagged or json.loads(payload)["type"] == "lagged"
    assert lagged
    assert received < 64_000_000  # dropped, then replayed from the ring buffer


async def test_scrollback_is_bounded_and_garbage_input_is_just_bytes(
    sandbox_api_factory: Any,
) -> None:
    api: Api = await sandbox_api_factory(terminal_scrollback_bytes=4096)
    user, cid = await setup(api)
    tid = (await create(api, user, cid))["id"]
    # Bytes no keyboard sends (invalid UTF-8, NULs), but no control keys, which would end the
    # shell or run readline commands: the shell takes them as a line, which Ctrl-U throws away.
    garbage = bytes(b for b in os.urandom(8192) if b >= 0x20 or b == 0)
    async with live_server(api) as base:
        async with attached(api, user, base, cid, tid) as (socket, _):
            await socket.send(garbage)
            await socket.send(b"\x15echo ok-$((1+1)); head -c 20000 /dev/zero | tr '\\0' y\n")
            seen = await read_until(socket, b"yyyy\x1b")  # the output, then the next prompt
            assert b"ok-2\r\n" in seen
        async with attached(api, user, base, cid, tid) as (socket, _):
            async with asyncio.timeout(WAIT):
                replay = await socket.recv()
            assert isinstance(replay, bytes)
            assert len(replay) <= 4096
            assert b"yyyy" in replay


async def test_command_policy_refuses_exec_and_input_is_rate_limited(
    sandbox_api_factory: Any,
) -> None:
    api: Api = await sandbox_api_factory(
        command_deny_patterns=[r"^curl\b", r"\brm -rf /"], terminal_input_bytes_per_second=4096
    )
    user, cid = await setup(api)
    for command, args in (("curl", ["https://example.com"]), ("sh", ["-c", "rm -rf / --x"])):
        refused = await api.client.post(
            f"/api/containers/{cid}/exec", json={"command": command, "args": args},
            headers=user.headers,
        )  # fmt: skip
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["code"] == "command_denied"
        assert "command policy" in error["message"]
    allowed = await api.client.post(
        f"/api/containers/{cid}/exec", json={"command": "echo", "args": ["curl"]},
        headers=user.headers,
    )  # fmt: skip
    assert allowed.status_code == 200
    assert '"code": 0' in allowed.text
    # 12 KiB typed at 4 KiB/s (1 KiB may come at once) all arrive: input waits, never drops.
    script = "stty raw -echo; head -c 12288 | wc -c"
    tid = (await create(api, user, cid, command="sh", args=["-c", script]))["id"]
    async with live_server(api) as base, attached(api, user, base, cid, tid) as (socket, _):
        for _ in range(12):
            await socket.send(b"k" * 1024)
        await read_until(socket, b"12288")
        assert (await control(socket, "exit"))["code"] == 0


async def test_input_rate_lets_a_burst_through_then_paces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The token bucket on a fake clock: what it makes a typist wait, computed, not timed."""
    now = [100.0]
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    rate = InputRate(4096, burst=1024, clock=lambda: now[0])
    for _ in range(3):
        await rate.take(1024)
    assert waits == [0.25, 0.25]  # the burst went at once; each next KiB waits its refill
    now[0] += 10  # idle: the bucket refills, up to its burst only
    await rate.take(1024)
    await rate.take(512)
    assert waits[2:] == [0.125]


async def test_attach_says_where_its_scrollback_starts(sandbox_api_factory: Any) -> None:
    """`offset` places the scrollback in the whole output: a client that comes back after
    N bytes skips N - offset of the replay and has every byte once (clients/js does so)."""
    api: Api = await sandbox_api_factory(terminal_scrollback_bytes=4096)
    user, cid = await setup(api)
    program = "printf start; head -c 10000 /dev/zero | tr '\\0' y; printf end; sleep 60"
    tid = (await create(api, user, cid, command="sh", args=["-c", program]))["id"]
    path = f"/api/containers/{cid}/terminals/{tid}"
    async with live_server(api) as base:
        ticket = (
            await api.client.post("/api/auth/ws-ticket", json={"path": path}, headers=user.headers)
        ).json()["ticket"]
        async with connect(f"{base}{path}?ticket={ticket}", max_size=None) as socket:
            hello = json.loads(await socket.recv())
            assert hello["type"] == "attached"
            first = await read_until(socket, b"end")
        total = hello["offset"] + len(first)
        assert total == len("start") + 10000 + len("end")
        ticket = (
            await api.client.post("/api/auth/ws-ticket", json={"path": path}, headers=user.headers)
        ).json()["ticket"]
        async with connect(f"{base}{path}?ticket={ticket}", max_size=None) as socket:
            again = json.loads(await socket.recv())
            replay = await read_until(socket, b"end")
        assert again["offset"] == total - len(replay)
        assert len(replay) <= 4096  # the scrollback's bound: the start is gone
        assert first.endswith(replay)
