"""Helpers for tests that run real sandboxes through the API."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from cloudcontainer.db import Container
from cloudcontainer.db.types import new_id
from cloudcontainer.internals.uvicorn import CoalescingHttpProtocol, DroppingWebSocketProtocol
from cloudcontainer.sandbox.supervisor import Supervisor
from tests.conftest import Api, ApiFactory, TestUser
from tests.support.clock import FakeClock
from tests.support.net import free_port


@dataclass
class ExecResult:
    stdout: str
    stderr: str
    code: int
    timed_out: bool = False


async def new_project(api: Api, user: TestUser, name: str = "app") -> str:
    response = await api.client.post("/api/projects", json={"name": name}, headers=user.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def new_container(
    api: Api, user: TestUser, template: str = "node", project_id: str | None = None, **body: Any
) -> dict[str, Any]:
    project_id = project_id or await new_project(api, user, f"{template}-{secrets.token_hex(4)}")
    response = await api.client.post(
        "/api/containers?wait=true",
        json={"project_id": project_id, "template": template, **body},
        headers=user.headers,
    )
    assert response.status_code == 201, response.text
    container: dict[str, Any] = response.json()
    assert container["status"] == "running", container
    return container


async def run(api: Api, user: TestUser, container_id: str, *argv: str, **body: Any) -> ExecResult:
    """`exec` to completion; the client waits as long as the command may run (`timeout`)."""
    response = await api.client.post(
        f"/api/containers/{container_id}/exec",
        json={"command": argv[0], "args": list(argv[1:]), **body},
        headers=user.headers,
        timeout=max(120, body.get("timeout", 60) + 30),
    )
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in response.text.splitlines()]
    out = "".join(line["data"] for line in lines if line["type"] == "stdout")
    err = "".join(line["data"] for line in lines if line["type"] == "stderr")
    last = lines[-1]
    assert last["type"] == "exit", lines
    return ExecResult(out, err, last["code"], last.get("timed_out", False))


async def sh(api: Api, user: TestUser, container_id: str, script: str) -> ExecResult:
    return await run(api, user, container_id, "sh", "-c", script)


async def until_listening(api: Api, user: TestUser, container_id: str, port: int) -> None:
    """Until a TCP socket in the sandbox listens on `port` on all IPv4 addresses."""
    listening = f"00000000:{port:04X} 00000000:0000 0A"  # /proc/net/tcp: local, remote, LISTEN
    waited = await sh(
        api, user, container_id,
        f"timeout 20 sh -c 'until grep -q \"{listening}\" /proc/net/tcp; do sleep 0.02; done'",
    )  # fmt: skip
    assert waited.code == 0, f"nothing came to listen on {port}: {waited}"


# Seconds of the fake clock. The app's own idle pass comes every IDLE / 4 of real time (60 s at
# most), after the test is over: the passes that count are the test's.
IDLE = 600.0


async def idle_app(factory: ApiFactory) -> tuple[Api, FakeClock, Supervisor]:
    """An app whose containers' idle time is read from a fake clock, and a supervisor whose
    idle pass the test runs when it has moved the clock."""
    api = await factory(idle_timeout_seconds=IDLE)
    clock = FakeClock()
    api.services.containers.clock = clock
    return api, clock, Supervisor(api.services.containers)


async def idle_pass_after(clock: FakeClock, supervisor: Supervisor, seconds: float) -> None:
    clock.advance(seconds)
    await supervisor.stop_idle()


async def wait_for_status(
    api: Api, user: TestUser, container_id: str, wanted: str, timeout: float = 30
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            response = await api.client.get(f"/api/containers/{container_id}", headers=user.headers)
            container: dict[str, Any] = response.json()
            if container.get("status") == wanted:
                return container
            await asyncio.sleep(0.05)


@asynccontextmanager
async def live_server(api: Api, port: int | None = None) -> AsyncIterator[str]:
    """Serve the test's app on a loopback port (for WebSockets, which the in-process
    transport does not carry); yields its ws:// base URL. The app's lifespan already runs.
    A given `port` serves a restarted app where clients knew the previous one."""
    port = port or free_port()
    config = uvicorn.Config(api.app, host="127.0.0.1", port=port, lifespan="off",
                            log_level="warning", ws=DroppingWebSocketProtocol,
                            http=CoalescingHttpProtocol)  # as `cloudcontainer serve`  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def events_socket_url(api: Api, user: TestUser, base: str, container_id: str) -> str:
    path = f"/api/containers/{container_id}/events"
    response = await api.client.post(
        "/api/auth/ws-ticket", json={"path": path}, headers=user.headers
    )
    return f"{base}{path}?ticket={response.json()['ticket']}"


async def stopped_container(api: Api, user: TestUser) -> str:
    """A container row that is stopped and wanted stopped: locks need nothing more."""
    project_id = await new_project(api, user)
    container_id = new_id("ctr")
    async with api.services.database.session() as session:
        session.add(
            Container(
                id=container_id, owner_id=user.id, project_id=project_id,
                runtime=api.services.runtime.name, template="node", status="stopped",
                desired="stopped", cpu=1.0, memory_mb=512, pids_limit=256, agent_secret="x",
                dev_servers=[],
            )
        )  # fmt: skip
    return container_id
