"""L2: 500 terminals open at once, each attached over its own WebSocket and echoing; M1: the
gateway's memory per open terminal (local runtime, 5 containers of 100 terminals)."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench.server import Server, running_server
from bench.terminals import until
from bench.watch import _container

CONTAINERS = 5
PER_CONTAINER = 100
# Each terminal runs `cat` in raw mode: every byte typed comes back, nothing else is printed.
ECHO = ["-c", "stty raw -echo; exec cat"]


def many_terminals() -> dict[str, Any]:
    with running_server(runtime="local", warm_pool_size="0") as server:
        containers = [_container(server, "node") for _ in range(CONTAINERS)]
        return asyncio.run(_many(server, containers))


async def _many(server: Server, containers: list[str]) -> dict[str, Any]:
    headers = {"Authorization": server.client.headers["Authorization"]}
    base = str(server.client.base_url)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:
        terminals = [
            (cid, (await client.post(f"/api/containers/{cid}/terminals",
                                     json={"command": "sh", "args": ECHO})).json()["id"])
            for cid in containers for _ in range(PER_CONTAINER)
        ]  # fmt: skip
        rss_before = _rss_kib(server.pid)
        async with AsyncExitStack() as stack:
            sockets: list[ClientConnection] = []
            for cid, tid in terminals:
                path = f"/api/containers/{cid}/terminals/{tid}"
                ticket = (await client.post("/api/auth/ws-ticket", json={"path": path})).json()[
                    "ticket"
                ]
                url = base.replace("http", "ws") + f"{path}?ticket={ticket}"
                socket = await stack.enter_async_context(connect(url, max_size=None))
                assert json.loads(await socket.recv())["type"] == "attached"
                sockets.append(socket)
            await asyncio.sleep(1)  # every `stty raw` has run
            echoed = await asyncio.gather(*(_echo(socket, n) for n, socket in enumerate(sockets)))
            rss_open = _rss_kib(server.pid)
    return {
        "terminals": len(terminals), "echoed": sum(echoed),
        "gateway_rss_before_kib": rss_before, "gateway_rss_open_kib": rss_open,
        "gateway_kib_per_terminal": (rss_open - rss_before) / len(terminals),
    }  # fmt: skip


async def _echo(socket: ClientConnection, number: int) -> bool:
    """Type a token; true when exactly it comes back (the scrollback of a fresh terminal may
    come first)."""
    token = f"<{number}>".encode()
    await socket.send(token)
    return (await until(socket, token, timeout=60)).count(token) == 1


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
