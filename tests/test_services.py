"""Services: named processes kept running in a container, on both runtimes — each other's
URLs in their environment, health from their port, restarts with backoff, stop and start,
dev-server detection, coming back with their container, and bad input."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.conftest import Api, TestUser
from tests.sandbox_helpers import new_container, sh, wait_for_status

API_SERVER = r"""
const http = require('http'), fs = require('fs');
fs.writeFileSync('/home/project/api-env.json', JSON.stringify(process.env));
http.createServer((req, res) => res.end(JSON.stringify({hello: 'from the api'})))
  .listen(Number(process.env.PORT), '127.0.0.1');
"""
WAIT = 60.0


async def until_status(
    api: Api, user: TestUser, cid: str, name: str, *wanted: str
) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        while True:
            response = await api.client.get(f"/api/containers/{cid}/services/{name}",
                                            headers=user.headers)  # fmt: skip
            assert response.status_code == 200, response.text
            if response.json()["status"] in wanted:
                return dict(response.json())
            await asyncio.sleep(0.2)


async def add(api: Api, user: TestUser, cid: str, **body: Any) -> dict[str, Any]:
    response = await api.client.post(f"/api/containers/{cid}/services", json=body,
                                     headers=user.headers)  # fmt: skip
    assert response.status_code == 201, response.text
    return dict(response.json())


async def two_services(api: Api, user: TestUser) -> str:
    cid = (await new_container(api, user))["id"]
    await sh(api, user, cid, f"cat > server.cjs <<'EOF'\n{API_SERVER}\nEOF")
    await add(api, user, cid, name="web", command="python3",
              args=["-m", "http.server", "5000", "--bind", "127.0.0.1"], port=5000)  # fmt: skip
    await add(api, user, cid, name="api", command="node", args=["server.cjs"], port=3001,
              restart="always")  # fmt: skip
    await until_status(api, user, cid, "web", "running")
    await until_status(api, user, cid, "api", "running")
    return cid


async def test_services_run_with_each_others_urls_and_come_back_after_a_crash(
    sandbox_api: Api,
) -> None:
    user = await sandbox_api.user()
    cid = await two_services(sandbox_api, user)
    listing = (await sandbox_api.client.get(f"/api/containers/{cid}/services",
                                            headers=user.headers)).json()  # fmt: skip
    by_name = {service["name"]: service for service in listing}
    assert set(by_name) == {"api", "web"}
    previews = (await sandbox_api.client.get(f"/api/containers/{cid}/previews",
                                             headers=user.headers)).json()  # fmt: skip
    origins = {preview["port"]: preview["origin"] for preview in previews}
    env = json.loads((await sh(sandbox_api, user, cid, "cat api-env.json")).stdout)
    assert env["PORT"] == "3001"
    assert env["CC_SERVICE_WEB_URL"] == origins[5000]
    assert env["CC_SERVICE_API_URL"] == origins[3001]
    assert env["CC_SERVICE_WEB_LOCAL_URL"] == "http://127.0.0.1:5000"
    assert by_name["api"]["url"].startswith(origins[3001])
    # It crashes: restarted (after a backoff), healthy again, counted.
    first = by_name["api"]["proc_id"]
    await sh(sandbox_api, user, cid, "pkill -f 'node server.cjs'")
    async with asyncio.timeout(WAIT):
        while (again := await until_status(sandbox_api, user, cid, "api", "running"))[
            "proc_id"
        ] == first:
            await asyncio.sleep(0.2)
    assert again["restarts"] >= 1
    answered = await sh(sandbox_api, user, cid, "curl -s http://127.0.0.1:3001/")
    assert json.loads(answered.stdout) == {"hello": "from the api"}


async def test_a_stopped_service_stays_stopped_until_started(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = await two_services(sandbox_api, user)
    base = f"/api/containers/{cid}/services/api"
    stopped = await sandbox_api.client.post(f"{base}/stop", headers=user.headers)
    assert stopped.json()["status"] == "stopped"
    assert stopped.json()["desired"] == "stopped"
    gone = await sh(sandbox_api, user, cid, "curl -s -o /dev/null -w '%{http_code}' "
                    "http://127.0.0.1:3001/ || true")  # fmt: skip
    assert gone.stdout.strip() in ("000", "")
    await asyncio.sleep(1.5)  # longer than the first backoff: nothing restarts it
    assert (await sandbox_api.client.get(base, headers=user.headers)).json()["status"] == (
        "stopped"
    )
    started = await sandbox_api.client.post(f"{base}/start", headers=user.headers)
    assert started.json()["desired"] == "running"
    await until_status(sandbox_api, user, cid, "api", "running")
    restarted = await sandbox_api.client.post(f"{base}/restart", headers=user.headers)
    assert restarted.status_code == 200
    await until_status(sandbox_api, user, cid, "api", "running")
    deleted = await sandbox_api.client.delete(base, headers=user.headers)
    assert deleted.status_code == 204
    assert (await sandbox_api.client.get(base, headers=user.headers)).status_code == 404


async def test_services_come_back_with_their_container_once(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = await two_services(sandbox_api, user)
    await sandbox_api.services.containers.idle_stop(cid, "idle for a test")
    await wait_for_status(sandbox_api, user, cid, "stopped")
    started = await sandbox_api.client.post(f"/api/containers/{cid}/start", headers=user.headers)
    assert started.status_code == 202
    await wait_for_status(sandbox_api, user, cid, "running")
    await until_status(sandbox_api, user, cid, "api", "running")
    await until_status(sandbox_api, user, cid, "web", "running")
    running = await sh(sandbox_api, user, cid, "pgrep -fc '^node server.cjs'")
    assert running.stdout.strip() == "1"  # the service, not also a remembered dev server


async def test_a_service_that_fails_and_may_not_restart_is_failed(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    await add(sandbox_api, user, cid, name="once", command="sh", args=["-c", "exit 3"],
              restart="never")  # fmt: skip
    failed = await until_status(sandbox_api, user, cid, "once", "failed")
    assert failed["exit_code"] == 3
    await add(sandbox_api, user, cid, name="missing", command="no-such-program",
              restart="on-failure")  # fmt: skip
    backing_off = await until_status(sandbox_api, user, cid, "missing", "backoff", "starting")
    assert backing_off["exit_code"] in (127, None)


async def test_without_a_command_the_dev_server_is_detected(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user, "vite-react"))["id"]
    detected = await add(sandbox_api, user, cid, name="web", restart="never")
    assert detected["framework"] == "vite"
    assert detected["port"] == 5173
    assert [detected["command"], *detected["args"][:2]] == ["npm", "run", "dev"]
    await sh(sandbox_api, user, cid, "mkdir empty")
    nothing = await sandbox_api.client.post(
        f"/api/containers/{cid}/services", json={"name": "x", "cwd": "/home/project/empty"},
        headers=user.headers,
    )  # fmt: skip
    assert nothing.status_code == 422
    assert nothing.json()["error"]["code"] == "no_dev_server"


async def test_bad_service_requests_are_refused_clearly(sandbox_api: Api) -> None:
    user, stranger = await sandbox_api.user(), await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    path = f"/api/containers/{cid}/services"
    await add(sandbox_api, user, cid, name="a", command="sleep", args=["600"])
    cases = [
        ({"name": "a", "command": "sleep"}, 409, "service_exists"),
        ({"name": "Bad Name", "command": "sleep"}, 422, "validation_error"),
        ({"name": "b", "command": "sleep", "port": 70000}, 422, "validation_error"),
        ({"name": "b", "command": "sleep", "restart": "sometimes"}, 422, "validation_error"),
        ({"name": "b", "command": "sleep", "cwd": "/home/project/nowhere"}, 404, None),
        ({"name": "c", "cwd": "/home/project/nowhere"}, 422, "invalid_cwd"),
    ]
    for body, code, error in cases:
        response = await sandbox_api.client.post(path, json=body, headers=user.headers)
        if code == 404:  # a command in a missing folder: it cannot start
            assert response.status_code == 201
            continue
        assert response.status_code == code, (body, response.text)
        if error is not None:
            assert response.json()["error"]["code"] == error
    for method, url in (("GET", path), ("GET", f"{path}/a"), ("POST", f"{path}/a/stop"),
                        ("DELETE", f"{path}/a")):  # fmt: skip
        response = await sandbox_api.client.request(method, url, headers=stranger.headers)
        assert response.status_code == 404
    missing = await sandbox_api.client.post(f"{path}/zzz/start", headers=user.headers)
    assert missing.json()["error"]["code"] == "service_not_found"
    unknown = await sandbox_api.client.post(f"{path}/a/explode", headers=user.headers)
    assert unknown.status_code == 404
