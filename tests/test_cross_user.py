"""Cross-user isolation, enumerated from the app itself (issue 9): for every route of the OpenAPI
document whose path names a resource, and every WebSocket route, user B gets 404 (or 403) on
user A's resources, exactly as for ids that do not exist, and learns nothing of A's.

The routes come from the app, not from a list here: a new route with a path parameter is
exercised automatically, and the test fails if it names a parameter `RESOURCES` does not know
or needs a body `BODIES` does not have, until it is covered (or listed in `EXEMPT`, with why).
Real server, real sandboxes, both runtimes.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.routing import APIWebSocketRoute
from starlette.routing import WebSocketRoute
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import Api, TestUser
from tests.sandbox_helpers import live_server, new_container, new_project

SECRET = "a-secret-of-user-a-" + secrets.token_hex(6)
A_PROJECT_NAME = "project-of-a-" + secrets.token_hex(4)
PARAM = re.compile(r"{(\w+)(?::\w+)?}")

# What each path parameter names, owned by A; a new kind of resource gets a line here.
RESOURCES = {
    "project_id", "container_id", "terminal_id", "snapshot_id", "version_id", "lock_id",
    "key_id", "path", "port", "name",
}  # fmt: skip
# Parameters that name something inside a container (or project): tried with B's own container
# too, so that an id of A's is refused even under a parent B owns.
CHILDREN = {"terminal_id", "snapshot_id", "version_id", "lock_id", "port", "name"}
# Routes with path parameters this test does not exercise, each with the reason. None today.
EXEMPT: dict[tuple[str, str], str] = {}
# Values for required query parameters, by name.
QUERY = {"path": "secret.txt"}
# A valid body for each operation that needs one, so that B's request reaches the ownership
# check instead of stopping at validation (a 422 would prove nothing).
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PATCH", "/api/projects/{project_id}"): {"json": {"name": "stolen"}},
    ("POST", "/api/containers/{container_id}/exec"): {
        "json": {"command": "cat", "args": ["secret.txt"]}
    },
    ("POST", "/api/containers/{container_id}/files"): {
        "json": {"path": "secret.txt", "content": "overwritten by b"}
    },
    ("POST", "/api/containers/{container_id}/files:move"): {
        "json": {"from": "secret.txt", "to": "moved.txt"}
    },
    ("POST", "/api/containers/{container_id}/locks"): {
        "json": {"path": "secret.txt", "owner": "b"}
    },
    ("POST", "/api/containers/{container_id}/search"): {"json": {"query": SECRET}},
    ("POST", "/api/containers/{container_id}/archive"): {
        "content": b"",
        "headers": {"Content-Type": "application/octet-stream"},
    },
    ("POST", "/api/containers/{container_id}/terminals"): {"json": {}},
    ("PUT", "/api/containers/{container_id}/files/{path}"): {"content": b"overwritten by b"},
    ("PATCH", "/api/containers/{container_id}/previews/{port}"): {"json": {"public": True}},
    ("POST", "/api/containers/{container_id}/services"): {
        "json": {"name": "stolen", "command": "sleep", "args": ["600"]}
    },
    ("PUT", "/api/containers/{container_id}/previews:script"): {
        "json": {"script": "alert(1)", "forward_errors": True}
    },
}


@dataclass
class World:
    api: Api
    a: TestUser
    b: TestUser
    owned: dict[str, str]  # A's resources, by path parameter
    b_container: str


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for path, methods in schema["paths"].items():
        for method in methods:
            if PARAM.search(path):
                yield method.upper(), path


def websocket_paths(app: FastAPI) -> list[str]:
    """The app's WebSocket routes (OpenAPI leaves them out), through included routers."""
    found: list[str] = []

    def walk(routes: list[Any]) -> None:
        for route in routes:
            if isinstance(route, APIWebSocketRoute | WebSocketRoute):
                found.append(route.path)
            elif hasattr(route, "original_router"):  # FastAPI's included router
                walk(route.original_router.routes)

    walk(app.router.routes)
    return found


def made_up(value: str) -> str:
    """An id shaped like `value` that names nothing."""
    if value.endswith(".txt"):
        return "no-such-file.txt"
    if value.isdigit():  # a port
        return "9999"
    if value.startswith("svc-"):  # a service name: letters
        return "svc-" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(8))
    if "-" in value and "_" not in value:  # a terminal id: agent boot, process number
        return "1-999999"
    prefix, _, rest = value.rpartition("_")
    tail = "".join(secrets.choice(string.hexdigits.lower()) for _ in rest)
    return f"{prefix}_{tail}" if prefix else tail


def fill(template: str, values: dict[str, str]) -> str:
    return PARAM.sub(lambda match: values[match.group(1)], template)


def variants(params: list[str], world: World) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """(A's ids, ids that name nothing) for the parameters: first under A's own container or
    project, then under B's own container for a child id of A's."""
    theirs = {name: world.owned[name] for name in params}
    yield theirs, {name: made_up(value) for name, value in theirs.items()}
    if "container_id" in params and CHILDREN & set(params):
        mixed = {**theirs, "container_id": world.b_container}
        missing = {
            name: made_up(value) if name in CHILDREN else value for name, value in mixed.items()
        }
        yield mixed, missing


def scrub(text: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        text = text.replace(value, "{" + name + "}")
    return text


def learns_nothing(world: World, response: httpx.Response, where: str) -> None:
    for secret in (SECRET, world.a.email, A_PROJECT_NAME, world.a.id):
        assert secret not in response.text, (where, response.text)


async def build_world(api: Api) -> World:
    a, b = await api.user("a@example.com"), await api.user("b@example.com")
    client, headers = api.client, a.headers
    project = await new_project(api, a, A_PROJECT_NAME)
    container = (await new_container(api, a, project_id=project))["id"]
    base = f"/api/containers/{container}"
    for text in ("first " + SECRET, SECRET):  # the first write becomes a version
        written = await client.put(f"{base}/files/secret.txt", content=text, headers=headers)
        assert written.status_code == 200, written.text
    terminal = await client.post(f"{base}/terminals", json={"command": "bash"}, headers=headers)
    snapshot = await client.post(f"{base}/snapshots", headers=headers)
    lock = await client.post(
        f"{base}/locks", json={"path": "secret.txt", "owner": "a"}, headers=headers
    )
    key = await client.post("/api/auth/keys", json={"name": "a's key"}, headers=headers)
    service = await client.post(f"{base}/services", headers=headers,
                                json={"name": "svc-a", "command": "sleep", "args": ["600"]})  # fmt: skip
    assert service.status_code == 201, service.text
    async with api.services.events.subscribe(container) as queue:  # a preview of port 8123
        link = await api.services.containers.agent(a.id, container)
        await link.call("proc.spawn", command="python3",
                        args=["-m", "http.server", "--bind", "127.0.0.1", "8123"])  # fmt: skip
        async with asyncio.timeout(60):
            while (await queue.get()).get("type") != "port":
                pass
    versions = await client.get(f"{base}/versions", params={"path": "secret.txt"}, headers=headers)
    for response in (terminal, snapshot, lock, key, versions):
        assert response.is_success, response.text
    owned = {
        "project_id": project, "container_id": container, "terminal_id": terminal.json()["id"],
        "snapshot_id": snapshot.json()["id"], "version_id": versions.json()[0]["id"],
        "lock_id": lock.json()["id"], "key_id": key.json()["id"], "path": "secret.txt",
        "port": "8123", "name": "svc-a",
    }  # fmt: skip
    b_container = (await new_container(api, b))["id"]
    return World(api, a, b, owned, b_container)


async def still_as_a_left_them(world: World) -> None:
    client, headers, owned = world.api.client, world.a.headers, world.owned
    base = f"/api/containers/{owned['container_id']}"
    assert (await client.get(base, headers=headers)).json()["status"] == "running"
    read = await client.get(f"{base}/files/secret.txt", headers=headers)
    assert read.text == SECRET
    project = await client.get(f"/api/projects/{owned['project_id']}", headers=headers)
    assert project.json()["name"] == A_PROJECT_NAME
    terminal = await client.get(f"{base}/terminals/{owned['terminal_id']}", headers=headers)
    assert terminal.json()["state"] == "running"
    locks = await client.get(f"{base}/locks", headers=headers)
    assert [lock["id"] for lock in locks.json()["locks"]] == [owned["lock_id"]]
    keys = await client.get("/api/auth/keys", headers=headers)
    assert [key["id"] for key in keys.json()] == [owned["key_id"]]
    snapshots = await client.get(f"/api/projects/{owned['project_id']}/snapshots", headers=headers)
    assert owned["snapshot_id"] in [snapshot["id"] for snapshot in snapshots.json()]
    assert (await client.get("/api/auth/me", headers=headers)).status_code == 200
    services = await client.get(f"{base}/services", headers=headers)
    assert [(s["name"], s["desired"]) for s in services.json()] == [("svc-a", "running")]
    previews = await client.get(f"{base}/previews", headers=headers)
    assert [(p["port"], p["public"]) for p in previews.json()] == [(8123, False)]


async def test_every_route_hides_one_users_resources_from_another(sandbox_api: Api) -> None:
    world = await build_world(sandbox_api)
    api, b = world.api, world.b
    schema = (await api.client.get("/openapi.json")).json()
    exercised: list[str] = []
    for method, template in operations(schema):
        if (method, template) in EXEMPT:
            continue
        params = PARAM.findall(template)
        unknown = set(params) - RESOURCES
        assert not unknown, f"{method} {template}: add {unknown} to RESOURCES and build_world"
        operation = schema["paths"][template][method.lower()]
        body = BODIES.get((method, template), {})
        assert body or not operation.get("requestBody", {}).get("required"), (
            f"{method} {template} needs a body: add one to BODIES"
        )
        required = [
            parameter["name"] for parameter in operation.get("parameters", [])
            if parameter["in"] == "query" and parameter.get("required")
        ]  # fmt: skip
        assert set(required) <= set(QUERY), f"{method} {template}: add {required} to QUERY"
        body = {**body, "params": {name: QUERY[name] for name in required}}
        for theirs, missing in variants(params, world):
            where = f"{method} {fill(template, theirs)}"
            answer = await api.client.request(
                method, fill(template, theirs), **{**body, "headers": {**b.headers,
                **body.get("headers", {})}},
            )  # fmt: skip
            baseline = await api.client.request(
                method, fill(template, missing), **{**body, "headers": {**b.headers,
                **body.get("headers", {})}},
            )  # fmt: skip
            assert answer.status_code in (403, 404), (where, answer.status_code, answer.text)
            learns_nothing(world, answer, where)
            # The same answer as for ids that name nothing: nothing tells "exists" apart.
            assert answer.status_code == baseline.status_code, (where, baseline.text)
            assert scrub(answer.text, theirs) == scrub(baseline.text, missing), where
            exercised.append(where)
    assert len(exercised) >= len(list(operations(schema))) - len(EXEMPT)

    # Ids in bodies and lists: B cannot start a container in A's project, nor see A's things.
    stolen = await api.client.post(
        "/api/containers", json={"project_id": world.owned["project_id"]}, headers=b.headers
    )
    assert stolen.status_code == 404, stolen.text
    for listing in ("/api/projects", "/api/containers", "/api/auth/keys"):
        response = await api.client.get(listing, headers=b.headers)
        assert response.status_code == 200
        for name, value in world.owned.items():
            if name not in ("path", "port", "name"):  # a file, a number, a name: not ids
                assert value not in response.text, (listing, value)
        learns_nothing(world, response, listing)

    await websockets_refuse_b(world)
    await still_as_a_left_them(world)


async def websockets_refuse_b(world: World) -> None:
    """B asks a ticket for the path of A's socket (any path may be asked for) and is refused
    at the handshake, as for a socket that names nothing."""
    api, b = world.api, world.b
    paths = websocket_paths(api.app)
    assert paths, "no WebSocket routes found: has FastAPI changed how it keeps them?"
    async with live_server(api) as base:
        for template in paths:
            params = PARAM.findall(template)
            unknown = set(params) - RESOURCES
            assert not unknown, f"WS {template}: add {unknown} to RESOURCES and build_world"
            for theirs, missing in variants(params, world):
                for values in (theirs, missing):
                    path = fill(template, values)
                    response = await api.client.post(
                        "/api/auth/ws-ticket", json={"path": path}, headers=b.headers
                    )
                    ticket = response.json()["ticket"]
                    try:
                        async with connect(f"{base}{path}?ticket={ticket}"):
                            raise AssertionError(f"B opened {path}")
                    except InvalidStatus as refused:
                        status = refused.response.status_code
                        assert status == 403, (path, status)
                        learns_nothing(
                            world,
                            httpx.Response(status, content=refused.response.body or b""),
                            path,
                        )
