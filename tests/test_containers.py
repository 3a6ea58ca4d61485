"""Container lifecycle through the API, on a real sandbox runtime."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import shutil
import subprocess
from pathlib import Path

import aiodocker
import pytest

from cloudcontainer.agentlink.errors import AgentUnavailable
from cloudcontainer.state import build_runtime
from tests.conftest import Api
from tests.sandbox_helpers import (
    IDLE,
    idle_app,
    idle_pass_after,
    new_container,
    new_project,
    run,
    sh,
    wait_for_status,
)


async def test_create_runs_commands_in_the_template_workspace(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    container = await new_container(sandbox_api, user, "vite-react")
    assert container["agent"]["connected"] is True
    assert container["runtime"] in ("local", "docker")
    listing = await run(sandbox_api, user, container["id"], "ls", "-a")
    assert set(listing.stdout.split()) >= {"package.json", "index.html", "src", "vite.config.js"}
    package = json.loads(
        (await run(sandbox_api, user, container["id"], "cat", "package.json")).stdout
    )
    assert "vite" in package["devDependencies"]
    who = await sh(sandbox_api, user, container["id"], "id -u; pwd; echo $HOME; node --version")
    assert who.stdout.split()[:3] == ["1000", "/home/project", "/home"]
    assert who.stdout.split()[3].startswith("v")


async def test_exec_reports_streams_exit_codes_and_missing_programs(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    result = await sh(sandbox_api, user, cid, "echo out; echo err >&2; exit 3")
    assert (result.stdout, result.stderr, result.code) == ("out\n", "err\n", 3)
    missing = await run(sandbox_api, user, cid, "no-such-program")
    assert missing.code == 127
    assert "command not found" in missing.stderr
    killed = await run(sandbox_api, user, cid, "sleep", "30", timeout=0.5)
    assert (killed.code, killed.timed_out) == (137, True)
    signalled = await sh(sandbox_api, user, cid, "kill -TERM $$")
    assert signalled.code == 128 + 15
    piped = await run(sandbox_api, user, cid, "cat", stdin="from stdin ✓")
    assert piped.stdout == "from stdin ✓"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param({"template": "cobol"}, 422, "unknown_template", id="unknown-template"),
        pytest.param({"resources": {"cpu": 9}}, 403, "quota_exceeded", id="cpu-over-quota"),
        pytest.param(
            {"resources": {"memory_mb": 20000}}, 403, "quota_exceeded", id="memory-over-quota"
        ),
        pytest.param({"resources": {"cpu": -1}}, 422, "validation_error", id="negative-cpu"),
        pytest.param({"project_id": "prj_missing"}, 404, "project_not_found", id="unknown-project"),
    ],
)
async def test_create_refuses_bad_requests(
    sandbox_api: Api, body: dict, status: int, code: str
) -> None:
    user = await sandbox_api.user()
    project_id = await new_project(sandbox_api, user)
    response = await sandbox_api.client.post(
        "/api/containers", json={"project_id": project_id, **body}, headers=user.headers
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert (await sandbox_api.client.get("/api/containers", headers=user.headers)).json() == []


async def test_container_count_quota(sandbox_api_factory) -> None:  # type: ignore[no-untyped-def]
    api = await sandbox_api_factory(max_containers_per_user=1)
    user = await api.user()
    await new_container(api, user)
    response = await api.client.post(
        "/api/containers",
        json={"project_id": await new_project(api, user, "b")},
        headers=user.headers,
    )
    assert response.status_code == 403
    assert "containers 2 > 1" in response.json()["error"]["message"]


async def test_other_users_containers_do_not_exist_for_them(sandbox_api: Api) -> None:
    owner, other = await sandbox_api.user(), await sandbox_api.user()
    cid = (await new_container(sandbox_api, owner))["id"]
    for method, path, body in [
        ("GET", f"/api/containers/{cid}", None),
        ("DELETE", f"/api/containers/{cid}", None),
        ("POST", f"/api/containers/{cid}/stop", None),
        ("POST", f"/api/containers/{cid}/start", None),
        ("POST", f"/api/containers/{cid}/restart", None),
        ("POST", f"/api/containers/{cid}/exec", {"command": "true"}),
    ]:
        response = await sandbox_api.client.request(method, path, json=body, headers=other.headers)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "container_not_found"
    assert (await sandbox_api.client.get("/api/containers", headers=other.headers)).json() == []
    # A project of another user cannot get a container either.
    project = await new_project(sandbox_api, owner, "mine")
    stolen = await sandbox_api.client.post(
        "/api/containers", json={"project_id": project}, headers=other.headers
    )
    assert stolen.status_code == 404
    assert (await run(sandbox_api, owner, cid, "true")).code == 0


async def test_delete_twice_is_204_then_404_and_removes_the_sandbox(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    first = await sandbox_api.client.delete(f"/api/containers/{cid}", headers=user.headers)
    second = await sandbox_api.client.delete(f"/api/containers/{cid}", headers=user.headers)
    assert (first.status_code, second.status_code) == (204, 404)
    assert all(info.sandbox_id != cid for info in await sandbox_api.services.runtime.list())


async def test_deleting_a_project_deletes_its_containers(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    project = await new_project(sandbox_api, user)
    cid = (await new_container(sandbox_api, user, project_id=project))["id"]
    assert (
        await sandbox_api.client.delete(f"/api/projects/{project}", headers=user.headers)
    ).status_code == 204
    assert (
        await sandbox_api.client.get(f"/api/containers/{cid}", headers=user.headers)
    ).status_code == 404
    assert all(info.sandbox_id != cid for info in await sandbox_api.services.runtime.list())


async def test_stop_keeps_files_and_any_access_starts_it_again(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    await sh(sandbox_api, user, cid, "echo kept > notes.txt")
    stopped = await sandbox_api.client.post(f"/api/containers/{cid}/stop", headers=user.headers)
    assert stopped.json()["status"] == "stopped"
    assert stopped.json()["agent"]["connected"] is False
    again = await run(sandbox_api, user, cid, "cat", "notes.txt")
    assert again.stdout == "kept\n"
    assert (await sandbox_api.client.get(f"/api/containers/{cid}", headers=user.headers)).json()[
        "status"
    ] == "running"


async def test_restart_brings_running_processes_back(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    link = await sandbox_api.services.containers.agent(user.id, cid)
    await link.call("proc.spawn", command="sleep", args=["1000"], pty=True)
    response = await sandbox_api.client.post(
        f"/api/containers/{cid}/restart?wait=true", headers=user.headers
    )
    assert response.json()["status"] == "running"
    processes = (await sh(sandbox_api, user, cid, "ps -eo args")).stdout
    assert "sleep 1000" in processes


async def test_taking_down_a_stopped_container_keeps_the_processes_it_remembers(
    sandbox_api: Api,
) -> None:
    """A crash restart that races a requested restart finds the sandbox already down: it
    must not replace the processes the first take-down remembered with none."""
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    link = await sandbox_api.services.containers.agent(user.id, cid)
    await link.call("proc.spawn", command="sleep", args=["1001"], pty=True)
    containers = sandbox_api.services.containers
    await containers.take_down(cid, reason="restarting", keep_dev_servers=True)
    await containers.take_down(cid, reason="the agent stopped answering; restarting",
                               keep_dev_servers=True)  # fmt: skip
    started = await sandbox_api.client.post(f"/api/containers/{cid}/start", headers=user.headers)
    assert started.status_code == 202
    processes = (await sh(sandbox_api, user, cid, "ps -eo args")).stdout
    assert "sleep 1001" in processes


async def test_a_killed_agent_is_restarted_with_the_workspace_intact(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    await sh(sandbox_api, user, cid, "echo survives > file.txt")
    events: list[dict] = []
    async with sandbox_api.services.events.subscribe(cid) as queue:
        link = await sandbox_api.services.containers.agent(user.id, cid)
        with contextlib.suppress(AgentUnavailable):  # the reply may die with the agent
            await link.call("proc.spawn", command="sh", args=["-c", f"kill -9 {link.hello['pid']}"])
        async with asyncio.timeout(30):
            while not (
                events
                and events[-1].get("status") == "running"
                and any(e["type"] == "crashed" for e in events)
            ):
                events.append(await queue.get())
    container = (
        await sandbox_api.client.get(f"/api/containers/{cid}", headers=user.headers)
    ).json()
    assert container["restart_count"] == 1
    assert (await run(sandbox_api, user, cid, "cat", "file.txt")).stdout == "survives\n"


async def test_idle_container_stops_and_resumes_with_its_dev_server(sandbox_api_factory) -> None:  # type: ignore[no-untyped-def]
    api, clock, supervisor = await idle_app(sandbox_api_factory)
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    link = await api.services.containers.agent(user.id, cid)
    await link.call("proc.spawn", command="sleep", args=["2000"], pty=True)
    await idle_pass_after(clock, supervisor, IDLE)
    stopped = await wait_for_status(api, user, cid, "stopped")
    assert stopped["status_reason"].startswith("idle for")
    resumed = await sh(api, user, cid, "ps -eo args")
    assert "sleep 2000" in resumed.stdout


async def test_create_claims_a_warm_sandbox_and_the_pool_refills(sandbox_api_factory) -> None:  # type: ignore[no-untyped-def]
    api = await sandbox_api_factory(warm_pool_size=1)
    pool = api.services.containers.pool
    async with asyncio.timeout(30):
        while not pool._ready:
            await asyncio.sleep(0.05)
    warm_id = pool._ready[0].spec.sandbox_id
    user = await api.user()
    container = await new_container(api, user, "express")
    assert container["id"] == warm_id
    assert "package.json" in (await run(api, user, warm_id, "ls")).stdout
    async with asyncio.timeout(30):
        while not pool._ready:
            await asyncio.sleep(0.05)
    assert pool._ready[0].spec.sandbox_id != warm_id


async def test_create_without_a_warm_pool_starts_cold(sandbox_api_factory) -> None:  # type: ignore[no-untyped-def]
    api = await sandbox_api_factory(warm_pool_size=0)
    user = await api.user()
    container = await new_container(api, user, "vite-vue")
    assert "vite.config.js" in (await run(api, user, container["id"], "ls")).stdout
    assert [info.sandbox_id for info in await api.services.runtime.list()] == [container["id"]]


@pytest.mark.parametrize("runtime_name", ["local"])
async def test_a_missing_sandbox_tool_is_reported_clearly(
    sandbox_api_factory, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("slirp4netns", "nsenter", "setpriv", "ip", "sh", "unshare", "setsid"):
        (bin_dir / tool).symlink_to(shutil.which(tool))  # everything but bwrap
    monkeypatch.setenv("PATH", str(bin_dir))
    api = await sandbox_api_factory()
    user = await api.user()
    project = await new_project(api, user)
    response = await api.client.post(
        "/api/containers", json={"project_id": project}, headers=user.headers
    )
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "runtime_unavailable"
    assert "bwrap" in error["message"]
    assert "bubblewrap" in error["message"]


@pytest.mark.parametrize("runtime_name", ["docker"])
async def test_an_image_without_python3_fails_with_a_clear_reason(sandbox_api_factory) -> None:  # type: ignore[no-untyped-def]
    api = await sandbox_api_factory(warm_pool_size=0)
    base = api.services.settings.sandbox_image
    tag = f"cloudcontainer/test-no-python:{secrets.token_hex(4)}"
    name = f"cc-nopython-{secrets.token_hex(4)}"
    subprocess.run(
        [
            "docker",
            "run",
            "--name",
            name,
            "--user",
            "0",
            base,
            "sh",
            "-c",
            "rm -f /usr/bin/python3*",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(["docker", "commit", name, tag], check=True, capture_output=True)
    subprocess.run(["docker", "rm", name], check=True, capture_output=True)
    try:
        api.services.runtime.options = dataclasses.replace(api.services.runtime.options, image=tag)
        user = await api.user()
        project = await new_project(api, user)
        response = await api.client.post(
            "/api/containers?wait=true",
            json={"project_id": project},
            headers=user.headers,
            timeout=120,
        )
        container = response.json()
        assert container["status"] == "failed"
        assert "python3" in container["status_reason"]
        await api.client.delete(f"/api/containers/{container['id']}", headers=user.headers)
    finally:
        subprocess.run(["docker", "rmi", "--force", tag], capture_output=True)


async def test_listening_ports_are_reported_even_on_loopback_only(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    async with sandbox_api.services.events.subscribe(cid) as queue:
        link = await sandbox_api.services.containers.agent(user.id, cid)
        server = await link.call(
            "proc.spawn",
            command="python3",
            args=["-m", "http.server", "--bind", "127.0.0.1", "8123"],
        )
        async with asyncio.timeout(20):
            event = await queue.get()
            while event.get("type") != "port":
                event = await queue.get()
        assert (event["port"], event["state"], event["address"]) == (8123, "open", "127.0.0.1")
        described = (
            await sandbox_api.client.get(f"/api/containers/{cid}", headers=user.headers)
        ).json()
        assert described["ports"] == [8123]
        await link.call("proc.kill", proc_id=server["proc_id"])
        async with asyncio.timeout(20):
            event = await queue.get()
            while event.get("type") != "port":
                event = await queue.get()
        assert (event["port"], event["state"]) == (8123, "close")


async def test_a_gateway_sees_only_its_own_sandboxes(sandbox_api: Api, tmp_path: Path) -> None:
    """Two gateways with their own data directories may share one Docker Engine (or host):
    neither lists, and so neither sweeps as an orphan, what the other made."""
    user = await sandbox_api.user()
    await new_container(sandbox_api, user)
    services = sandbox_api.app.state.services
    own = {info.sandbox_id for info in await services.runtime.list()}
    assert own
    other = build_runtime(
        services.settings.model_copy(update={"data_dir": tmp_path / "another-gateway"})
    )
    try:
        assert not own & {info.sandbox_id for info in await other.list()}
    finally:
        await other.aclose()


async def test_a_sandbox_is_labelled_with_its_user_and_project(sandbox_api_factory) -> None:  # type: ignore[no-untyped-def]
    api = await sandbox_api_factory(warm_pool_size=0)
    user = await api.user()
    project = await new_project(api, user)
    cid = (await new_container(api, user, project_id=project))["id"]
    if api.services.runtime.name == "docker":
        async with aiodocker.Docker() as docker:
            labels = (await (await docker.containers.get(f"cc-{cid}")).show())["Config"]["Labels"]
        labelled = (labels["cloudcontainer.user"], labels["cloudcontainer.project"])
    else:
        path = api.services.settings.data_dir / "sandboxes" / cid / "labels.json"
        labelled = tuple(json.loads(path.read_text()).values())
    assert labelled == (user.id, project)
