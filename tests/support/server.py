"""Run the real `cloudcontainer serve` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.net import free_port

CLI = [sys.executable, "-m", "cloudcontainer"]


# The session's root filesystem store (tests/conftest.py sets it): every server and CLI run
# of the suite starts sandboxes from it unless a test says otherwise.
SESSION_ROOTFS_DIR: list[Path] = []


def cli_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDCONTAINER_")}
    if SESSION_ROOTFS_DIR:
        env["CLOUDCONTAINER_ROOTFS_DIR"] = str(SESSION_ROOTFS_DIR[0])
    env.update({f"CLOUDCONTAINER_{k.upper()}": v for k, v in settings.items()})
    return env


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> bool:
        """SIGTERM, as a service manager sends; True when the server shut down in order.

        uvicorn re-raises the signal after its graceful shutdown, so the exit status is -15.
        """
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=20)
        return (
            code in (0, -signal.SIGTERM) and "Application shutdown complete" in self.log.read_text()
        )


@contextmanager
def serve(data_dir: Path, *args: str, **settings: str) -> Iterator[Server]:
    port = free_port()
    log = data_dir.parent / f"serve-{port}.log"
    settings = {"argon2_time_cost": "1", "argon2_memory_cost_kib": "1024", **settings}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*CLI, "serve", "--port", str(port), "--data-dir", str(data_dir), *args],
            env=cli_env(**settings), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = Server(url=f"http://127.0.0.1:{port}", process=process, log=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()}")
            try:
                if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log.read_text()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
