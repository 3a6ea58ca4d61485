"""P1/P2: container create → first command done; L4: idle local sandboxes on one host."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.images import IMAGE, current_root
from bench.server import running_server
from bench.stats import Summary


def _create_then_run(client: httpx.Client, project_id: str) -> tuple[float, str]:
    """One sample: POST /api/containers (wait) then exec `true`; returns (seconds, id)."""
    started = time.perf_counter()
    created = client.post(
        "/api/containers?wait=true", json={"project_id": project_id, "template": "node"}
    )
    container = created.json()
    if container.get("status") != "running":
        raise RuntimeError(f"container did not start: {container}")
    with client.stream(
        "POST", f"/api/containers/{container['id']}/exec", json={"command": "true"}
    ) as response:
        last = [json.loads(line) for line in response.iter_lines() if line][-1]
    elapsed = time.perf_counter() - started
    if last != {"type": "exit", "code": 0}:
        raise RuntimeError(f"first command failed: {last}")
    return elapsed, str(container["id"])


def create_to_first_command(runtime: str, samples: int, pool: int) -> dict[str, Any]:
    """With a warm pool, samples are spaced so the pool has refilled (a user does not create
    containers back to back); with pool 0 every sample is a cold start."""
    settings = {"runtime": runtime, "max_containers_per_user": "1000", "warm_pool_size": str(pool)}
    with running_server(**settings) as server:
        client = server.client
        project = client.post("/api/projects", json={"name": "bench"}).json()["id"]
        _, first = _create_then_run(client, project)  # the first start fills caches
        client.delete(f"/api/containers/{first}")
        times = []
        for _ in range(samples):
            if pool:
                time.sleep(1.5)
            elapsed, container_id = _create_then_run(client, project)
            times.append(elapsed)
            client.delete(f"/api/containers/{container_id}")
    return {"samples_s": times, "summary": Summary.of(times).__dict__, "warm_pool_size": pool}


def bwrap_floor(samples: int) -> dict[str, Any]:
    """Bare `bwrap ... true` with the namespaces a local sandbox uses, on the root filesystem
    it uses: the shared store's current build bound read-only as / (runtimes/local.py)."""
    argv = [
        "bwrap", "--unshare-all", "--ro-bind", str(current_root()), "/", "--proc", "/proc",
        "--dev", "/dev", "--uid", "1000", "--gid", "1000", "/usr/bin/true",
    ]  # fmt: skip
    return _time_command(argv, samples)


def docker_floor(samples: int) -> dict[str, Any]:
    return _time_command(["docker", "run", "--rm", IMAGE, "true"], samples)


def _time_command(argv: list[str], samples: int) -> dict[str, Any]:
    subprocess.run(argv, check=True, capture_output=True)
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return {"samples_s": times, "summary": Summary.of(times).__dict__}


def _agent_memory(data_dir: Path) -> list[dict[str, int]]:
    """RSS/PSS/private memory (KiB) of the agent of every local sandbox under `data_dir`: the
    only child of the sandbox's pid-namespace init, whose pid state.json records."""
    found = []
    for state in sorted((data_dir / "sandboxes").glob("*/state.json")):
        init = json.loads(state.read_text())["init"]
        try:
            children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
            rollup = Path(f"/proc/{children[0]}/smaps_rollup").read_text()
        except (OSError, IndexError):
            continue
        fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup.splitlines()[1:]}
        found.append({
            "rss_kib": fields["Rss"], "pss_kib": fields["Pss"],
            "private_kib": fields["Private_Clean"] + fields["Private_Dirty"],
        })  # fmt: skip
    return found


def _loop_devices(data_dir: Path) -> int:
    """Loop devices backed by a disk image under `data_dir` (one per sandbox with a quota)."""
    count = 0
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            count += backing.read_text().startswith(str(data_dir))
        except OSError:
            continue
    return count


def idle_density(count: int) -> dict[str, Any]:
    """Start `count` local sandboxes, let them idle, and measure every agent's memory."""
    settings = {
        "runtime": "local", "max_containers_per_user": str(count + 10),
        "max_cpu_per_user": str(count), "max_memory_mb_per_user": str(count * 256),
        "max_disk_mb_per_user": str(count * 4096),  # each has the default 4 GiB disk
        "container_start_concurrency": "8",
    }  # fmt: skip
    with running_server(**settings) as server:
        client = server.client
        project = client.post("/api/projects", json={"name": "density"}).json()["id"]
        body = {
            "project_id": project,
            "template": "node",
            "resources": {"cpu": 0.5, "memory_mb": 128},
        }
        started = time.perf_counter()

        def create(_: int) -> dict[str, Any]:
            created: dict[str, Any] = client.post("/api/containers?wait=true", json=body).json()
            return created

        with ThreadPoolExecutor(8) as pool:
            containers = list(pool.map(create, range(count)))
        start_all = time.perf_counter() - started
        running = [c for c in containers if c.get("status") == "running"]
        time.sleep(5)  # idle
        memory = _agent_memory(server.data_dir)
        loops = _loop_devices(server.data_dir)
        alive = sum(
            1
            for c in running
            if client.get(f"/api/containers/{c['id']}").json()["agent"]["connected"]
        )
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda c: client.delete(f"/api/containers/{c['id']}"), containers))
    rss = [m["rss_kib"] / 1024 for m in memory]
    pss = [m["pss_kib"] / 1024 for m in memory]
    private = [m["private_kib"] / 1024 for m in memory]
    return {
        "requested": count, "running": len(running), "connected_after_idle": alive,
        "loop_devices": loops,
        "start_all_s": start_all, "agents_measured": len(memory),
        "rss_mib": Summary.of(rss).__dict__, "pss_mib": Summary.of(pss).__dict__,
        "private_mib": Summary.of(private).__dict__, "rss_max_mib": max(rss, default=0.0),
    }  # fmt: skip


def docker_engine() -> bool:
    """A Docker Engine answers: the bench loads the rootfs into it and runs the docker ones."""
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def docker_available() -> bool:
    """Docker runs can start: an engine answers and has the image the bench loaded into it."""
    if shutil.which("docker") is None:
        return False
    return (
        subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0
    )


__all__ = [
    "bwrap_floor", "create_to_first_command", "docker_available", "docker_engine", "docker_floor",
    "idle_density",
]  # fmt: skip
