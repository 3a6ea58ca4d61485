"""P6: a keystroke's echo through a terminal's WebSocket; P7: a terminal's output rate through
one WebSocket (local runtime). Floors: the same on a local PTY, in-process."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench.server import Server, running_server
from bench.stats import Summary
from bench.watch import _container

OUTPUT_BYTES = 200_000_000
END = b"end-of-output"


def keystroke_echo(samples: int) -> dict[str, Any]:
    """One key typed at a shell prompt → its echo back at the WebSocket client."""
    with running_server(runtime="local") as server:
        return asyncio.run(_keystroke_echo(server, _container(server, "node"), samples))


async def _keystroke_echo(server: Server, container: str, samples: int) -> dict[str, Any]:
    async with _attached(server, container) as socket:
        await socket.send(b"stty raw -echo; cat\n")  # cat echoes each byte as it comes
        await until(socket, b"")
        await asyncio.sleep(0.5)  # the prompt and stty's own output are gone by then
        times = []
        for i in range(samples + 10):
            key = bytes([97 + i % 26])
            started = time.perf_counter()
            await socket.send(key)
            await until(socket, key)
            if i >= 10:
                times.append(time.perf_counter() - started)
    return {"samples_s": times, "summary": Summary.of(times).__dict__}


def output_rate() -> dict[str, Any]:
    """200 MB printed in a terminal, read by one WebSocket client: bytes received per second,
    and whether the client ever fell behind (`lagged`)."""
    with running_server(runtime="local") as server:
        return asyncio.run(_output_rate(server, _container(server, "node")))


async def _output_rate(server: Server, container: str) -> dict[str, Any]:
    async with _attached(server, container) as socket:
        await socket.send(b"stty raw -echo\n")
        await asyncio.sleep(0.5)
        command = f"head -c {OUTPUT_BYTES} /dev/zero; echo {END.decode()}\n".encode()
        received, lagged = 0, False
        started = time.perf_counter()
        await socket.send(command)
        tail = b""
        async with asyncio.timeout(300):
            while END not in tail:
                frame = await socket.recv()
                if isinstance(frame, bytes):
                    received += len(frame)
                    tail = (tail + frame)[-64:]
                elif json.loads(frame)["type"] == "lagged":
                    lagged = True
        seconds = time.perf_counter() - started
    return {"bytes": received, "seconds": seconds, "mb_per_s": received / seconds / 1e6,
            "lagged": lagged}  # fmt: skip


def pty_floors(samples: int) -> dict[str, Any]:
    """The same two on a PTY read in-process: a byte's echo by `cat` in raw mode, and the
    read rate of `head -c 200 MB /dev/zero`."""
    echo = []
    pid, master = pty.fork()
    if pid == 0:
        os.execvp("sh", ["sh", "-c", "stty raw -echo; exec cat"])
    time.sleep(0.3)
    for i in range(samples + 10):
        key = bytes([97 + i % 26])
        started = time.perf_counter()
        os.write(master, key)
        while os.read(master, 1) != key:
            pass
        if i >= 10:
            echo.append(time.perf_counter() - started)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    os.close(master)
    pid, master = pty.fork()
    if pid == 0:
        os.execvp("sh", ["sh", "-c", f"stty raw -echo; head -c {OUTPUT_BYTES} /dev/zero"])
    started, received = time.perf_counter(), 0
    try:
        while chunk := os.read(master, 65536):
            received += len(chunk)
    except OSError:  # EIO: the child closed its side
        pass
    seconds = time.perf_counter() - started
    os.waitpid(pid, 0)
    os.close(master)
    return {
        "echo": {"samples_s": echo, "summary": Summary.of(echo).__dict__},
        "read": {"bytes": received, "seconds": seconds, "mb_per_s": received / seconds / 1e6},
    }


@asynccontextmanager
async def _attached(server: Server, container: str) -> AsyncIterator[ClientConnection]:
    """A new terminal in `container`, attached over a WebSocket, at its first prompt."""
    headers = {"Authorization": server.client.headers["Authorization"]}
    base = str(server.client.base_url)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        terminal = (await client.post(f"/api/containers/{container}/terminals", json={})).json()
        path = f"/api/containers/{container}/terminals/{terminal['id']}"
        ticket = (await client.post("/api/auth/ws-ticket", json={"path": path})).json()["ticket"]
    url = base.replace("http", "ws") + f"{path}?ticket={ticket}"
    async with connect(url, max_size=None) as socket:
        await until(socket, "\u276f".encode())  # jsh's prompt
        yield socket


async def until(socket: ClientConnection, needle: bytes, timeout: float = 30) -> bytes:
    """Read terminal bytes until `needle` shows (an empty needle: one frame); answers them."""
    seen = b""
    async with asyncio.timeout(timeout):
        while True:
            frame = await socket.recv()
            if isinstance(frame, bytes):
                seen += frame
                if needle in seen:
                    return seen
