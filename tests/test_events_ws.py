"""The per-container event WebSocket, on a real server: tickets, ownership, status events."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support.server import CLI, cli_env, serve

PASSWORD = "a long enough password"
SETTINGS = {"argon2_time_cost": "1", "argon2_memory_cost_kib": "1024", "warm_pool_size": "0"}


def make_user(data: Path, email: str) -> None:
    result = subprocess.run(
        [*CLI, "user", "create", email, "--password-stdin", "--data-dir", str(data)],
        input=PASSWORD, text=True, capture_output=True, env=cli_env(**SETTINGS), timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


async def login(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    tokens = (
        await client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    ).json()
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def ticket(client: httpx.AsyncClient, headers: dict[str, str], ws_url: str) -> str:
    path = httpx.URL(ws_url).path
    response = await client.post("/api/auth/ws-ticket", json={"path": path}, headers=headers)
    return str(response.json()["ticket"])


async def test_event_socket_streams_status_and_guards_access(tmp_path: Path) -> None:
    data = tmp_path / "state"
    make_user(data, "owner@example.com")
    make_user(data, "other@example.com")
    with serve(data, **SETTINGS) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            owner, other = (
                await login(client, "owner@example.com"),
                await login(client, "other@example.com"),
            )
            project = (
                await client.post("/api/projects", json={"name": "p"}, headers=owner)
            ).json()["id"]
            cid = (
                await client.post(
                    "/api/containers?wait=true", json={"project_id": project}, headers=owner
                )
            ).json()["id"]
            ws_url = server.url.replace("http", "ws") + f"/api/containers/{cid}/events"

            good = await ticket(client, owner, ws_url)
            async with connect(f"{ws_url}?ticket={good}") as socket:
                first = json.loads(await socket.recv())
                assert first["type"] == "status"
                assert first["status"] == "running"
                await client.post(f"/api/containers/{cid}/stop", headers=owner)
                seen = []
                async with asyncio.timeout(30):
                    while "stopped" not in seen:
                        event = json.loads(await socket.recv())
                        if event["type"] == "status":
                            seen.append(event["status"])
                assert seen[:2] == ["stopping", "stopped"]

            for bad in (good, "wst_not-a-ticket", ""):  # reused, unknown, missing
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(f"{ws_url}?ticket={bad}"):
                        pass
                assert refused.value.response.status_code == 403
            with pytest.raises(InvalidStatus):
                async with connect(f"{ws_url}?ticket={await ticket(client, other, ws_url)}"):
                    pass

            # Deleting the container ends the stream with a normal close.
            async with connect(f"{ws_url}?ticket={await ticket(client, owner, ws_url)}") as socket:
                await socket.recv()
                await client.delete(f"/api/containers/{cid}", headers=owner)
                async with asyncio.timeout(30):
                    async for message in socket:
                        last = json.loads(message)
                assert last == {"type": "status", "status": "deleted"}
                assert socket.close_code == 1000
        assert server.stop()
