"""A client that never reads (issue 9): real sockets with a small receive buffer that stop
reading after the handshake. The gateway's memory stays bounded, other clients and requests
keep being answered, and the stalled client is dropped. No timing is asserted beyond generous
liveness bounds."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.conftest import Api, TestUser
from tests.sandbox_helpers import events_socket_url, live_server, new_container, sh
from tests.support.rawws import read_head, stalled, text_frame, upgrade
from tests.test_terminals import attached, create, read_until

WAIT = 60.0  # an upper bound for things that must happen, never a measured timing
MB = 1024 * 1024
SETTINGS = {"client_send_timeout_seconds": 2.0}


def rss() -> int:
    """This process's resident memory (the gateway runs in it), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def wait_dropped(sock: socket.socket) -> None:
    """Read what is left until the gateway ends the connection (EOF or reset)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(WAIT):
        while True:
            try:
                if not await loop.sock_recv(sock, 1 << 20):
                    return
            except ConnectionResetError:
                return


async def answers(base: str, user: TestUser, container_id: str) -> None:
    """The gateway still serves another client over the network."""
    http = base.replace("ws://", "http://")
    async with httpx.AsyncClient(base_url=http, timeout=WAIT) as client:
        response = await client.get(f"/api/containers/{container_id}", headers=user.headers)
        assert response.status_code == 200, response.text


async def test_a_terminal_client_that_never_reads_is_dropped_and_stalls_no_one(
    sandbox_api_factory: Any,
) -> None:
    api: Api = await sandbox_api_factory(**SETTINGS)
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    tid = (await create(api, user, cid))["id"]
    async with live_server(api) as base:
        path = f"/api/containers/{cid}/terminals/{tid}"
        ticket = (
            await api.client.post("/api/auth/ws-ticket", json={"path": path}, headers=user.headers)
        ).json()
        url = f"{base}{path}?ticket={ticket['ticket']}"
        async with stalled(url, upgrade(url)) as idle:
            assert b" 101 " in await read_head(idle)
            before = rss()
            async with attached(api, user, base, cid, tid) as (reader, _):
                await reader.send(
                    b"head -c 128000000 /dev/zero | tr '\\0' x; echo; echo end-$((6*7))\n"
                )
                await read_until(reader, b"end-42\r\n")  # the other client is not held up
                await answers(base, user, cid)
            assert rss() - before < 64 * MB  # 128 MB went by the stalled client
            await wait_dropped(idle)


async def test_an_event_client_that_never_reads_is_dropped_past_its_outbox(
    sandbox_api_factory: Any,
) -> None:
    """It sends commands and never reads the answers: past the outbox bound it is dropped."""
    api: Api = await sandbox_api_factory(**SETTINGS)
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    loop = asyncio.get_running_loop()
    async with live_server(api) as base:
        url = await events_socket_url(api, user, base, cid)
        async with stalled(url, upgrade(url)) as idle:
            assert b" 101 " in await read_head(idle)
            before = rss()
            frames = text_frame(b'{"type":"nonsense"}') * 1000
            with_reset = False
            try:
                async with asyncio.timeout(WAIT):
                    for _ in range(100):  # 100,000 commands, each answered with an error
                        await loop.sock_sendall(idle, frames)
            except (ConnectionResetError, BrokenPipeError):
                with_reset = True  # dropped while it was still sending
            await answers(base, user, cid)
            assert rss() - before < 64 * MB
            if not with_reset:
                await wait_dropped(idle)


async def test_an_exec_client_that_never_reads_has_its_command_stopped(
    sandbox_api_factory: Any,
) -> None:
    """`exec` output is not paced by its reader: past the bound the command is killed, and
    nothing waits for the stalled client but its socket buffers."""
    api: Api = await sandbox_api_factory(**SETTINGS)
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    marker = "300000001"
    body = json.dumps(
        {"command": "sh", "args": ["-c", f"head -c {marker} /dev/zero"], "timeout": 600}
    ).encode()
    async with live_server(api) as base:
        http = base.replace("ws://", "http://")
        host = urlsplit(http).netloc
        request = (
            f"POST /api/containers/{cid}/exec HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: {user.headers['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        before = rss()
        async with stalled(http, request) as idle:
            assert b" 200 " in await read_head(idle)
            async with asyncio.timeout(WAIT):
                while True:  # the command is killed, not left writing into the gateway
                    listing = await sh(api, user, cid, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
                    if f"head -c {marker}" not in listing.stdout:
                        break
                    await asyncio.sleep(0.2)
            await answers(base, user, cid)
            assert rss() - before < 64 * MB  # 300 MB were to be written to it
            # It reads at last: the output it was sent ends with why.
            loop, tail = asyncio.get_running_loop(), b""
            async with asyncio.timeout(WAIT):
                while b'"type": "exit"' not in tail:
                    chunk = await loop.sock_recv(idle, 1 << 20)
                    assert chunk
                    tail = (tail + chunk)[-4096:]
            assert b'"code": "client_too_slow"' in tail


async def test_a_file_watch_client_that_never_reads_is_dropped(sandbox_api_factory: Any) -> None:
    """It watches the workspace with contents while 256 MB of files are written."""
    api: Api = await sandbox_api_factory(**SETTINGS)
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    loop = asyncio.get_running_loop()
    watch = json.dumps(
        {"type": "watch", "id": "w", "include": ["/home/project/**"], "content": True},
        separators=(",", ":"),
    ).encode()
    async with live_server(api) as base:
        url = await events_socket_url(api, user, base, cid)
        async with stalled(url, upgrade(url)) as idle:
            assert b" 101 " in await read_head(idle)
            before = rss()
            await loop.sock_sendall(idle, text_frame(watch))
            script = (
                "mkdir -p /home/project/flood && i=0; while [ $i -lt 256 ]; do "
                "head -c 1000000 /dev/urandom > /home/project/flood/f$i; i=$((i+1)); done"
            )
            assert (await sh(api, user, cid, script)).code == 0
            await answers(base, user, cid)
            assert rss() - before < 64 * MB
            await wait_dropped(idle)
