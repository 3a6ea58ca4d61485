"""Idle must mean idle (issue 9): someone typing in a terminal, a terminal printing, or a client
holding a WebSocket open is never idle-stopped; with nothing open and nothing happening, the
container stops after `idle_timeout_seconds`. Real sandboxes, both runtimes, a short timeout."""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import connect

from tests.conftest import Api, ApiFactory, TestUser
from tests.sandbox_helpers import live_server, new_container, wait_for_status

IDLE = 1.5  # seconds: the test's idle timeout; the supervisor looks every IDLE / 4
OUTLIVE = 4 * IDLE  # kept busy this long, a container must still be running


async def ticket(api: Api, user: TestUser, path: str) -> str:
    response = await api.client.post(
        "/api/auth/ws-ticket", json={"path": path}, headers=user.headers
    )
    return str(response.json()["ticket"])


async def status(api: Api, user: TestUser, cid: str) -> str:
    response = await api.client.get(f"/api/containers/{cid}", headers=user.headers)
    return str(response.json()["status"])


async def terminal(api: Api, user: TestUser, cid: str) -> str:
    response = await api.client.post(
        f"/api/containers/{cid}/terminals", json={"command": "bash"}, headers=user.headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_typing_in_a_terminal_keeps_the_container_running(
    sandbox_api_factory: ApiFactory,
) -> None:
    api = await sandbox_api_factory(idle_timeout_seconds=IDLE)
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    path = f"/api/containers/{cid}/terminals/{await terminal(api, user, cid)}"
    async with live_server(api) as base:
        async with connect(f"{base}{path}?ticket={await ticket(api, user, path)}") as socket:
            assert json.loads(await socket.recv())["type"] == "attached"
            loop = asyncio.get_running_loop()
            until = loop.time() + OUTLIVE
            while loop.time() < until:
                await socket.send(b"echo tick\n")
                await asyncio.sleep(IDLE / 5)
            assert await status(api, user, cid) == "running"
        # The socket is closed and nothing runs: now it is idle.
        stopped = await wait_for_status(api, user, cid, "stopped", timeout=30)
    assert stopped["status_reason"].startswith("idle for")


async def test_an_open_event_socket_keeps_the_container_running(
    sandbox_api_factory: ApiFactory,
) -> None:
    """A workbench tab watching files sends nothing for long stretches: it is still a user."""
    api = await sandbox_api_factory(idle_timeout_seconds=IDLE)
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    path = f"/api/containers/{cid}/events"
    async with live_server(api) as base:
        async with connect(f"{base}{path}?ticket={await ticket(api, user, path)}") as socket:
            assert json.loads(await socket.recv())["status"] == "running"
            await asyncio.sleep(OUTLIVE)
            assert await status(api, user, cid) == "running"
        await wait_for_status(api, user, cid, "stopped", timeout=30)


async def test_with_nothing_open_the_container_stops(sandbox_api_factory: ApiFactory) -> None:
    api = await sandbox_api_factory(idle_timeout_seconds=IDLE)
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    await terminal(api, user, cid)  # a shell waiting for input, nobody attached
    stopped = await wait_for_status(api, user, cid, "stopped", timeout=30)
    assert stopped["status_reason"].startswith("idle for")


async def test_terminal_input_and_output_are_activity(sandbox_api_factory: ApiFactory) -> None:
    """Each keystroke and each chunk of output moves the container's last activity (a clock
    read and a dict write: no database)."""
    api = await sandbox_api_factory(idle_timeout_seconds=3600)
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    path = f"/api/containers/{cid}/terminals/{await terminal(api, user, cid)}"
    containers = api.services.containers
    async with live_server(api) as base:
        async with connect(f"{base}{path}?ticket={await ticket(api, user, path)}") as socket:
            assert json.loads(await socket.recv())["type"] == "attached"
            before = containers.last_active[cid]
            await socket.send(b"echo $((6 * 7))\n")
            seen = b""
            async with asyncio.timeout(30):
                while b"42" not in seen:
                    frame = await socket.recv()
                    seen += frame if isinstance(frame, bytes) else b""
            assert containers.last_active[cid] > before
            assert containers.held(cid)
        async with asyncio.timeout(10):
            while containers.held(cid):
                await asyncio.sleep(0.05)
