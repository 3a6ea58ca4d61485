"""dockerd restarted under running sandboxes: clear errors meanwhile, everything back after.

Stopping dockerd (as `systemctl restart docker` does, without live-restore) stops every
container with it. The gateway must answer clearly while the engine is gone (503s naming the
engine, never a 500), lose nothing, and bring the sandboxes back once dockerd answers again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import Api
from tests.sandbox_helpers import new_container, sh
from tests.support.docker import restart_engine

pytestmark = [
    pytest.mark.parametrize("runtime_name", ["docker"], indirect=True),
    # dockerd stops its containers (up to 10 s each) and starts again; the first docker test
    # of a session also builds the sandbox image in its setup.
    pytest.mark.timeout(360),
]


async def test_dockerd_restarted_under_running_sandboxes(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    assert (await sh(sandbox_api, user, cid, "echo kept > kept.txt")).code == 0
    answers: list[tuple[str, int, Any]] = []
    stop = asyncio.Event()

    async def keep_asking() -> None:
        """What a client sees meanwhile: a container read, a file read and an exec."""
        requests = [
            ("GET", f"/api/containers/{cid}", None),
            ("GET", f"/api/containers/{cid}/files?path=kept.txt", None),
            ("POST", f"/api/containers/{cid}/exec", {"command": "true"}),
        ]
        while not stop.is_set():
            for method, url, body in requests:
                response = await sandbox_api.client.request(
                    method, url, json=body, headers=user.headers, timeout=30
                )
                is_json = response.headers.get("content-type", "").startswith("application/json")
                answers.append((url, response.status_code, response.json() if is_json else None))
            await asyncio.sleep(0.2)

    asker = asyncio.create_task(keep_asking())
    try:
        await asyncio.to_thread(restart_engine)
        async with asyncio.timeout(120):
            while True:
                container = (
                    await sandbox_api.client.get(f"/api/containers/{cid}", headers=user.headers)
                ).json()
                if container["status"] == "running" and container["agent"]["connected"]:
                    break
                assert container["status"] != "failed", container
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asker
    assert [a for a in answers if a[1] >= 500 and a[1] != 503] == [], answers
    for url, code, body in answers:
        if code >= 400:
            assert isinstance(body, dict), (url, code, body)
            assert "error" in body, (url, code, body)
    assert (await sh(sandbox_api, user, cid, "cat kept.txt")).stdout == "kept\n"
