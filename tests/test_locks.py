"""Advisory file locks: acquire, list, release, conflicts, expiry, events, ownership.

Locks live in the database and need no running sandbox, so these run on SQLite and PostgreSQL
against a container row in the `stopped` state (nothing starts it: lock routes never reach
the agent). That writes report the locks covering them is tested on real sandboxes, on both
runtimes, at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from sqlalchemy import func, select
from websockets.asyncio.client import connect

from cloudcontainer.db import FileLock
from tests.conftest import Api, ApiFactory, TestUser
from tests.sandbox_helpers import new_container, stopped_container
from tests.support.net import free_port


@pytest.fixture
async def api(api_factory: ApiFactory) -> Api:
    return await api_factory(warm_pool_size=0)


async def acquire(api: Api, user: TestUser, cid: str, **body: Any) -> Any:
    return await api.client.post(f"/api/containers/{cid}/locks", json=body, headers=user.headers)


async def test_acquire_list_release(api: Api) -> None:
    user = await api.user()
    cid = await stopped_container(api, user)
    made = await acquire(api, user, cid, path="../src/", owner="ai-run-1", reason="refactor")
    assert made.status_code == 201, made.text
    lock = made.json()
    assert (lock["path"], lock["owner"], lock["reason"]) == ("/src", "ai-run-1", "refactor")
    assert lock["created_by"] == user.id
    assert lock["expires_at"] > lock["created_at"]
    listed = await api.client.get(f"/api/containers/{cid}/locks", headers=user.headers)
    assert [entry["id"] for entry in listed.json()["locks"]] == [lock["id"]]
    gone = await api.client.delete(
        f"/api/containers/{cid}/locks/{lock['id']}", headers=user.headers
    )
    assert gone.status_code == 204
    again = await api.client.delete(
        f"/api/containers/{cid}/locks/{lock['id']}", headers=user.headers
    )
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "lock_not_found"
    listed = await api.client.get(f"/api/containers/{cid}/locks", headers=user.headers)
    assert listed.json()["locks"] == []


async def test_overlapping_locks_of_another_owner_conflict(api: Api) -> None:
    user = await api.user()
    cid = await stopped_container(api, user)
    held = (await acquire(api, user, cid, path="/src", owner="ai-run-1", reason="edit")).json()
    for path in ("/src", "/src/App.tsx", "/", "src/deep/x"):
        refused = await acquire(api, user, cid, path=path, owner="ai-run-2")
        assert refused.status_code == 409, (path, refused.text)
        error = refused.json()["error"]
        assert error["code"] == "locked"
        assert "ai-run-1" in error["message"]
        assert error["details"]["lock"]["id"] == held["id"]
    # The same owner may lock more; unrelated paths are free for anyone.
    assert (await acquire(api, user, cid, path="/src/a", owner="ai-run-1")).status_code == 201
    assert (await acquire(api, user, cid, path="/srcx", owner="ai-run-2")).status_code == 201


async def test_locks_expire_with_an_event(api: Api) -> None:
    user = await api.user()
    cid = await stopped_container(api, user)
    async with api.services.events.subscribe(cid) as events:
        lock = (await acquire(api, user, cid, path="/a", owner="o", ttl_seconds=1)).json()
        seen = [await events.get()]
        async with asyncio.timeout(30):
            while seen[-1]["action"] != "expired":
                seen.append(await events.get())
    assert [(e["type"], e["action"], e["lock"]["id"]) for e in seen] == [
        ("lock", "acquired", lock["id"]),
        ("lock", "expired", lock["id"]),
    ]
    listed = await api.client.get(f"/api/containers/{cid}/locks", headers=user.headers)
    assert listed.json()["locks"] == []
    # Once expired, the path is free for another owner.
    assert (await acquire(api, user, cid, path="/a", owner="other")).status_code == 201


async def test_an_expired_lock_the_gateway_did_not_time_vanishes_on_reading(api: Api) -> None:
    """After a gateway restart no timer runs for old locks: reads drop and announce them."""
    user = await api.user()
    cid = await stopped_container(api, user)
    lock = (await acquire(api, user, cid, path="/a", owner="o", ttl_seconds=600)).json()
    api.services.locks.aclose()  # as if the gateway restarted: no timers
    async with api.services.database.session() as session:
        row = await session.get_one(FileLock, lock["id"])
        row.expires_at = row.created_at
    async with api.services.events.subscribe(cid) as events:
        listed = await api.client.get(f"/api/containers/{cid}/locks", headers=user.headers)
        assert listed.json()["locks"] == []
        event = events.get_nowait()
    assert (event["action"], event["lock"]["id"]) == ("expired", lock["id"])


@contextlib.asynccontextmanager
async def served(api: Api) -> AsyncIterator[str]:
    """The test's app on a loopback port, in this event loop, for WebSocket clients."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(api.app, host="127.0.0.1", port=port, lifespan="off", log_config=None)
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                await asyncio.sleep(0.01)
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_lock_changes_are_published_on_the_event_socket(api: Api) -> None:
    user = await api.user()
    cid = await stopped_container(api, user)
    ticket = (
        await api.client.post(
            "/api/auth/ws-ticket", json={"path": f"/api/containers/{cid}/events"},
            headers=user.headers,
        )
    ).json()["ticket"]  # fmt: skip
    async with (
        served(api) as base,
        connect(f"{base}/api/containers/{cid}/events?ticket={ticket}") as socket,
    ):
        assert json.loads(await socket.recv())["type"] == "status"
        lock = (await acquire(api, user, cid, path="/src", owner="ai", reason="r")).json()
        await api.client.delete(f"/api/containers/{cid}/locks/{lock['id']}", headers=user.headers)
        events = [json.loads(await socket.recv()) for _ in range(2)]
    assert [(e["type"], e["action"]) for e in events] == [
        ("lock", "acquired"),
        ("lock", "released"),
    ]
    assert events[0]["lock"] == lock


async def test_other_users_containers_have_no_locks_for_them(api: Api) -> None:
    owner, intruder = await api.user(), await api.user()
    cid = await stopped_container(api, owner)
    lock = (await acquire(api, owner, cid, path="/a", owner="o")).json()
    for method, url, body in (
        ("POST", f"/api/containers/{cid}/locks", {"path": "/b", "owner": "x"}),
        ("GET", f"/api/containers/{cid}/locks", None),
        ("DELETE", f"/api/containers/{cid}/locks/{lock['id']}", None),
    ):
        response = await api.client.request(method, url, json=body, headers=intruder.headers)
        assert response.status_code == 404, (method, response.text)
        assert response.json()["error"]["code"] == "container_not_found"
    listed = await api.client.get(f"/api/containers/{cid}/locks", headers=owner.headers)
    assert len(listed.json()["locks"]) == 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"owner": "o"}, id="no-path"),
        pytest.param({"path": "/a"}, id="no-owner"),
        pytest.param({"path": "", "owner": "o"}, id="empty-path"),
        pytest.param({"path": "a\u0000b", "owner": "o"}, id="nul-in-path"),
        pytest.param({"path": "/a", "owner": "  "}, id="blank-owner"),
        pytest.param({"path": "/a", "owner": "o", "ttl_seconds": 0}, id="zero-ttl"),
        pytest.param({"path": "/a", "owner": "o", "ttl_seconds": 10**9}, id="huge-ttl"),
        pytest.param({"path": "/a", "owner": "o", "ttl_seconds": "5"}, id="ttl-as-text"),
        pytest.param({"path": "/a", "owner": "o", "extra": 1}, id="unknown-field"),
    ],
)
async def test_bad_lock_requests_are_refused(api: Api, body: dict[str, Any]) -> None:
    user = await api.user()
    cid = await stopped_container(api, user)
    response = await acquire(api, user, cid, **body)
    assert response.status_code == 422, response.text
    listed = await api.client.get(f"/api/containers/{cid}/locks", headers=user.headers)
    assert listed.json()["locks"] == []


async def test_locks_go_with_their_container(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    await acquire(sandbox_api, user, cid, path="/src", owner="ai")
    deleted = await sandbox_api.client.delete(f"/api/containers/{cid}", headers=user.headers)
    assert deleted.status_code == 204
    async with sandbox_api.services.database.session() as session:
        left = await session.scalar(
            select(func.count()).select_from(FileLock).where(FileLock.container_id == cid)
        )
    assert left == 0


async def test_changes_report_the_locks_covering_them(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    files, client = f"/api/containers/{cid}/files", sandbox_api.client
    before = await client.put(f"{files}/first.ts", content=b"0", headers=user.headers)
    assert before.json()["locks"] == []  # no lock yet (and the gateway remembers that)
    lock = (await acquire(sandbox_api, user, cid, path="/src", owner="ai", reason="r")).json()
    put = await client.put(f"{files}/src/deep/a.ts?mkdirs=true", content=b"1", headers=user.headers)
    assert put.status_code == 200, put.text  # advisory: the write happens
    assert [entry["id"] for entry in put.json()["locks"]] == [lock["id"]]
    assert put.headers["x-cloudcontainer-locked"] == lock["id"]
    posted = await client.post(
        files, json={"path": "../src/b.ts", "content": "b"}, headers=user.headers
    )
    assert [entry["id"] for entry in posted.json()["locks"]] == [lock["id"]]
    batch = await client.post(
        files,
        json={"operations": [{"op": "write", "path": "/src/c.ts", "content": "c"}]},
        headers=user.headers,
    )
    assert [entry["id"] for entry in batch.json()["locks"]] == [lock["id"]]
    moved = await client.post(
        f"{files}:move", json={"from": "src/c.ts", "to": "c.ts"}, headers=user.headers
    )
    assert [entry["id"] for entry in moved.json()["locks"]] == [lock["id"]]  # from /src
    deleted = await client.delete(f"{files}/src/b.ts", headers=user.headers)
    assert deleted.status_code == 204
    assert deleted.headers["x-cloudcontainer-locked"] == lock["id"]
    outside = await client.put(f"{files}/other.ts", content=b"x", headers=user.headers)
    assert outside.json()["locks"] == []
    assert "x-cloudcontainer-locked" not in outside.headers
