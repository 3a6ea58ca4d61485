"""P3: file save through the API; P4: mixed file operations per second (local runtime)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.server import cpu_seconds, free_port, machine_cpu_seconds, running_server
from bench.stats import Summary

LUA = Path(__file__).with_name("mixed.lua")

PAYLOAD = os.urandom(10 * 1024)


def _container(client: httpx.Client) -> str:
    project = client.post("/api/projects", json={"name": "files"}).json()["id"]
    container = client.post("/api/containers?wait=true", json={"project_id": project}).json()
    if container.get("status") != "running":
        raise RuntimeError(f"container did not start: {container}")
    return str(container["id"])


def save_latency(samples: int) -> dict[str, Any]:
    """PUT 10 KiB over a kept-alive HTTP connection, one at a time."""
    with running_server(runtime="local") as server:
        client = server.client
        files = f"/api/containers/{_container(client)}/files"
        for _ in range(20):  # warm the connection and the agent link
            client.put(f"{files}/warm.bin", content=PAYLOAD)
        times = []
        for i in range(samples):
            started = time.perf_counter()
            response = client.put(f"{files}/save-{i % 10}.bin", content=PAYLOAD)
            times.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(response.text)
    return {"samples_s": times, "summary": Summary.of(times).__dict__}


def save_floor(samples: int) -> dict[str, Any]:
    """The same bytes with write() + fsync-less rename() in a local directory."""
    times = []
    with tempfile.TemporaryDirectory() as directory:
        for i in range(samples):
            started = time.perf_counter()
            tmp = os.path.join(directory, f".tmp-{i}")
            with open(tmp, "wb") as handle:
                handle.write(PAYLOAD)
            os.rename(tmp, os.path.join(directory, f"save-{i % 10}.bin"))
            times.append(time.perf_counter() - started)
    return {"samples_s": times, "summary": Summary.of(times).__dict__}


def mixed_throughput(seconds: float = 10.0, clients: int = 16) -> dict[str, Any]:
    """Concurrent clients doing 3 reads for each write of small files, for `seconds`: driven
    by wrk when it is installed (a Python client on the same 2 cores spends more CPU than the
    server, so it measures itself), else by an httpx client. Both figures are kept."""
    with running_server(runtime="local") as server:
        files = f"/api/containers/{_container(server.client)}/files"
        token = server.client.headers["Authorization"]
        base = str(server.client.base_url)
        cpu = cpu_seconds(server.pid)
        result = asyncio.run(_mixed(base, token, files, seconds, clients))
        result["server_cpu_ms_per_op"] = _per_op(server.pid, cpu, result, seconds)
        if shutil.which("wrk"):
            result["wrk"] = _mixed_wrk(server, files, seconds, clients)
    if shutil.which("wrk"):
        result["floor"] = mixed_floor(clients=clients)
    return result


def _mixed_wrk(server: Any, files: str, seconds: float, clients: int) -> dict[str, Any]:
    # One wrk thread: it drives 10k to 35k requests/s at a trivial uvicorn app, so a
    # second one would only take CPU from the server it measures (2 cores for everything).
    for n in range(4):
        server.client.put(f"{files}/mixed-0-{n}.txt", content=b"x" * 1024)
    env = dict(os.environ, CC_TOKEN=server.client.headers["Authorization"], CC_FILES=files)
    cpu = cpu_seconds(server.pid)
    machine_before = machine_cpu_seconds()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{int(seconds)}s", "-s", str(LUA), "--latency",
         str(server.client.base_url)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    requests, micros, errors, p99 = (int(v) for v in out.split("RESULT ")[1].split())
    result = {"ops_per_s": requests / (micros / 1e6), "errors": errors, "clients": clients,
              "p99_ms": p99 / 1000, "driver": "wrk -t1", "seconds": seconds}  # fmt: skip
    gateway = cpu_seconds(server.pid) - cpu
    result["server_cpu_ms_per_op"] = _per_op(server.pid, cpu, result, micros / 1e6)
    busy_after, total_after = machine_cpu_seconds()
    busy, total = busy_after - machine_before[0], total_after - machine_before[1]
    # Everything else the machine did meanwhile: the agent, wrk, the kernel — and any process
    # that is not part of the benchmark, which is what makes a figure not reproduce.
    result["machine_cpu_busy"] = busy / total
    result["gateway_share_of_busy_cpu"] = gateway / busy if busy else float("nan")
    return result


def _per_op(pid: int, cpu_before: float, result: dict[str, Any], seconds: float) -> float:
    ops = result["ops_per_s"] * seconds
    return (cpu_seconds(pid) - cpu_before) / ops * 1000 if ops else float("nan")


async def _mixed(base: str, token: str, files: str, seconds: float, clients: int) -> dict[str, Any]:
    headers = {"Authorization": token}
    counts = {"ops": 0, "errors": 0}
    deadline = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
            await client.put(f"{files}/mixed-{n}.txt", content=b"x" * 1024)
            i = 0
            while time.perf_counter() < deadline:
                if i % 4 == 0:  # new bytes each time: every save keeps a history version
                    content = f"{i:012d}".encode() + b"y" * 1012
                    response = await client.put(f"{files}/mixed-{n}.txt", content=content)
                else:
                    response = await client.get(f"{files}/mixed-{n}.txt")
                counts["ops" if response.status_code == 200 else "errors"] += 1
                i += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(clients)))
    elapsed = time.perf_counter() - started
    return {"ops_per_s": counts["ops"] / elapsed, "errors": counts["errors"], "clients": clients,
            "driver": "httpx", "seconds": seconds}  # fmt: skip


# The floor of P4: what the same wrk drives through uvicorn (uvloop, httptools) answering a
# fixed 1 KiB body, on this machine, in this run. A P4 figure is comparable with another
# machine's or another day's only beside this one.
TRIVIAL_APP = """
import uvicorn
BODY = b"x" * 1024
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")]})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), log_level="warning",
            loop="uvloop", http="httptools")
"""


def mixed_floor(seconds: float = 5.0, clients: int = 16) -> dict[str, Any]:
    """Requests/s and CPU per request of a trivial uvicorn app under `wrk -t1`."""
    port = free_port()
    app = subprocess.Popen([sys.executable, "-c", TRIVIAL_APP, str(port)])
    try:
        _wait_listening(port, app)
        cpu = cpu_seconds(app.pid)
        out = subprocess.run(
            ["wrk", "-t1", f"-c{clients}", f"-d{int(seconds)}s", f"http://127.0.0.1:{port}/"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        per_second = float(out.split("Requests/sec:")[1].split()[0])
        used = cpu_seconds(app.pid) - cpu
    finally:
        app.terminate()
        app.wait()
    cpu_ms = used / (per_second * seconds) * 1000
    return {"requests_per_s": per_second, "server_cpu_ms_per_request": cpu_ms,
            "clients": clients, "seconds": seconds}  # fmt: skip


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the trivial uvicorn app exited")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the trivial uvicorn app did not listen")
