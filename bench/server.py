"""A real `cloudcontainer serve` in a subprocess, with a user, for end-to-end benchmarks."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

PASSWORD = "benchmark password"
REPO = Path(__file__).resolve().parent.parent
# The one rootfs store every benchmark's server starts sandboxes from, built once by `python -m
# bench` at its start: the repo's default, as `make run` uses (CLOUDCONTAINER_ROOTFS_DIR, when
# set, names another, e.g. a store kept between machines' runs).
ROOTFS_DIR = Path(
    os.environ.get("CLOUDCONTAINER_ROOTFS_DIR") or REPO / ".cloudcontainer" / "rootfs"
).absolute()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Server:
    client: httpx.Client  # logged in as a fresh user
    data_dir: Path
    pid: int  # of the server process, to read its CPU time


@contextmanager
def running_server(**settings: str) -> Iterator[Server]:
    """Start a server on a fresh data dir, with a user logged in, its sandboxes started
    from the shared rootfs store (ROOTFS_DIR)."""
    settings = {"rootfs_dir": str(ROOTFS_DIR), **settings}
    with tempfile.TemporaryDirectory(prefix="cc-bench-") as tmp:
        data = Path(tmp) / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDCONTAINER_")}
        env.update({f"CLOUDCONTAINER_{k.upper()}": v for k, v in settings.items()})
        env.update(CLOUDCONTAINER_DATA_DIR=str(data), CLOUDCONTAINER_LOG_LEVEL="warning")
        cli = [sys.executable, "-m", "cloudcontainer"]
        subprocess.run(
            [*cli, "user", "create", "bench@example.com", "--password-stdin"],
            input=PASSWORD, text=True, env=env, check=True, capture_output=True,
        )  # fmt: skip
        port = free_port()
        log = open(Path(tmp) / "serve.log", "wb")  # noqa: SIM115
        server = subprocess.Popen(
            [*cli, "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(base, server, Path(tmp) / "serve.log")
            client = httpx.Client(base_url=base, timeout=300)
            tokens = client.post(
                "/api/auth/login", json={"email": "bench@example.com", "password": PASSWORD}
            ).json()
            client.headers["Authorization"] = f"Bearer {tokens['access_token']}"
            yield Server(client, data, server.pid)
            client.close()
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()
            _destroy_sandboxes(data, settings)


def _destroy_sandboxes(data: Path, settings: dict[str, str]) -> None:
    """Sandboxes outlive their gateway on purpose (a restart re-adopts them); a benchmark's
    must not outlive its data directory, which is about to go."""
    from cloudcontainer.config import Settings
    from cloudcontainer.state import build_runtime

    # What build_runtime reads; other settings (cors_origins, say) arrived as environment
    # strings the server parsed, which Settings' keyword arguments would not.
    runtime = {k: v for k, v in settings.items() if k in ("runtime", "rootfs_dir", "sandbox_image")}
    config = Settings(data_dir=data, **runtime)

    async def destroy() -> None:
        runtime = build_runtime(config)
        try:
            for info in await runtime.list():
                await runtime.destroy(info.sandbox_id)
        finally:
            await runtime.aclose()

    asyncio.run(destroy())


def _wait_ready(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not become ready")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat: a figure taken
    while other processes were busy is lower, and the difference shows it."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick
