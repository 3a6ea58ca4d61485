"""A throwaway Redis server for the test session (Debian's `redis-server` package).

Set CLOUDCONTAINER_TEST_REDIS_URL to use an existing server instead; it is flushed before
each test that uses it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.net import free_port


@contextmanager
def redis_server() -> Iterator[str]:
    """Run redis-server on a free loopback port, nothing persisted; yield its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "Redis is not installed: run `make test` (it installs Debian's redis-server) or "
            "set CLOUDCONTAINER_TEST_REDIS_URL"
        )
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="cc-redis-") as directory:
        log = Path(directory) / "redis.log"
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", directory, "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _until_ready(port, server, log)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(timeout=10)


def _until_ready(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"redis-server exited: {log.read_text(errors='replace')[-2000:]}")
        ping = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True)
        if ping.stdout.strip() == b"PONG":
            return
        time.sleep(0.05)
    raise RuntimeError("redis-server did not answer in 30 s")
