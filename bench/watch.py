"""P5: a write through the API → its watch event at a client; and what watching costs while
`npm install` runs (local runtime, bolt.diy's watch options)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
import time
from typing import Any

import httpx
from websockets.asyncio.client import connect

from bench.server import Server, cpu_seconds, running_server
from bench.stats import Summary

W = "/home/project"
BOLT_WATCH = {
    "type": "watch", "id": "bolt", "include": [f"{W}/**"],
    "exclude": ["**/node_modules", ".git", "**/package-lock.json"], "content": True,
}  # fmt: skip


def write_to_event(samples: int) -> dict[str, Any]:
    """PUT 1 KiB (a unique payload each time) and time until the event carrying those bytes
    reaches a WebSocket client watching as bolt.diy does."""
    with running_server(runtime="local") as server:
        container = _container(server, "node")
        return asyncio.run(_write_to_event(server, container, samples))


async def _write_to_event(server: Server, container: str, samples: int) -> dict[str, Any]:
    headers = {"Authorization": server.client.headers["Authorization"]}
    base = str(server.client.base_url)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        path = f"/api/containers/{container}/events"
        ticket = (await client.post("/api/auth/ws-ticket", json={"path": path})).json()["ticket"]
        url = base.replace("http", "ws") + f"{path}?ticket={ticket}"
        async with connect(url, max_size=None) as socket:
            await socket.send(json.dumps(BOLT_WATCH))
            await _until(socket, lambda frame: frame["type"] == "watching")
            times = []
            for i in range(samples + 10):  # the first ten warm things up
                payload = f"{i:08d}".encode() * 128
                started = time.perf_counter()
                response = await client.put(f"/api/containers/{container}/files/p5.txt",
                                            content=payload)  # fmt: skip
                if response.status_code != 200:
                    raise RuntimeError(response.text)
                await _until(socket, lambda frame, p=payload: _carries(frame, p))
                if i >= 10:
                    times.append(time.perf_counter() - started)
    return {"samples_s": times, "summary": Summary.of(times).__dict__}


def _carries(frame: dict[str, Any], payload: bytes) -> bool:
    return frame["type"] == "fs" and any(
        base64.b64decode(event.get("buffer", "")) == payload for event in frame["events"]
    )


async def _until(socket: Any, matches: Any, timeout: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            frame: dict[str, Any] = json.loads(await socket.recv())
            if matches(frame):
                return frame


def inotify_floor(samples: int) -> dict[str, Any]:
    """write()+close() of the same bytes → the inotify event read in-process."""
    from inotify_simple import INotify, flags

    times = []
    with tempfile.TemporaryDirectory() as directory, INotify() as inotify:
        inotify.add_watch(directory, flags.CLOSE_WRITE)
        for i in range(samples):
            started = time.perf_counter()
            with open(os.path.join(directory, "p5.txt"), "wb") as handle:
                handle.write(f"{i:08d}".encode() * 128)
            inotify.read()
            times.append(time.perf_counter() - started)
    return {"samples_s": times, "summary": Summary.of(times).__dict__}


EVERYTHING_WATCH = {"type": "watch", "id": "all", "include": [], "exclude": [], "content": True}


def npm_install_cost() -> dict[str, Any]:
    """Run `npm install` in a vite-react container while a watch is open; count what reached
    the client and the gateway's CPU time. Three containers: bolt.diy's watch (node_modules
    and the lock file excluded), a watch of everything with contents, and no watch (the
    gateway's baseline for the same install)."""
    results = {}
    with running_server(runtime="local") as server:
        for name, watch in (("bolt", BOLT_WATCH), ("everything", EVERYTHING_WATCH),
                            ("none", None)):  # fmt: skip
            container = _container(server, "vite-react")
            results[name] = asyncio.run(_install(server, container, watch))
    return results


async def _install(server: Server, container: str, watch: dict[str, Any] | None) -> dict[str, Any]:
    headers = {"Authorization": server.client.headers["Authorization"]}
    base = str(server.client.base_url)
    counts = {"events": 0, "frames": 0, "bytes": 0}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=900) as client:
        path = f"/api/containers/{container}/events"
        ticket = (await client.post("/api/auth/ws-ticket", json={"path": path})).json()["ticket"]
        url = base.replace("http", "ws") + f"{path}?ticket={ticket}"
        async with connect(url, max_size=None) as socket:
            if watch:
                await socket.send(json.dumps(watch))
                await _until(socket, lambda frame: frame["type"] == "watching")

            async def count() -> None:
                async for text in socket:
                    frame = json.loads(text)
                    if frame["type"] == "fs":
                        counts["frames"] += 1
                        counts["events"] += len(frame["events"])
                        counts["bytes"] += len(text)

            counter = asyncio.create_task(count())
            cpu_before, started = cpu_seconds(server.pid), time.perf_counter()
            response = await client.post(
                f"/api/containers/{container}/exec",
                json={"command": "npm", "args": ["install", "--no-audit", "--no-fund"],
                      "timeout": 900},
            )  # fmt: skip
            last = json.loads(response.text.strip().splitlines()[-1])
            await asyncio.sleep(1.0)  # the last events
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(server.pid) - cpu_before
            counter.cancel()
    listing = await _listing(base, headers, container)
    return {
        "exit_code": last.get("code"), "seconds": elapsed, "gateway_cpu_s": cpu,
        "events": counts["events"], "frames": counts["frames"], "bytes_sent": counts["bytes"],
        "events_per_s": counts["events"] / elapsed, "node_modules_entries": listing,
    }  # fmt: skip


async def _listing(base: str, headers: dict[str, str], container: str) -> int:
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:
        response = await client.post(
            f"/api/containers/{container}/exec",
            json={"command": "sh", "args": ["-c", "find node_modules | wc -l"]},
        )
    for line in response.text.splitlines():
        frame = json.loads(line)
        if frame["type"] == "stdout":
            return int(frame["data"].strip())
    return -1


def _container(server: Server, template: str) -> str:
    project = server.client.post("/api/projects", json={"name": f"watch-{time.time()}"}).json()
    container = server.client.post(
        "/api/containers?wait=true", json={"project_id": project["id"], "template": template}
    ).json()
    if container.get("status") != "running":
        raise RuntimeError(f"container did not start: {container}")
    return str(container["id"])
