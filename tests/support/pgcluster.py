"""A private PostgreSQL cluster a test can stop, start again, and give a small tablespace.

Unlike the session's shared server (tests/support/postgres.py), this one is the test's own: it
may be stopped under a running gateway (a database gone away) or fill up (a disk full).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.net import free_port
from tests.support.postgres import _bin_dir

__all__ = ["Cluster"]


class Cluster:
    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="cc-pgc-"))
        self.run_as: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.run_as = ["runuser", "-u", "postgres", "--"]
        self.data = self.root / "data"
        self.port = free_port()
        self.server: subprocess.Popen[bytes] | None = None
        subprocess.run(
            [*self.run_as, self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
             "-E", "UTF8"], check=True, capture_output=True,
        )  # fmt: skip

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self.server = subprocess.Popen(
            [*self.run_as, self.bin / "postgres", "-D", self.data, "-p", str(self.port),
             "-k", self.root, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while self.psql("postgres", "SELECT 1", check=False).returncode != 0:
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.server is None:
            return
        # The postmaster itself (runuser does not pass every signal on): SIGINT is the "fast"
        # shutdown, which disconnects clients; SIGTERM would wait for the gateway's pool.
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGINT)
        self.server.wait(timeout=30)
        deadline = time.monotonic() + 30
        while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.server = None

    def psql(
        self, database: str, sql: str, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.bin / "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            capture_output=True, text=True, check=check, timeout=60,
        )  # fmt: skip

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
