"""kill -9 the gateway and start it again: sandboxes are re-adopted, not orphaned or doubled."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import httpx
from websockets.sync.client import connect

from tests.support.server import CLI, cli_env, serve

PASSWORD = "a long enough password"


def login(url: str) -> httpx.Client:
    """A client logged in as the operator; use it in a `with` block."""
    client = httpx.Client(base_url=url, timeout=120)
    tokens = client.post(
        "/api/auth/login", json={"email": "ops@example.com", "password": PASSWORD}
    ).json()
    client.headers["Authorization"] = f"Bearer {tokens['access_token']}"
    return client


def run(client: httpx.Client, container_id: str, script: str) -> tuple[str, int]:
    response = client.post(
        f"/api/containers/{container_id}/exec", json={"command": "sh", "args": ["-c", script]}
    )
    lines = [json.loads(line) for line in response.text.splitlines()]
    return "".join(line.get("data", "") for line in lines if line["type"] == "stdout"), lines[-1][
        "code"
    ]


def terminal_output(url: str, client: httpx.Client, cid: str, tid: str, *, typed: bytes,
                    until: bytes) -> bytes:  # fmt: skip
    """Attach to a terminal, type `typed`, and read its bytes until `until` shows."""
    path = f"/api/containers/{cid}/terminals/{tid}"
    ticket = client.post("/api/auth/ws-ticket", json={"path": path}).json()["ticket"]
    ws_url = url.replace("http", "ws") + f"{path}?ticket={ticket}"
    seen = b""
    with connect(ws_url, max_size=None) as socket:
        assert json.loads(socket.recv(timeout=30))["type"] == "attached"
        socket.send(typed)
        deadline = time.monotonic() + 30
        while until not in seen:
            frame = socket.recv(timeout=max(0.1, deadline - time.monotonic()))
            if isinstance(frame, bytes):
                seen += frame
    return seen


def sandbox_processes(sandbox_id: str) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if sandbox_id.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                    pids.append(int(name))
            except OSError:
                pass
    return pids


def test_kill_9_then_restart_readopts_sandboxes_and_cleans_stale_ones(tmp_path: Path) -> None:
    data = tmp_path / "state"
    settings = {
        "argon2_time_cost": "1",
        "argon2_memory_cost_kib": "1024",
        "health_interval_seconds": "0.5",
    }
    created = subprocess.run(
        [*CLI, "user", "create", "ops@example.com", "--password-stdin", "--data-dir", str(data)],
        input=PASSWORD, text=True, capture_output=True, env=cli_env(**settings), timeout=60,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    with serve(data, **settings) as first, closing(login(first.url)) as client:
        project = client.post("/api/projects", json={"name": "p"}).json()["id"]
        kept = client.post("/api/containers?wait=true", json={"project_id": project}).json()
        orphan = client.post("/api/containers?wait=true", json={"project_id": project}).json()
        assert kept["status"] == orphan["status"] == "running"
        assert (
            run(client, kept["id"], "echo precious > keep.txt; (sleep 1000 >/dev/null 2>&1 &)")[1]
            == 0
        )
        terminal = client.post(f"/api/containers/{kept['id']}/terminals", json={}).json()
        terminal_output(first.url, client, kept["id"], terminal["id"],
                        typed=b"echo term-$((40+2))\n", until=b"term-42\r\n")  # fmt: skip
        agent_pid = sandbox_processes(kept["id"])
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
    # The sandboxes outlived the gateway.
    assert sandbox_processes(kept["id"]) == agent_pid
    # While the gateway is down, the second container's row disappears (say, restored backup).
    with sqlite3.connect(data / "cloudcontainer.db") as db:
        db.execute("DELETE FROM containers WHERE id = ?", (orphan["id"],))
    with serve(data, **settings) as second, closing(login(second.url)) as client:
        container = client.get(f"/api/containers/{kept['id']}").json()
        assert container["status"] == "running"
        assert container["agent"]["connected"] is True
        assert container["status_reason"] == "re-adopted after a gateway restart"
        out, code = run(client, kept["id"], "cat keep.txt; pgrep -c -x sleep")
        assert (out, code) == ("precious\n1\n", 0)
        # The terminal kept running, and re-attaching replays what it printed before.
        tid = terminal["id"]
        assert client.get(f"/api/containers/{kept['id']}/terminals/{tid}").json()["state"] == (
            "running"
        )
        seen = terminal_output(second.url, client, kept["id"], tid,
                               typed=b"echo after-$((6*7))\n", until=b"after-42\r\n")  # fmt: skip
        assert b"term-42\r\n" in seen
        # No descriptor of the gateway (its database, its log, its sockets) leaked inside.
        leaked, _ = run(
            client,
            kept["id"],
            "ls -l /proc/[0-9]*/fd/ 2>/dev/null | grep -E 'cloudcontainer.db|serve-|TCP' || true",
        )
        assert leaked == ""
        assert [c["id"] for c in client.get("/api/containers").json()] == [kept["id"]]
        deadline = time.monotonic() + 10
        while sandbox_processes(orphan["id"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sandbox_processes(orphan["id"]) == []
        assert not (data / "sandboxes" / orphan["id"]).exists()
        assert (data / "sandboxes" / kept["id"]).exists()
        client.delete(f"/api/containers/{kept['id']}")
        second.stop()
