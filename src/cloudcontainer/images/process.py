"""Run host commands (apt-get, debootstrap, chroot, tar) for the builder."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

from cloudcontainer.images.errors import CommandFailed

__all__ = ["CHROOT_ENV", "TAR_FLAGS", "run", "stream_stdout"]

# Commands run inside the new rootfs see a plain, predictable environment, not the caller's.
CHROOT_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
    "DEBIAN_FRONTEND": "noninteractive",
    "HOME": "/root",
}
# GNU tar as the builder uses it everywhere: numeric owners (the rootfs's users are not the
# host's), and file capabilities kept but not host-specific labels such as SELinux's.
TAR_FLAGS = ("--numeric-owner", "--xattrs", "--xattrs-include=security.capability")
_TAIL_LINES = 40
_STOP_GRACE_SECONDS = 10.0


async def run(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> str:
    """Run `argv` to completion; return its output (stdout and stderr, interleaved).

    Raises CommandFailed with the last lines of output when it exits non-zero. If the caller is
    cancelled the whole process group is stopped, so no debootstrap is left writing behind us.
    """
    args = [str(arg) for arg in argv]
    process = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=dict(env) if env is not None else None,
        start_new_session=True,
    )  # fmt: skip
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    try:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            tail.append(line)
            if on_line is not None and line:
                on_line(line)
        code = await process.wait()
    finally:
        await _stop(process)
    if code != 0:
        raise CommandFailed(args, code, "\n".join(tail))
    return "\n".join(tail)


async def stream_stdout(
    argv: Sequence[str | Path], *, chunk_size: int = 1 << 20
) -> AsyncIterator[bytes]:
    """Yield a command's stdout in chunks (its stderr is kept for the error)."""
    args = [str(arg) for arg in argv]
    process = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    stderr = asyncio.ensure_future(process.stderr.read())
    try:
        while chunk := await process.stdout.read(chunk_size):
            yield chunk
        code = await process.wait()
        errors = (await stderr).decode(errors="replace").strip()
    finally:
        stderr.cancel()
        await _stop(process)
    if code != 0:
        raise CommandFailed(args, code, errors[-4000:])


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM the process group (debootstrap unmounts on TERM), then SIGKILL what is left of it
    (a dpkg still writing would race the removal of the rootfs)."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(process.wait()), _STOP_GRACE_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()
