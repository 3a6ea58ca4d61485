"""The command history: what exec runs is on record, searchable per project; what a sandbox
reports is marked as the sandbox's, cleaned and bounded."""

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


# -- what a sandbox reports is the tenant's word (issue 9) ------------------------------------

FORGE = r"""
printf '\033]6973;start;FORGED \033[31mred\033[0m \033]0;title\033\\ \302\233 \342\200\256evil\a'
printf '\033]6973;end;99999999999999\a'
printf '\033]6973;start;%s\a' "$(head -c 100000 /dev/zero | tr '\0' A)"
i=0; while [ $i -lt 3000 ]; do printf '\033]6973;start;FLOOD-%d\a' $i; i=$((i+1)); done
echo forged-$((6*7))
"""


async def test_a_forged_shell_history_is_marked_cleaned_and_bounded(
    sandbox_api_factory: Any,
) -> None:
    """A process in the sandbox writes jsh's private report sequence itself: what the history
    shows is marked as the sandbox's, carries no terminal escape, is cut, and a flood of
    reports is cut off at the project's rate."""
    from tests.sandbox_helpers import live_server, run
    from tests.test_terminals import attached, create, read_until

    api: Api = await sandbox_api_factory(history_reports_per_minute=100)
    user = await api.user()
    container = await new_container(api, user)
    cid, project = container["id"], container["project_id"]
    assert (await run(api, user, cid, "sh", "-c", "cat > /tmp/forge.sh", stdin=FORGE)).code == 0
    terminal = await create(api, user, cid)
    async with live_server(api) as base, attached(api, user, base, cid, terminal["id"]) as (
        socket, _,
    ):  # fmt: skip
        await socket.send(b"sh /tmp/forge.sh\n")
        await read_until(socket, b"forged-42")
    await api.services.tasks.drain()
    entries = (
        await api.client.get(
            f"/api/projects/{project}/history", params={"limit": 1000}, headers=user.headers
        )
    ).json()
    shell = [e for e in entries if e["source"] == "shell"]
    gateway = [e for e in entries if e["source"] == "exec"]
    assert all(e["reported_by"] == "sandbox" for e in shell)
    assert [e["reported_by"] for e in gateway] == ["gateway"]  # the exec that wrote the script
    forged = next(e for e in shell if e["command"].startswith("FORGED"))
    assert forged["command"] == (
        "FORGED \\x1b[31mred\\x1b[0m \\x1b]0;title\\x1b\\ \\x9b \\u202eevil"
    )
    assert forged["exit_code"] is None  # 99999999999999 is no exit code
    long = next(e for e in shell if e["command"].startswith("AAAA"))
    assert len(long["command"]) == 4096
    assert long["command"].endswith("…")
    floods = [e for e in shell if e["command"].startswith("FLOOD-")]
    assert 0 < len(floods) <= 100  # the budget: 100 at once, then 100 a minute
    assert len(shell) <= 101  # (plus at most one refilled in the seconds the test takes)
    for entry in entries:
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in entry["command"])
    assert api.services.terminals.report_budget.dropped >= 2900


async def test_sandbox_reported_rows_are_pruned_per_project_and_exec_rows_kept(
    api_factory: ApiFactory,
) -> None:
    api = await api_factory(warm_pool_size=0)
    user = await api.user()
    project = await new_project(api, user)
    log = api.services.terminals.commands
    await log.started(project_id=project, container_id="ctr_x", user_id=user.id,
                      source="exec", command="npm install")  # fmt: skip
    for n in range(150):
        await log.started(project_id=project, container_id="ctr_x", user_id=user.id,
                          source="shell", command=f"line {n}")  # fmt: skip
    await log.prune_reported(project, "shell", 100)
    rows = await log.history(project, "", 1000)
    shell = [r.command for r in rows if r.source == "shell"]
    assert len(shell) == 100
    assert shell[0] == "line 149"
    assert [r.command for r in rows if r.source == "exec"] == ["npm install"]
