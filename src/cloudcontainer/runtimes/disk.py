"""A sandbox's disk quota: a sparse ext4 image of the quota's size, loop-mounted.

The kernel enforces it: a write past the end of the filesystem fails with ENOSPC inside the
sandbox, and the host disk only ever holds what the sandbox wrote (the image is sparse and
mounted with `discard`, so deleted files give their blocks back to the host). One image holds
both the workspace and the home directory, as `workspace/` and `home/`, so neither an npm cache
nor a `dd` into `~` gets around the limit.

Measured on this project's CI host: making a 4 GiB image ~20 ms, a loop mount ~8 ms, and the
image costs ~10 MiB of host disk before anything is written (mostly the 8 MiB journal).
Loop devices are created on demand through /dev/loop-control (`max_loop` only bounds the ones
made at boot), so 200 sandboxes take 200 loop devices; `mount -o loop` sets autoclear, so a
device is released when its last mount goes. See docs/runtimes.md "Disk quotas".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

from cloudcontainer.runtimes.base import RuntimeUnavailable, SandboxStartFailed

__all__ = [
    "DISK_DIRS",
    "MOUNT_OPTIONS",
    "check_tools",
    "is_mounted",
    "loop_devices_backing",
    "make_image",
    "mount_image",
    "unmount",
    "wait_released",
]

# The sandbox's files, each a directory at the image's root.
DISK_DIRS = ("workspace", "home")
# No setuid binaries or device nodes from a filesystem the sandbox writes; `discard` returns
# deleted blocks to the host through the loop device (a hole punched in the image).
MOUNT_OPTIONS = "loop,nosuid,nodev,noatime,discard"
TOOLS = ("mkfs.ext4", "mount", "umount")


def check_tools() -> None:
    """Raise RuntimeUnavailable when the host cannot make or mount the images."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise RuntimeUnavailable(
            f"disk quotas (default_disk_mb > 0) need {', '.join(missing)}: install the Debian "
            "packages e2fsprogs and mount, or set default_disk_mb = 0"
        )


async def _run(*argv: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise SandboxStartFailed(
            f"{' '.join(argv)} failed: {stderr.decode(errors='replace').strip()}"
        )


async def make_image(image: Path, size_mb: int, uid: int) -> None:
    """Create the sparse image with `workspace/` and `home/` owned by `uid`; idempotent.

    Built as `image.new` and renamed, so a crash halfway never leaves a half-made image that
    a later start would mount."""
    if image.exists():
        return
    seed = image.with_name(image.name + ".seed")
    partial = image.with_name(image.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    await asyncio.to_thread(shutil.rmtree, seed, True)
    seed.mkdir()
    try:
        for name in DISK_DIRS:
            (seed / name).mkdir()
            os.chown(seed / name, uid, uid)
        with open(partial, "wb") as handle:
            handle.truncate(size_mb * 1024 * 1024)
        # -m 0: no blocks reserved for root (nothing in a sandbox is root); a small journal,
        # since its blocks are written at mkfs time and cost host disk per sandbox.
        await _run(
            "mkfs.ext4", "-q", "-F", "-m", "0", "-J", f"size={_journal_mb(size_mb)}",
            "-E", f"root_owner={uid}:{uid}", "-d", str(seed), str(partial),
        )  # fmt: skip
        os.rename(partial, image)
    finally:
        await asyncio.to_thread(shutil.rmtree, seed, True)
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def _journal_mb(size_mb: int) -> int:
    """4 MiB (ext4's least) for small disks, 8 MiB from 512 MiB up."""
    return 8 if size_mb >= 512 else 4


def is_mounted(target: Path) -> bool:
    """Whether `target` is a mount point in this process's mount namespace."""
    wanted = str(target)
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) > 1 and _unescape(fields[1]) == wanted:
                return True
    return False


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, plain)
    return field


async def mount_image(image: Path, target: Path) -> None:
    """Loop-mount the image on `target` (in this mount namespace) unless it is already."""
    target.mkdir(exist_ok=True)
    if is_mounted(target):
        return
    await _run("mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(image), str(target))


async def unmount(target: Path) -> None:
    """Unmount `target` if mounted; a busy one is detached lazily (it goes when unused)."""
    if not is_mounted(target):
        return
    try:
        await _run("umount", str(target))
    except SandboxStartFailed:
        await _run("umount", "--lazy", str(target))


def loop_devices_backing(image: Path) -> list[str]:
    """The loop devices whose backing file is `image` (the kernel says `(deleted)` once the
    file is gone)."""
    wanted = str(image)
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            name = backing.read_text().strip().removesuffix(" (deleted)")
            if name == wanted:
                found.append(backing.parent.parent.name)
    return found


async def wait_released(image: Path, seconds: float = 5.0) -> bool:
    """Wait until no loop device uses the image: its mounts go when the last process of the
    mount namespace holding them has exited, a moment after the sandbox was killed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop_devices_backing(image):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True
