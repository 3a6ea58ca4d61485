"""A throwaway PostgreSQL server for the test session (Debian's `postgresql` package).

Set CLOUDCONTAINER_TEST_POSTGRES_URL to use an existing server instead
(e.g. postgresql+asyncpg://user:pass@127.0.0.1:5432/db); its tables are truncated per test.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.net import free_port


def _bin_dir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if not candidates:
        raise RuntimeError(
            "PostgreSQL is not installed: run `make test` (it installs Debian's postgresql) "
            "or set CLOUDCONTAINER_TEST_POSTGRES_URL"
        )
    return Path(candidates[-1])


@contextmanager
def postgres_server() -> Iterator[str]:
    """Run a private cluster on a free loopback port; yield its asyncpg URL."""
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="cc-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    port = free_port()
    subprocess.run(
        [*run_as, bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = subprocess.Popen(
        [*run_as, bin_dir / "postgres", "-D", data, "-p", str(port), "-k", root,
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
         "-c", "full_page_writes=off", "-c", "max_connections=200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run(
                [bin_dir / "pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True
            )
            if ready.returncode == 0:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {server.stderr.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.1)
        subprocess.run(
            [bin_dir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "cc_test"],
            check=True, capture_output=True,
        )  # fmt: skip
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/cc_test"
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stderr is not None:
            server.stderr.close()
        shutil.rmtree(root, ignore_errors=True)
