"""File watches over the event WebSocket, on real sandboxes: PARITY.md's watch rules as
bolt.diy uses them, the journal after a reconnect, restarts, and bad commands."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from cloudcontainer.files.watch import WatchFeed, WatchRequest
from tests.conftest import Api, TestUser
from tests.sandbox_helpers import (
    events_socket_url,
    live_server,
    new_container,
    sh,
    wait_for_status,
)

W = "/home/project"
BOLT_WATCH = {
    "type": "watch",
    "id": "bolt",
    "include": [f"{W}/**"],
    "exclude": ["**/node_modules", ".git", "**/package-lock.json"],
    "content": True,
}
WAIT = 60.0  # an upper bound for what must happen, never a measured timing


class Client:
    """One event-socket client: every frame it got, and helpers to wait for some."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.frames: list[dict[str, Any]] = []

    async def receive_until(self, wanted: Any, what: str) -> Any:
        async with asyncio.timeout(WAIT):
            while True:
                found = wanted()
                if found:
                    return found
                try:
                    frame = json.loads(await asyncio.wait_for(self.socket.recv(), 0.5))
                except TimeoutError:
                    continue
                self.frames.append(frame)

    async def command(self, command: dict[str, Any]) -> dict[str, Any]:
        before = len(self.frames)
        await self.socket.send(json.dumps(command))
        answer: dict[str, Any] = await self.receive_until(
            lambda: next(
                (
                    f
                    for f in self.frames[before:]
                    if f["type"] in ("watching", "unwatched", "error")
                ),
                None,
            ),
            f"the answer to {command}",
        )
        return answer

    def fs_events(self, watch: str = "bolt") -> list[dict[str, Any]]:
        return [
            event
            for frame in self.frames
            if frame["type"] == "fs" and frame["watch"] == watch
            for event in frame["events"]
        ]

    def pairs(self, watch: str = "bolt") -> list[tuple[str, str]]:
        return [(e["type"], e["path"]) for e in self.fs_events(watch)]

    async def wait_event(self, kind: str, path: str, watch: str = "bolt") -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            hits = [e for e in self.fs_events(watch) if (e["type"], e["path"]) == (kind, path)]
            return hits[-1] if hits else None

        event: dict[str, Any] = await self.receive_until(found, f"{kind} {path}")
        return event


@asynccontextmanager
async def events(api: Api, user: TestUser, base: str, cid: str) -> AsyncIterator[Client]:
    async with connect(await events_socket_url(api, user, base, cid), max_size=None) as socket:
        yield Client(socket)


def data(event: dict[str, Any]) -> bytes:
    return base64.b64decode(event["buffer"])


async def test_bolt_watch_sees_every_writer_with_parity_rules(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    files = f"/api/containers/{cid}/files"
    async with live_server(sandbox_api) as base, events(sandbox_api, user, base, cid) as client:
        answer = await client.command(BOLT_WATCH)
        assert answer["type"] == "watching", answer
        assert answer["cursor"]

        # The API as a writer (bolt's AI edits arrive as `../../src/App.tsx`).
        put = await sandbox_api.client.put(
            f"{files}/src/App.tsx?mkdirs=true", content=b"export default 1;\n",
            headers=user.headers,
        )  # fmt: skip
        assert put.status_code == 200, put.text
        added = await client.wait_event("add_file", f"{W}/src/App.tsx")
        assert data(added) == b"export default 1;\n"
        assert client.pairs().index(("add_dir", f"{W}/src")) < client.pairs().index(
            ("add_file", f"{W}/src/App.tsx")
        )

        # A shell as a writer: a new tree, a change, excluded paths.
        await sh(sandbox_api, user, cid, (
            "mkdir -p src/components/ui && printf card > src/components/ui/Card.tsx && "
            "printf 2 > src/App.tsx && mkdir -p node_modules/react && "
            "echo {} > node_modules/react/package.json && echo {} > package-lock.json && "
            "git init -q . && printf done > marker.txt"
        ))  # fmt: skip
        await client.wait_event("add_file", f"{W}/marker.txt")
        assert data(await client.wait_event("change", f"{W}/src/App.tsx")) == b"2"
        pairs = client.pairs()
        for parent, child in (
            (f"{W}/src/components", f"{W}/src/components/ui"),
            (f"{W}/src/components/ui", f"{W}/src/components/ui/Card.tsx"),
        ):
            assert pairs.index(("add_dir", parent)) < pairs.index(
                ("add_dir" if child.endswith("ui") else "add_file", child)
            )
        paths = [path for _, path in pairs]
        assert not [p for p in paths if "node_modules" in p or "/.git" in p or "lock" in p]

        # A deleted tree: one removal per entry, children first; a rename: remove + add.
        await sh(sandbox_api, user, cid, "rm -rf src/components && mv marker.txt moved.txt")
        await client.wait_event("remove_dir", f"{W}/src/components")
        await client.wait_event("add_file", f"{W}/moved.txt")
        await client.wait_event("remove_file", f"{W}/marker.txt")
        removals = [p for kind, p in client.pairs() if kind in ("remove_dir", "remove_file")]
        assert removals.index(f"{W}/src/components/ui/Card.tsx") < removals.index(
            f"{W}/src/components/ui"
        )
        assert removals.index(f"{W}/src/components/ui") < removals.index(f"{W}/src/components")

        # Rapid writes through the API: the last bytes always arrive.
        for index in range(30):
            await sandbox_api.client.put(
                f"{files}/hot.txt", content=f"v{index}".encode(), headers=user.headers
            )

        def final_bytes() -> bool:
            hot = [e for e in client.fs_events() if e["path"] == f"{W}/hot.txt"]
            return bool(hot) and data(hot[-1]) == b"v29"

        await client.receive_until(final_bytes, "the final bytes of hot.txt")


async def test_a_reconnecting_client_catches_up_from_its_cursor(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    files = f"/api/containers/{cid}/files"
    async with live_server(sandbox_api) as base:
        async with events(sandbox_api, user, base, cid) as client:
            cursor = (await client.command(BOLT_WATCH))["cursor"]
        # Offline: changes keep happening.
        await sandbox_api.client.put(f"{files}/offline.txt", content=b"1", headers=user.headers)
        await sandbox_api.client.put(f"{files}/offline.txt", content=b"22", headers=user.headers)
        await sh(sandbox_api, user, cid, "rm package.json")
        async with events(sandbox_api, user, base, cid) as client:
            answer = await client.command({**BOLT_WATCH, "since": cursor})
            assert answer["type"] == "watching", answer
            assert answer["resync"] is False
            hits = [e for e in client.fs_events() if e["path"] == f"{W}/offline.txt"]
            assert len(hits) == 1
            assert data(hits[0]) == b"22"
            assert ("remove_file", f"{W}/package.json") in client.pairs()

            # A cursor the journal cannot answer: the whole state, flagged as a resync.
            resync = await client.command({**BOLT_WATCH, "id": "again", "since": "nope:1"})
            assert resync["resync"] is True
            state = dict(
                (e["path"], e["type"]) for e in client.fs_events("again")
            )  # fmt: skip
            assert state[f"{W}/offline.txt"] == "add_file"
            assert f"{W}/package.json" not in state


async def test_watches_follow_the_container_through_a_restart(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    files = f"/api/containers/{cid}/files"
    async with live_server(sandbox_api) as base, events(sandbox_api, user, base, cid) as client:
        assert (await client.command(BOLT_WATCH))["type"] == "watching"
        restarted = await sandbox_api.client.post(
            f"/api/containers/{cid}/restart?wait=true", headers=user.headers
        )
        assert restarted.status_code in (200, 202), restarted.text
        await wait_for_status(sandbox_api, user, cid, "running")
        await sandbox_api.client.put(f"{files}/after.txt", content=b"a", headers=user.headers)
        event = await client.wait_event("add_file", f"{W}/after.txt")
        assert data(event) == b"a"
        # The new agent could not replay the old one's journal: the client was resynced.
        assert [f for f in client.frames if f["type"] == "fs" and f.get("resync")]


async def test_bad_commands_get_errors_and_the_socket_keeps_working(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    async with live_server(sandbox_api) as base, events(sandbox_api, user, base, cid) as client:
        bad: str | bytes
        for bad in (
            "not json",
            json.dumps([1, 2]),
            json.dumps({"type": "dance"}),
            json.dumps({"type": "watch"}),
            json.dumps({"type": "watch", "id": "x" * 65}),
            json.dumps({"type": "watch", "id": "x", "include": "**"}),
            json.dumps({"type": "watch", "id": "x", "exclude": [""]}),
            json.dumps({"type": "unwatch", "id": "never-made"}),
            b"binary",
        ):
            before = len(client.frames)
            await client.socket.send(bad)
            error = await client.receive_until(
                lambda before=before: next(  # type: ignore[misc]
                    (f for f in client.frames[before:] if f["type"] == "error"), None
                ),
                f"an error for {bad!r}",
            )
            assert error["error"]["code"] in ("invalid_command", "unknown_watch"), error
            assert "Traceback" not in error["error"]["message"]
        assert (await client.command(BOLT_WATCH))["type"] == "watching"
        unwatched = await client.command({"type": "unwatch", "id": "bolt"})
        assert unwatched == {"type": "unwatched", "id": "bolt"}


async def test_a_slow_client_loses_nothing(sandbox_api: Api) -> None:
    """A client that reads nothing while 6 MB of files change is paused past
    max_pending_bytes, then resumed from the agent's journal once it caught up: every file
    still arrives with its final bytes. (The feed is driven directly: a real WebSocket client
    cannot be kept from reading reliably, the kernel buffers megabytes for it.)"""
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    services = sandbox_api.app.state.services
    given: list[tuple[dict[str, Any], int]] = []
    feed = WatchFeed(
        services.containers, user.id, cid, lambda message, size: given.append((message, size)),
        services.metrics, max_pending_bytes=65_536,
    )  # fmt: skip
    request = WatchRequest(id="bolt", include=BOLT_WATCH["include"],
                           exclude=BOLT_WATCH["exclude"])  # fmt: skip
    assert (await feed.watch(request))["type"] == "watching"
    bodies = {f"{W}/big/{n:02}.bin": bytes([n]) * 200_000 for n in range(30)}
    for path, body in bodies.items():
        response = await sandbox_api.client.put(
            f"/api/containers/{cid}/files{path.removeprefix(W)}?mkdirs=true", content=body,
            headers=user.headers,
        )  # fmt: skip
        assert response.status_code == 200, response.text

    def latest() -> dict[str, bytes]:
        return {e["path"]: data(e) for m, _ in given for e in m["events"] if "buffer" in e}

    delivered = 0
    async with asyncio.timeout(WAIT):
        while any(latest().get(path) != body for path, body in bodies.items()):
            # The client reads what it was given so far, and asks for the rest.
            feed.sent(sum(size for _, size in given[delivered:]))
            delivered = len(given)
            await feed.caught_up()
            await asyncio.sleep(0.05)
    assert services.metrics.watch_resumes._value.get() >= 1  # the pause really happened
    await feed.close()
