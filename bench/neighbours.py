"""ISO: a neighbour hogs CPU, memory, disk, pids or file descriptors; how the rest answers.

One sandbox (the hog, at small limits) runs each hog in turn for a few seconds while the bench
measures two things a user of another sandbox feels: the gateway answering `GET
/api/containers/{id}`, and a command in the neighbour sandbox (`exec true`, through the
agent). The floor is the same two measurements from the same run with the hog idle.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from bench.server import running_server
from bench.stats import Summary

# Each runs until the wrapper's `timeout` kills it; all stay inside the hog's own limits.
HOGS = {
    "cpu": "for i in 1 2 3 4; do python3 -c 'while True: pass' & done; wait",
    "memory": "while true; do python3 -c 'b=[]\nwhile True: b.append(bytearray(8<<20))'; done",
    "disk": "while true; do dd if=/dev/zero of=fill bs=1M count=2000 conv=fsync 2>/dev/null; "
    "rm -f fill; done",
    "pids": "python3 -c 'import os,time\nwhile True:\n  try:\n    os.fork() or time.sleep(60)\n"
    "  except OSError: time.sleep(0.01)'",
    "fds": "for i in 1 2 3 4; do python3 -c 'import time\nf=[]\ntry:\n  while True: "
    'f.append(open("/dev/null"))\nexcept OSError: time.sleep(60)\' & done; wait',
}
HOG_LIMITS = {"cpu": 1.0, "memory_mb": 256, "pids": 128, "disk_mb": 1024}
HOG_SECONDS = 12
WARMUP_SECONDS = 2


def _exec(client: httpx.Client, container_id: str, command: str, timeout: float = 60) -> None:
    with client.stream(
        "POST", f"/api/containers/{container_id}/exec",
        json={"command": "sh", "args": ["-c", command]}, timeout=timeout,
    ) as response:  # fmt: skip
        for _ in response.iter_lines():
            pass


def _measure(client: httpx.Client, victim: str, until: float) -> dict[str, list[float]]:
    gateway, neighbour = [], []
    while time.monotonic() < until:
        started = time.perf_counter()
        client.get(f"/api/containers/{victim}").raise_for_status()
        gateway.append(time.perf_counter() - started)
        started = time.perf_counter()
        _exec(client, victim, "true")
        neighbour.append(time.perf_counter() - started)
        time.sleep(0.05)
    return {"gateway": gateway, "neighbour": neighbour}


def _summaries(samples: dict[str, list[float]]) -> dict[str, Any]:
    return {
        name: {"samples_s": s, "summary": Summary.of(s).__dict__} for name, s in samples.items()
    }


def neighbour_hogs(runtime: str) -> dict[str, Any]:
    """Floor first (the hog idle), then each hog for HOG_SECONDS."""
    with running_server(runtime=runtime, warm_pool_size="0") as server:
        client = server.client
        project = client.post("/api/projects", json={"name": "neighbours"}).json()["id"]
        victim = client.post(
            "/api/containers?wait=true", json={"project_id": project, "template": "node"}
        ).json()["id"]
        hog = client.post(
            "/api/containers?wait=true",
            json={"project_id": project, "template": "node", "resources": HOG_LIMITS},
        ).json()["id"]
        _exec(client, victim, "true")  # the first exec opens the link
        results: dict[str, Any] = {
            "floor": _summaries(_measure(client, victim, time.monotonic() + HOG_SECONDS)),
            "hog_limits": HOG_LIMITS, "hog_seconds": HOG_SECONDS,
        }  # fmt: skip
        for name, script in HOGS.items():
            runner = threading.Thread(
                target=_exec,
                args=(client, hog, f"timeout -s KILL {HOG_SECONDS + WARMUP_SECONDS} sh -c '"
                      + script.replace("'", "'\"'\"'") + "'; rm -f fill"),
                kwargs={"timeout": HOG_SECONDS * 4},
            )  # fmt: skip
            runner.start()
            time.sleep(WARMUP_SECONDS)
            results[name] = _summaries(_measure(client, victim, time.monotonic() + HOG_SECONDS))
            runner.join()
            # The hog's sandbox recovers too (a command answers there again).
            started = time.perf_counter()
            _exec(client, hog, "true")
            results[name]["hog_answers_after_s"] = time.perf_counter() - started
        for container in (victim, hog):
            client.delete(f"/api/containers/{container}")
    return results


__all__ = ["HOGS", "neighbour_hogs"]
