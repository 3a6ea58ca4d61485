"""A Docker Engine for the test session (Debian's `docker.io`).

An engine that already answers on /var/run/docker.sock is used as it is. Otherwise (CI starts from a
bare machine, where nothing starts dockerd) the session starts `dockerd --userns-remap=default`
itself (the docker runtime refuses an engine without the remap), logging to its own file, and stops
it at the end; an engine it did not start is never stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SOCKET = Path("/var/run/docker.sock")
PID_FILE = Path("/var/run/docker.pid")
_START_TIMEOUT_SECONDS = 60
_STOP_TIMEOUT_SECONDS = 30


def engine_answers(socket_path: Path = SOCKET) -> bool:
    """True when a Docker Engine answers `GET /_ping` on `socket_path`.

    A plain socket closed on every path: httpcore leaves the socket of a refused unix connect for the
    garbage collector, whose ResourceWarning then fails whichever test happens to be running.
    """
    if not socket_path.is_socket():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(2.0)
            conn.connect(str(socket_path))
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
    except OSError:
        return False
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    return len(status_line) >= 2 and status_line[1] == b"200" and body == b"OK"


@contextmanager
def docker_engine(socket_path: Path = SOCKET) -> Iterator[str]:
    """Yield the address (unix://...) of a running engine, starting one if none answers."""
    url = f"unix://{socket_path}"
    if engine_answers(socket_path):
        yield url
        return
    dockerd = shutil.which("dockerd", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/bin")
    if dockerd is None:
        raise RuntimeError("dockerd is not installed: run `make test` (it installs docker.io)")
    if os.geteuid() != 0:
        raise RuntimeError("no Docker Engine answers and only root can start dockerd")
    handle, name = tempfile.mkstemp(prefix="cc-dockerd-", suffix=".log")
    log = Path(name)
    with os.fdopen(handle, "wb") as out:
        process = subprocess.Popen(
            [dockerd, "--host", url, "--userns-remap=default"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_up(process, socket_path, log)
        yield url
    finally:
        for engine in [process, *_restarted]:  # a test may have replaced it (restart_engine)
            _stop(engine)
        _restarted.clear()


# Engines started by restart_engine(): the session stops them if it started the first one.
_restarted: list[subprocess.Popen[bytes]] = []


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=_STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def restart_engine(socket_path: Path = SOCKET) -> None:
    """Stop the running dockerd (SIGTERM, as `systemctl restart docker` does: its containers
    stop with it) and start it again with the same arguments; return once it answers."""
    pid = int(PID_FILE.read_text().strip())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_SECONDS
    while _alive(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"dockerd {pid} did not stop")
        time.sleep(0.1)
    handle, name = tempfile.mkstemp(prefix="cc-dockerd-", suffix=".log")
    with os.fdopen(handle, "wb") as out:
        process = subprocess.Popen(
            [arg.decode() for arg in argv], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    _restarted.append(process)
    _wait_until_up(process, socket_path, Path(name))


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, one of our children not yet reaped, has stopped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _wait_until_up(process: subprocess.Popen[bytes], socket_path: Path, log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while not engine_answers(socket_path):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"dockerd did not start (log {log}):\n{tail}")
        time.sleep(0.2)
