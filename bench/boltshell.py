"""BOLT: bolt.diy's `BoltShell` session against `/bin/jsh --osc`, many times in a row.

Each session is the issue's: 20 commands, `false`, an unknown command, an empty one, a node
process logging every 3 ms and a real `npx vite` each preempted by `echo ok` (bolt's 2 s wait
after starting a dev server included), through the gateway's terminal WebSocket. A session
passes when nothing hangs and every exit code is right. Figures: sessions passed, the time of
one `executeCommand` (Ctrl-C, prompt, command, exit) and of `echo ok` preempting a dev server.
Floor: the same `echo` round trip typed into bash on a PTY in-process.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tests.support.boltshell import BoltShell, connected

from bench.server import Server, running_server
from bench.stats import recorded
from bench.watch import _container

TICKER = "node -e \"setInterval(() => console.log('tick ' + Date.now()), 3)\""
DEV_SERVER_DELAY = 2.0  # bolt's action runner waits this long after starting a dev server
SESSION_TIMEOUT = 120.0


def sessions(runs: int, runtime: str) -> dict[str, Any]:
    with running_server(runtime=runtime) as server:
        container = _container(server, "node")
        installed = server.client.post(
            f"/api/containers/{container}/exec", timeout=600,
            json={"command": "npm", "args": ["install", "vite@5", "--no-audit", "--no-fund"]},
        )  # fmt: skip
        last = json.loads(installed.text.splitlines()[-1])
        if last != {"type": "exit", "code": 0}:
            raise RuntimeError(f"npm install vite failed: {installed.text[-2000:]}")
        return asyncio.run(_sessions(server, container, runs))


async def _sessions(server: Server, container: str, runs: int) -> dict[str, Any]:
    commands: list[float] = []
    preempts: list[float] = []
    failures: list[str] = []
    for _ in range(runs):
        try:
            async with asyncio.timeout(SESSION_TIMEOUT):
                await _session(server, container, commands, preempts)
        except (AssertionError, TimeoutError) as exc:
            failures.append(f"{type(exc).__name__}: {exc}"[:2000])
    return {
        "runs": runs, "passed": runs - len(failures), "failures": failures,
        "command": recorded(commands),
        "preempt": recorded(preempts),
    }  # fmt: skip


async def _session(
    server: Server, container: str, commands: list[float], preempts: list[float]
) -> None:
    async with bolt_shell(server, container) as shell:
        commands.extend(await echoes(shell, 20))
        for command, code in (("false", 1), ("nosuch-tool", 127), ("", 0)):
            assert (await shell.execute(command)).exit_code == code, command
        preempts.append(await _preempt(shell, TICKER, "tick "))
        preempts.append(await _preempt(shell, "npx vite --port 5173", "ready in"))


@asynccontextmanager
async def bolt_shell(server: Server, container: str) -> AsyncIterator[BoltShell]:
    """`/bin/jsh --osc` in a new terminal, driven as bolt.diy drives it; deleted after."""
    created = server.client.post(
        f"/api/containers/{container}/terminals",
        json={"command": "/bin/jsh", "args": ["--osc"], "cols": 80, "rows": 15},
    ).json()
    path = f"/api/containers/{container}/terminals/{created['id']}"
    ticket = server.client.post("/api/auth/ws-ticket", json={"path": path}).json()["ticket"]
    base = str(server.client.base_url).replace("http", "ws", 1)
    try:
        async with connected(f"{base}{path}?ticket={ticket}") as shell:
            yield shell
    finally:
        server.client.delete(path)


async def echoes(shell: BoltShell, count: int) -> list[float]:
    """Seconds of each of `count` `executeCommand("echo …")` round trips."""
    times = []
    for step in range(count):
        started = time.perf_counter()
        result = await shell.execute(f"echo step-{step}")
        times.append(time.perf_counter() - started)
        assert result.exit_code == 0, result
    return times


async def _preempt(shell: BoltShell, command: str, ready: str) -> float:
    """Seconds for `echo ok` to run while `command` runs as a dev server."""
    dev_server = asyncio.ensure_future(shell.execute(command))
    while ready not in "".join(shell.transcript[-20:]):
        await asyncio.sleep(0.02)
    await asyncio.sleep(DEV_SERVER_DELAY)
    started = time.perf_counter()
    ok = await shell.execute("echo ok")
    took = time.perf_counter() - started
    assert ok.exit_code == 0, ok
    assert (await dev_server).exit_code == 130, command
    return took


def bash_floor(samples: int) -> dict[str, Any]:
    """`echo` typed into bash on a PTY, until its next prompt shows, in-process."""
    pid, master = pty.fork()
    if pid == 0:
        os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
    os.write(master, b"PS1='<ready>'\n")
    _read_until(master, b"<ready>")  # the echo of the line typed
    _read_until(master, b"<ready>")  # the first prompt
    times = []
    for step in range(samples):
        started = time.perf_counter()
        os.write(master, f"echo step-{step}\n".encode())
        _read_until(master, b"<ready>")
        times.append(time.perf_counter() - started)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    os.close(master)
    return recorded(times)


def _read_until(fd: int, needle: bytes) -> None:
    seen = b""
    deadline = time.monotonic() + 10
    while needle not in seen:
        if time.monotonic() > deadline:
            raise RuntimeError(f"bash never printed {needle!r}: {seen[-200:]!r}")
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            seen += os.read(fd, 65536)
