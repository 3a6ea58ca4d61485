"""Idle must mean idle (issue 9): someone typing in a terminal, a terminal printing, or a client
holding a WebSocket open is never idle-stopped; with nothing open and nothing happening, the
container stops after `idle_timeout_seconds`. Real sandboxes, both runtimes; idle time passes on
a fake clock and the supervisor's idle pass is run by the test, so nothing waits it out."""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import Api, ApiFactory, TestUser
from tests.sandbox_helpers import (
    IDLE,
    idle_app,
    idle_pass_after,
    live_server,
    new_container,
    wait_for_status,
)


async def released(api: Api, cid: str) -> None:
    """Until the gateway has let go of the container's last client connection."""
    async with asyncio.timeout(10):
        while api.services.containers.held(cid):
            await asyncio.sleep(0.01)


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


async def echoed(socket: ClientConnection, marker: bytes) -> None:
    """Until the terminal has printed `marker`."""
    seen = b""
    async with asyncio.timeout(30):
        while marker not in seen:
            frame = await socket.recv()
            seen += frame if isinstance(frame, bytes) else b""


async def test_typing_in_a_terminal_keeps_the_container_running(
    sandbox_api_factory: ApiFactory,
) -> None:
    api, clock, supervisor = await idle_app(sandbox_api_factory)
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    path = f"/api/containers/{cid}/terminals/{await terminal(api, user, cid)}"
    async with live_server(api) as base:
        async with connect(f"{base}{path}?ticket={await ticket(api, user, path)}") as socket:
            assert json.loads(await socket.recv())["type"] == "attached"
            for tick in range(4):  # twice the idle timeout, typing all along
                await socket.send(f"echo tick-$((40 + {tick}))\n".encode())
                await echoed(socket, f"tick-{40 + tick}".encode())
                await idle_pass_after(clock, supervisor, IDLE / 2)
                assert await status(api, user, cid) == "running"
        # The socket is closed and nothing runs: now it is idle.
        await released(api, cid)
        await idle_pass_after(clock, supervisor, IDLE)
        stopped = await wait_for_status(api, user, cid, "stopped", timeout=10)
    assert stopped["status_reason"].startswith("idle for")


async def test_an_open_event_socket_keeps_the_container_running(
    sandbox_api_factory: ApiFactory,
) -> None:
    """A workbench tab watching files sends nothing for long stretches: it is still a user."""
    api, clock, supervisor = await idle_app(sandbox_api_factory)
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    path = f"/api/containers/{cid}/events"
    async with live_server(api) as base:
        async with connect(f"{base}{path}?ticket={await ticket(api, user, path)}") as socket:
            assert json.loads(await socket.recv())["status"] == "running"
            await idle_pass_after(clock, supervisor, 4 * IDLE)
            assert await status(api, user, cid) == "running"
        await released(api, cid)
        await idle_pass_after(clock, supervisor, IDLE)
        await wait_for_status(api, user, cid, "stopped", timeout=10)


async def test_with_nothing_open_the_container_stops(sandbox_api_factory: ApiFactory) -> None:
    api, clock, supervisor = await idle_app(sandbox_api_factory)
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    await terminal(api, user, cid)  # a shell waiting for input, nobody attached
    await idle_pass_after(clock, supervisor, IDLE - 1)
    assert await status(api, user, cid) == "running"  # not yet
    await idle_pass_after(clock, supervisor, 1)
    stopped = await wait_for_status(api, user, cid, "stopped", timeout=10)
    assert stopped["status_reason"] == f"idle for {int(IDLE)}s"


async def test_terminal_input_and_output_are_activity(sandbox_api_factory: ApiFactory) -> None:
    """Each keystroke and each chunk of output moves the container's last activity (a clock
    read and a dict write: no database)."""
    api, clock, _ = await idle_app(sandbox_api_factory)
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    path = f"/api/containers/{cid}/terminals/{await terminal(api, user, cid)}"
    containers = api.services.containers
    async with live_server(api) as base:
        async with connect(f"{base}{path}?ticket={await ticket(api, user, path)}") as socket:
            assert json.loads(await socket.recv())["type"] == "attached"
            clock.advance(1)
            await socket.send(b"echo $((6 * 7))\n")
            await echoed(socket, b"42")
            assert containers.last_active[cid] == clock()
            assert containers.held(cid)
        await released(api, cid)


async def test_an_ephemeral_container_starts_blank_and_goes_with_its_client(
    sandbox_api_factory: ApiFactory,
) -> None:
    """What `@cloudcontainer/api`'s boot makes (PARITY.md: one container per page load, ended
    when the tab is gone): nothing of the project's saved workspace comes into it, nothing of
    it is saved, and it is deleted once no client has been connected for the grace period."""
    api, clock, supervisor = await idle_app(sandbox_api_factory)
    grace = api.services.settings.ephemeral_grace_seconds
    user = await api.user()
    kept = await new_container(api, user)  # a project's own container, with a snapshot
    shot = await api.client.post(f"/api/containers/{kept['id']}/snapshots", headers=user.headers)
    assert shot.status_code == 201, shot.text
    session = await new_container(api, user, "blank", kept["project_id"], ephemeral=True)
    assert session["ephemeral"] is True
    assert session["template"] == "blank"
    cid = session["id"]
    listing = await api.client.get(f"/api/containers/{cid}/files", headers=user.headers)
    assert listing.json()["entries"] == []  # not the project's snapshot, not a template
    path = f"/api/containers/{cid}/events"
    async with live_server(api) as base:
        async with connect(f"{base}{path}?ticket={await ticket(api, user, path)}") as socket:
            assert json.loads(await socket.recv())["status"] == "running"
            await idle_pass_after(clock, supervisor, 4 * grace)
            assert await status(api, user, cid) == "running"  # its client is connected
        await released(api, cid)
        await idle_pass_after(clock, supervisor, grace - 1)
        assert await status(api, user, cid) == "running"  # the tab may come back
        await idle_pass_after(clock, supervisor, 1)
        gone = await api.client.get(f"/api/containers/{cid}", headers=user.headers)
        assert gone.status_code == 404
    snapshots = await api.client.get(
        f"/api/projects/{kept['project_id']}/snapshots", headers=user.headers
    )
    assert [s["container_id"] for s in snapshots.json()] == [kept["id"]]
    assert await status(api, user, kept["id"]) == "running"  # the project's own: untouched
