"""The audit log: what the gateway records, who may read it, its writer and its retention."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from cloudcontainer.audit import AuditLog, AuditQuery, actions
from cloudcontainer.db import AuditEvent, Database, migrate
from tests.conftest import PASSWORD, Api, TestUser
from tests.sandbox_helpers import new_container
from tests.support.server import CLI, cli_env, serve
from tests.test_cli import create_user, run_cli

RESET = "Reset your cloudcontainer password"
WRONG = "not the password at all"


async def audit(api: Api, admin: TestUser, **params: Any) -> dict[str, Any]:
    response = await api.client.get("/api/admin/audit", params=params, headers=admin.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_logins_keys_logout_and_reset_are_recorded_with_actor_and_source(api: Api) -> None:
    admin = await api.user("root@example.com", admin=True)
    ada = await api.user("ada@example.com")
    failed = await api.client.post(
        "/api/auth/login", json={"email": "ada@example.com", "password": WRONG}
    )
    assert failed.status_code == 401
    unknown = await api.client.post(
        "/api/auth/login", json={"email": "nobody@example.com", "password": WRONG}
    )
    assert unknown.status_code == 401
    key = await api.client.post("/api/auth/keys", json={"name": "ci"}, headers=ada.headers)
    assert key.status_code == 201
    key_id = key.json()["id"]
    revoked = await api.client.delete(f"/api/auth/keys/{key_id}", headers=ada.headers)
    assert revoked.status_code == 204
    logout = await api.client.post("/api/auth/logout", headers=ada.headers)
    assert logout.status_code == 204
    await api.client.post("/api/auth/password-reset/request", json={"email": ada.email})
    await api.services.tasks.drain()
    token = api.mailbox.token_in(ada.email, RESET)
    reset = await api.client.post(
        "/api/auth/password-reset/confirm", json={"token": token, "password": "a new password 2"}
    )
    assert reset.status_code == 204

    events = (await audit(api, admin))["items"]
    # ASGITransport reports this client address.
    assert {event["source_ip"] for event in events} == {"127.0.0.1"}
    by_action: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_action.setdefault(event["action"], []).append(event)
    assert [e["actor_email"] for e in by_action[actions.LOGIN]] == [ada.email, admin.email]
    assert by_action[actions.LOGIN][0]["actor_id"] == ada.id
    assert by_action[actions.LOGIN][0]["target_type"] == "session"
    failures = by_action[actions.LOGIN_FAILED]
    assert [e["actor_email"] for e in failures] == ["nobody@example.com", ada.email]
    assert all(e["actor_id"] is None for e in failures)
    assert all(e["detail"] == {"reason": "invalid_credentials"} for e in failures)
    [created] = by_action[actions.API_KEY_CREATED]
    assert (created["actor_id"], created["target_id"]) == (ada.id, key_id)
    assert created["detail"]["name"] == "ci"
    [revocation] = by_action[actions.API_KEY_REVOKED]
    assert (revocation["actor_id"], revocation["target_id"]) == (ada.id, key_id)
    [logged_out] = by_action[actions.LOGOUT]
    assert logged_out["actor_id"] == ada.id
    assert logged_out["target_id"] == by_action[actions.LOGIN][0]["target_id"]
    [reset_event] = by_action[actions.PASSWORD_RESET]
    assert reset_event["actor_id"] == ada.id
    # Newest first.
    assert [e["at"] for e in events] == sorted((e["at"] for e in events), reverse=True)
    # No password, tried or set, is anywhere in the log.
    async with api.services.database.session() as session:
        stored = list(await session.scalars(select(AuditEvent)))
    dump = json.dumps([[e.actor_email, e.detail, e.target_id] for e in stored])
    assert WRONG not in dump
    assert PASSWORD not in dump
    assert "a new password 2" not in dump


async def test_the_audit_log_is_for_administrators_only(api: Api) -> None:
    ada = await api.user("ada@example.com")
    response = await api.client.get("/api/admin/audit", headers=ada.headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "admin_required"
    assert (await api.client.get("/api/admin/audit")).status_code == 401


async def test_filters_by_actor_action_and_time(api: Api) -> None:
    admin = await api.user("root@example.com", admin=True)
    ada = await api.user("ada@example.com")
    await api.user("bob@example.com")
    ada_only = (await audit(api, admin, actor=ada.id))["items"]
    assert [(e["action"], e["actor_id"]) for e in ada_only] == [(actions.LOGIN, ada.id)]
    logins = (await audit(api, admin, action=actions.LOGIN))["items"]
    assert len(logins) == 3
    future = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    assert (await audit(api, admin, since=future))["items"] == []
    assert len((await audit(api, admin, since=past, until=future))["items"]) == 3
    assert (await audit(api, admin, until=past))["items"] == []
    bad = await api.client.get(
        "/api/admin/audit", params={"since": "2026-01-01T00:00:00"}, headers=admin.headers
    )
    assert bad.status_code == 422  # a time without its offset is ambiguous


async def test_pages_follow_one_another_without_gaps_or_repeats(api: Api) -> None:
    admin = await api.user("root@example.com", admin=True)
    # Many events stamped the same instant: the cursor must order ties by id.
    instant = datetime.now(UTC)
    log = AuditLog(api.services.database, retention_days=0, clock=lambda: instant)
    log.start()
    for n in range(25):
        await log.record(actions.LOGIN_FAILED, actor_email=f"u{n}@example.com")
    await log.aclose()
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 7, "action": actions.LOGIN_FAILED}
        if cursor:
            params["cursor"] = cursor
        page = await audit(api, admin, **params)
        seen += [event["id"] for event in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 25
    broken = await api.client.get(
        "/api/admin/audit", params={"cursor": "not-a-cursor"}, headers=admin.headers
    )
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "invalid_cursor"


async def test_graceful_shutdown_writes_every_queued_event(database_url: str) -> None:
    database = Database(database_url)
    await migrate.upgrade(database)
    async with database.session() as session:
        before = await session.scalar(select(func.count()).select_from(AuditEvent))
    log = AuditLog(database, retention_days=0, batch_size=50)
    log.start()
    for n in range(2000):
        await log.record(actions.LOGIN, actor_id=f"usr_{n}")
    await log.aclose()  # nothing awaited the writer before this
    async with database.session() as session:
        after = await session.scalar(select(func.count()).select_from(AuditEvent))
    await database.aclose()
    assert (after or 0) - (before or 0) == 2000


async def test_events_past_the_retention_are_pruned(api: Api) -> None:
    now = datetime.now(UTC)
    old = AuditLog(api.services.database, retention_days=0, clock=lambda: now - timedelta(days=40))
    old.start()
    await old.record(actions.LOGIN, actor_id="usr_old")
    await old.aclose()
    log = AuditLog(api.services.database, retention_days=30, prune_interval_seconds=0.05)
    await log.record(actions.LOGIN, actor_id="usr_new")
    log.start()  # the pruner runs at once, then every 50 ms
    await log.flush()
    page = None
    for _ in range(100):
        page = await log.query(AuditQuery(limit=10))
        if [e.actor_id for e in page.items if e.actor_id in ("usr_old", "usr_new")] == ["usr_new"]:
            break
        await asyncio.sleep(0.05)
    await log.aclose()
    assert page is not None
    assert [e.actor_id for e in page.items if e.actor_id in ("usr_old", "usr_new")] == ["usr_new"]


def test_cli_lists_the_audit_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    assert create_user(data_dir, "root@example.com", "--admin").returncode == 0
    database = f"sqlite+aiosqlite:///{data_dir / 'cloudcontainer.db'}"

    async def add() -> None:
        db = Database(database)
        log = AuditLog(db, retention_days=0)
        log.start()
        await log.record(
            actions.LOGIN_FAILED, actor_email="[bold]mallory@example.com", source_ip="10.0.0.9"
        )
        await log.record(actions.LOGIN, actor_id="usr_1", actor_email="root@example.com")
        await log.aclose()
        await db.aclose()

    asyncio.run(add())
    listed = subprocess.run(
        [*CLI, "audit", "list", "--data-dir", str(data_dir), "--action", "login_failed"],
        capture_output=True, text=True, timeout=60, env={**cli_env(), "COLUMNS": "200"},
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "login_failed" in listed.stdout
    assert "[bold]mallory@example.com" in listed.stdout  # shown as data, not rich markup
    assert "10.0.0.9" in listed.stdout
    assert "root@example.com" not in listed.stdout
    bad = run_cli("audit", "list", "--data-dir", str(data_dir), "--since", "yesterday")
    assert bad.returncode == 2
    assert "Not an ISO time" in bad.stderr


@pytest.mark.parametrize("name", actions.ACTIONS)
def test_action_names_fit_their_column(name: str) -> None:
    assert name.isidentifier()
    assert len(name) <= 64


def test_a_served_gateway_records_and_a_graceful_stop_keeps_every_event(tmp_path: Path) -> None:
    """The real `cloudcontainer serve`: failed logins from the network, SIGTERM straight after
    the last one, and every event is in the database for `cloudcontainer audit list`."""
    data_dir = tmp_path / "state"
    assert create_user(data_dir, "root@example.com", "--admin").returncode == 0
    with serve(data_dir) as server:
        for n in range(20):
            response = httpx.post(
                f"{server.url}/api/auth/login",
                json={"email": f"guess{n}@example.com", "password": WRONG},
            )
            assert response.status_code == 401
        assert server.stop()
    listed = subprocess.run(
        [*CLI, "audit", "list", "--data-dir", str(data_dir), "--action", "login_failed"],
        capture_output=True, text=True, timeout=60, env={**cli_env(), "COLUMNS": "250"},
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert all(f"guess{n}@example.com" in listed.stdout for n in range(20))
    assert listed.stdout.count("127.0.0.1") == 20


@pytest.mark.parametrize("runtime_name", ["local"])  # the audit is the gateway's, not a runtime's
async def test_containers_created_and_deleted_are_recorded(sandbox_api_factory: Any) -> None:
    api: Api = await sandbox_api_factory()
    admin = await api.user("root@example.com", admin=True)
    ada = await api.user("ada@example.com")
    container = await new_container(api, ada)
    deleted = await api.client.delete(f"/api/containers/{container['id']}", headers=ada.headers)
    assert deleted.status_code == 204
    events = (await audit(api, admin, actor=ada.id))["items"]
    assert [(e["action"], e["target_id"]) for e in events[:2]] == [
        (actions.CONTAINER_DELETED, container["id"]),
        (actions.CONTAINER_CREATED, container["id"]),
    ]
    assert events[1]["detail"] == {
        "project_id": container["project_id"], "template": "node", "ephemeral": False,
    }  # fmt: skip
    assert all(e["actor_email"] == ada.email and e["source_ip"] == "127.0.0.1" for e in events)
