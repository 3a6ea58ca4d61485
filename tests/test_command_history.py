"""The command history and audit log: what exec runs is on record, searchable per project."""

from __future__ import annotations

from typing import Any

from cloudcontainer.terminals.commands import command_line
from tests.conftest import Api, ApiFactory
from tests.sandbox_helpers import new_container, new_project


async def test_history_is_searched_per_project_on_both_databases(api_factory: ApiFactory) -> None:
    """No sandbox needed: records written as exec writes them, read through the API."""
    api = await api_factory(warm_pool_size=0)
    user = await api.user()
    project = await new_project(api, user)
    log = api.services.terminals.commands
    lines = ["npm install", "npm run dev", "git status", "echo 100%_done", "ls -la"]
    for number, line in enumerate(lines):
        record = await log.started(project_id=project, container_id="ctr_x", user_id=user.id,
                                   source="exec", command=line)  # fmt: skip
        if number != 1:  # the dev server is still running
            await log.finished(record, number)

    async def history(**params: Any) -> list[dict[str, Any]]:
        response = await api.client.get(
            f"/api/projects/{project}/history", params=params, headers=user.headers
        )
        assert response.status_code == 200, response.text
        result: list[dict[str, Any]] = response.json()
        return result

    everything = await history()
    assert [entry["command"] for entry in everything] == lines[::-1]
    assert {entry["command"]: entry["exit_code"] for entry in everything}["npm run dev"] is None
    assert [entry["command"] for entry in await history(q="npm")] == ["npm run dev", "npm install"]
    # LIKE's own wildcards are plain characters in a query.
    assert [entry["command"] for entry in await history(q="%_")] == ["echo 100%_done"]
    assert await history(q="n_m") == []  # a wildcard would match "npm"
    assert len(await history(limit=2)) == 2
    other = await api.user()
    response = await api.client.get(f"/api/projects/{project}/history", headers=other.headers)
    assert response.status_code == 404
    for params in ({"limit": 0}, {"limit": 5000}, {"q": "x" * 2000}):
        response = await api.client.get(
            f"/api/projects/{project}/history", params=params, headers=user.headers
        )
        assert response.status_code == 422, params


async def test_exec_puts_each_command_on_record(sandbox_api_factory: Any) -> None:
    api: Api = await sandbox_api_factory(command_deny_patterns=[r"^shutdown\b"])
    user = await api.user()
    container = await new_container(api, user)
    cid, project = container["id"], container["project_id"]
    for command, args in (("sh", ["-c", "exit 7"]), ("echo", ["it's", "a test"])):
        response = await api.client.post(
            f"/api/containers/{cid}/exec", json={"command": command, "args": args},
            headers=user.headers,
        )  # fmt: skip
        assert response.status_code == 200
    denied = await api.client.post(
        f"/api/containers/{cid}/exec", json={"command": "shutdown"}, headers=user.headers
    )
    assert denied.status_code == 403
    entries = (
        await api.client.get(f"/api/projects/{project}/history", headers=user.headers)
    ).json()
    assert [(e["command"], e["exit_code"], e["source"]) for e in entries] == [
        (command_line("echo", ["it's", "a test"]), 0, "exec"),
        ("sh -c 'exit 7'", 7, "exec"),
    ]
    assert all(e["user_id"] == user.id and e["container_id"] == cid for e in entries)
    assert all(e["finished_at"] >= e["started_at"] for e in entries)
