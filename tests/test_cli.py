"""The `cloudcontainer` command, run for real in subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.net import free_port
from tests.support.server import CLI, cli_env, serve

PASSWORD = "a long enough password"


def run_cli(*args: str, stdin: str = "", **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, text=True, env=cli_env(**settings),
        timeout=60,
    )  # fmt: skip


def create_user(
    data_dir: Path, email: str, *extra: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "user", "create", email, "--password-stdin", "--data-dir", str(data_dir), *extra,
        stdin=PASSWORD + "\n", argon2_time_cost="1", argon2_memory_cost_kib="1024", **settings,
    )  # fmt: skip


def test_serve_with_defaults_then_log_in_as_a_cli_created_admin(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    created = create_user(data_dir, "Root@Example.com", "--admin")
    assert created.returncode == 0, created.stderr
    assert "root@example.com" in created.stderr
    with serve(data_dir) as server:
        login = httpx.post(
            f"{server.url}/api/auth/login",
            json={"email": "root@example.com", "password": PASSWORD},
        )
        assert login.status_code == 200, login.text
        assert login.json()["token_type"] == "bearer"
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        me = httpx.get(f"{server.url}/api/auth/me", headers=headers).json()
        assert me["is_admin"] is True
        assert me["email_verified"] is True
        assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}
        assert server.stop()
    # The embedded defaults: SQLite and a secret key in the data directory, mode 0600.
    assert (data_dir / "cloudcontainer.db").is_file()
    assert (data_dir / "secret_key").stat().st_mode & 0o777 == 0o600


def test_serve_writes_one_json_log_line_per_request_with_its_request_id(tmp_path: Path) -> None:
    with serve(tmp_path / "state") as server:
        httpx.get(f"{server.url}/healthz", headers={"X-Request-ID": "cli-log-test"})
        server.stop()
    lines = [
        json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")
    ]
    access = [line for line in lines if line.get("request_id") == "cli-log-test"]
    assert len(access) == 1
    assert access[0]["route"] == "/healthz"
    assert access[0]["status"] == 200


def test_unverified_registration_can_verify_from_the_outbox_without_smtp(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    with serve(data_dir) as server:
        answer = httpx.post(
            f"{server.url}/api/auth/register",
            json={"email": "solo@example.com", "password": PASSWORD},
        )
        assert answer.status_code == 202
        outbox = data_dir / "outbox"
        for _ in range(100):
            mails = list(outbox.glob("*.eml"))
            if mails:
                break
            import time

            time.sleep(0.05)
        assert len(mails) == 1
        from email import message_from_bytes, policy

        body = message_from_bytes(mails[0].read_bytes(), policy=policy.default).get_content()
        token = body.split("token=", 1)[1].split()[0]
        verified = httpx.post(f"{server.url}/api/auth/verify-email", json={"token": token})
        assert verified.status_code == 200
        login = httpx.post(
            f"{server.url}/api/auth/login", json={"email": "solo@example.com", "password": PASSWORD}
        )
        assert login.status_code == 200
        server.stop()
    # The log line tells a local user where the mail went.
    assert "mail written to outbox" in server.log.read_text()


def test_user_create_twice_fails_with_a_clear_message(tmp_path: Path) -> None:
    assert create_user(tmp_path, "twice@example.com").returncode == 0
    again = create_user(tmp_path, "TWICE@example.com")
    assert again.returncode == 1
    assert "exists" in again.stderr


@pytest.mark.parametrize(
    ("email", "stdin", "message"),
    [
        pytest.param("not-an-email", PASSWORD, "Invalid e-mail", id="bad-email"),
        pytest.param("ok@example.com", "short", "8 to 256", id="short-password"),
    ],
)
def test_user_create_rejects_bad_input(
    tmp_path: Path, email: str, stdin: str, message: str
) -> None:
    result = run_cli(
        "user", "create", email, "--password-stdin", "--data-dir", str(tmp_path), stdin=stdin
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "cloudcontainer.db").exists()


def test_user_create_needs_password_stdin(tmp_path: Path) -> None:
    result = run_cli("user", "create", "a@example.com", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "--password-stdin" in result.stderr


def test_user_create_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    email = f"pg-{tmp_path.name}@example.com".lower()
    result = create_user(tmp_path, email, database_url=postgres_url)
    assert result.returncode == 0, result.stderr
    assert create_user(tmp_path, email, database_url=postgres_url).returncode == 1


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    result = run_cli("db", "upgrade", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "cloudcontainer.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"users", "projects", "auth_sessions", "refresh_tokens", "api_keys"} <= tables
    assert revision
    # Idempotent.
    assert run_cli("db", "upgrade", "--data-dir", str(tmp_path)).returncode == 0


def test_invalid_setting_exits_with_the_field_named(tmp_path: Path) -> None:
    result = run_cli("db", "upgrade", "--data-dir", str(tmp_path), preview_ports="9-1")
    assert result.returncode == 2
    assert "preview_ports" in result.stderr


def test_serve_with_a_redis_that_does_not_answer_says_so_in_a_line(tmp_path: Path) -> None:
    port = free_port()
    result = run_cli("serve", "--data-dir", str(tmp_path), "--port", str(free_port()),
                     redis_url=f"redis://:hunter2@127.0.0.1:{port}/0")  # fmt: skip
    said = " ".join((result.stdout + result.stderr).split())  # unwrapped
    assert result.returncode == 1
    assert "The gateway cannot start" in said
    assert f"Redis does not answer at redis://***@127.0.0.1:{port}/0" in said
    assert "hunter2" not in said
    assert "Traceback" not in said


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    result = run_cli("db", "upgrade", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "nope.toml" in result.stderr


async def test_user_delete_removes_the_account_under_a_running_server(tmp_path: Path) -> None:
    """An operator deletes an account while the server runs: its sandbox is destroyed, its
    credentials stop working, and the server closes its open WebSocket at revalidation."""
    from websockets.asyncio.client import connect

    data_dir = tmp_path / "state"
    quick = {"argon2_time_cost": "1", "argon2_memory_cost_kib": "1024", "warm_pool_size": "0"}
    assert create_user(data_dir, "gone@example.com").returncode == 0
    assert create_user(data_dir, "kept@example.com").returncode == 0
    with serve(data_dir, ws_revalidate_seconds="0.5", **quick) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            tokens = {}
            for email in ("gone@example.com", "kept@example.com"):
                login = await client.post(
                    "/api/auth/login", json={"email": email, "password": PASSWORD}
                )
                tokens[email] = {"Authorization": f"Bearer {login.json()['access_token']}"}
            gone = tokens["gone@example.com"]
            project = (await client.post("/api/projects", json={"name": "p"}, headers=gone)).json()
            cid = (
                await client.post(
                    "/api/containers?wait=true", json={"project_id": project["id"]}, headers=gone
                )
            ).json()["id"]
            path = f"/api/containers/{cid}/events"
            ticket = (
                await client.post("/api/auth/ws-ticket", json={"path": path}, headers=gone)
            ).json()["ticket"]
            ws_url = server.url.replace("http", "ws") + f"{path}?ticket={ticket}"
            async with connect(ws_url) as socket:
                assert json.loads(await socket.recv())["status"] == "running"
                refused = run_cli("user", "delete", "gone@example.com", "--data-dir",
                                  str(data_dir), stdin="n\n")  # fmt: skip
                assert refused.returncode == 1
                assert (await client.get("/api/auth/me", headers=gone)).status_code == 200
                deleted = run_cli(
                    "user", "delete", "Gone@Example.com", "--yes", "--data-dir", str(data_dir)
                )
                assert deleted.returncode == 0, deleted.stderr
                assert "gone@example.com" in deleted.stderr
                with contextlib.suppress(ConnectionClosed):
                    async with asyncio.timeout(10):
                        async for _ in socket:
                            pass
                assert socket.close_code == 1008
                # The sessions are revoked first: this server may see that before the user goes.
                assert socket.close_reason in ("account deleted", "session ended: account_deleted")
            assert (await client.get("/api/auth/me", headers=gone)).status_code == 401
            kept = await client.get("/api/auth/me", headers=tokens["kept@example.com"])
            assert kept.status_code == 200
        again = run_cli("user", "delete", "gone@example.com", "--yes", "--data-dir", str(data_dir))
        assert again.returncode == 1
        assert "No account" in again.stderr
        assert server.stop()
    with sqlite3.connect(data_dir / "cloudcontainer.db") as db:
        assert db.execute("SELECT count(*) FROM containers").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM users").fetchone() == (1,)
    sandboxes = data_dir / "sandboxes"
    assert not sandboxes.exists() or cid not in {p.name for p in sandboxes.iterdir()}
