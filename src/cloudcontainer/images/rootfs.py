"""The sandbox root filesystem: Debian from debootstrap, then Node, npm and the sandbox user.

Everything here runs as root on the host, in a scratch directory the builder owns; the pristine
debootstrap result is kept as a tarball so a rebuild skips the slow part.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cloudcontainer.images.errors import DownloadFailed, ImageBuildError
from cloudcontainer.images.process import CHROOT_ENV, TAR_FLAGS, run
from cloudcontainer.images.progress import Progress, Task

__all__ = [
    "DEBIAN_PACKAGES",
    "SANDBOX_GID",
    "SANDBOX_UID",
    "Debootstrap",
    "add_sandbox_user",
    "ensure_debootstrap",
    "install_node",
    "install_npm",
    "remove_tree",
    "restore_base",
    "save_base",
    "tree_size",
]

DEBIAN_PACKAGES = (
    "bash", "ca-certificates", "curl", "git", "procps", "python3", "ripgrep", "wget",
)  # fmt: skip
SANDBOX_UID = SANDBOX_GID = 1000
_TAR_RECORD_BYTES = 10240  # GNU tar's default record: 20 blocks of 512 bytes
_TAR_CHECKPOINT = 100
_CHECKPOINT_LINE = re.compile(r"#(\d+)$")


@dataclass(frozen=True)
class Debootstrap:
    """What to debootstrap; `cache_name` changes whenever the result would."""

    arch: str
    mirror: str
    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = DEBIAN_PACKAGES

    @property
    def cache_name(self) -> str:
        key = "|".join([self.suite, self.variant, self.arch, self.mirror, *sorted(self.packages)])
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return f"debootstrap-{self.suite}-{self.variant}-{self.arch}-{digest}.tar"

    async def run(self, rootfs: Path, progress: Progress) -> None:
        """debootstrap into `rootfs`, then drop what only the build needed (apt lists, .debs)."""
        task = progress.task(f"Debian {self.suite} rootfs (debootstrap {self.variant})")
        retrieved = 0

        def on_line(line: str) -> None:
            nonlocal retrieved
            if line.startswith("I: Retrieving ") and "Release" not in line:
                retrieved += 1
            if line.startswith(("I: ", "W: ", "E: ")):
                task.detail(f"{line[3:]} ({retrieved} packages)")

        await run(
            ["debootstrap", f"--variant={self.variant}", f"--arch={self.arch}",
             f"--include={','.join(self.packages)}", self.suite, rootfs, self.mirror],
            env=_host_env(), on_line=on_line,
        )  # fmt: skip
        await asyncio.to_thread(_tidy_base, rootfs)
        task.done(f"{retrieved} packages")


async def ensure_debootstrap(progress: Progress) -> None:
    """Install Debian's debootstrap (and Debian's keys, absent on Ubuntu) when missing."""
    if shutil.which("debootstrap", path=_host_env()["PATH"]):
        return
    task = progress.task("Install debootstrap (apt-get)")
    task.detail("apt-get update")
    await run(["apt-get", "update", "-qq"], env=_host_env())
    task.detail("apt-get install debootstrap")
    await run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap",
         "debian-archive-keyring"],
        env=_host_env(),
    )  # fmt: skip
    task.done()


async def save_base(rootfs: Path, cache_file: Path, progress: Progress) -> None:
    """Keep the debootstrap result as a tarball; written aside and renamed, so never half."""
    task = progress.task("Cache the Debian rootfs", unit="bytes")
    task.set_total(await asyncio.to_thread(tree_size, rootfs))
    partial = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
    try:
        await _tar(["-C", rootfs, "-cf", partial, "."], task)
        await asyncio.to_thread(partial.replace, cache_file)
    finally:
        await asyncio.to_thread(partial.unlink, missing_ok=True)
    task.done()


async def restore_base(cache_file: Path, rootfs: Path, progress: Progress) -> None:
    task = progress.task("Unpack the cached Debian rootfs", unit="bytes")
    task.set_total((await asyncio.to_thread(cache_file.stat)).st_size)
    await asyncio.to_thread(rootfs.mkdir, mode=0o755)
    await _tar(["-C", rootfs, "-xpf", cache_file], task)
    task.done()


async def add_sandbox_user(rootfs: Path) -> None:
    """User `user` (uid/gid 1000) whose home is /home, and the workspace /home/project; both
    owned by the user. HOME=/home makes the workspace `~/project`, as in WebContainer and in
    the local runtime, and gives npm and pip a writable cache."""
    await run(["chroot", rootfs, "groupadd", "--gid", str(SANDBOX_GID), "user"], env=CHROOT_ENV)
    await run(
        ["chroot", rootfs, "useradd", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID),
         "--no-create-home", "--home-dir", "/home", "--shell", "/bin/bash", "user"],
        env=CHROOT_ENV,
    )  # fmt: skip
    project = rootfs / "home/project"
    project.mkdir(mode=0o755)
    for path in (rootfs / "home", project):
        os.chown(path, SANDBOX_UID, SANDBOX_GID)


def install_node(rootfs: Path, tarball: Path) -> None:
    """The official binary at /usr/local/bin/node, its headers and docs beside it, as nodejs.org
    lays them out (so node-gyp can be pointed at /usr/local)."""

    def place(inner: PurePosixPath) -> PurePosixPath | None:
        if inner.parts[1:] == ("bin", "node"):
            return PurePosixPath("usr/local/bin/node")
        if len(inner.parts) > 2 and inner.parts[1] in ("include", "share"):
            return PurePosixPath("usr/local", *inner.parts[1:])
        return None

    _unpack(tarball, rootfs, place)
    if not (rootfs / "usr/local/bin/node").is_file():
        raise DownloadFailed(f"{tarball.name} holds no bin/node")


def install_npm(rootfs: Path, tarball: Path) -> None:
    """npm in /usr/local/lib/node_modules/npm, with npm and npx linked into /usr/local/bin."""
    home = PurePosixPath("usr/local/lib/node_modules/npm")
    _unpack(tarball, rootfs, lambda inner: home.joinpath(*inner.parts[1:]))
    for command in ("npm", "npx"):
        script = rootfs / home / "bin" / f"{command}-cli.js"
        if not script.is_file():
            raise DownloadFailed(f"{tarball.name} holds no bin/{script.name}")
        script.chmod(0o755)
        link = rootfs / "usr/local/bin" / command
        link.unlink(missing_ok=True)
        link.symlink_to(f"../lib/node_modules/npm/bin/{script.name}")
    # npm's global config ($PREFIX/etc/npmrc): no "new major version" banner in every install's
    # output, and no registry call to look for one.
    (rootfs / "usr/local/etc").mkdir(mode=0o755, exist_ok=True)
    (rootfs / "usr/local/etc/npmrc").write_text("update-notifier=false\n")


def tree_size(root: Path) -> int:
    """Roughly what `tar` will write for `root`: a 512-byte header per entry, data in blocks."""
    total = 0
    for directory, dirs, files in os.walk(root):
        total += 512 * (len(dirs) + 1)
        for name in files:
            size = os.lstat(os.path.join(directory, name)).st_size
            total += 512 + -(-size // 512) * 512
    return total


async def remove_tree(path: Path) -> None:
    """Delete a scratch rootfs, first detaching anything still mounted in it.

    A debootstrap that was interrupted can leave /proc, /sys or the host's /dev bound inside its
    target; deleting through those would reach the host.
    """
    if not await asyncio.to_thread(path.exists):
        return
    for mount in sorted(_mounts_below(path), key=lambda p: len(p.parts), reverse=True):
        await run(["umount", "--lazy", mount])
    if left := _mounts_below(path):
        raise ImageBuildError(f"{left[0]} is still mounted; not deleting {path}")
    await asyncio.to_thread(shutil.rmtree, path)


def _unpack(
    tarball: Path, rootfs: Path, place: Callable[[PurePosixPath], PurePosixPath | None]
) -> None:
    """Copy the regular files of an npm tarball to where `place` says (None: skip).

    npm tarballs hold only files (under `package/`); their owners and odd modes are not kept.
    """
    root = rootfs.resolve()
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            inner = PurePosixPath(member.name)
            if inner.is_absolute() or ".." in inner.parts:
                raise DownloadFailed(f"{tarball.name} has an unsafe path: {member.name}")
            relative = place(inner) if member.isfile() else None
            if relative is None:
                continue
            dest = rootfs / relative
            _make_dirs(dest.parent, root)
            source = archive.extractfile(member)
            assert source is not None
            with source, dest.open("wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            dest.chmod(0o755 if member.mode & 0o111 else 0o644)


def _make_dirs(directory: Path, root: Path) -> None:
    """mkdir -p with mode 0755 whatever the umask, refusing to leave the rootfs via a symlink."""
    if directory.is_dir():
        if not directory.resolve().is_relative_to(root):
            raise ImageBuildError(f"{directory} leads outside the rootfs")
        return
    _make_dirs(directory.parent, root)
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)


def _tidy_base(rootfs: Path) -> None:
    """Drop package lists and downloaded .debs; blank the host's resolv.conf and hostname."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for path in rootfs.glob(pattern):
            if path.is_file() and path.name != "lock":
                path.unlink()
    for name in ("etc/resolv.conf", "etc/hostname"):
        path = rootfs / name
        if path.is_file() and not path.is_symlink():
            path.write_text("")


async def _tar(args: list[str | Path], task: Task) -> None:
    """GNU tar with a checkpoint every 100 records, turned into byte progress."""
    done = 0

    def on_line(line: str) -> None:
        nonlocal done
        if match := _CHECKPOINT_LINE.search(line):
            count = int(match.group(1)) * _TAR_RECORD_BYTES
            task.advance(count - done)
            done = count

    await run(
        ["tar", *TAR_FLAGS, f"--checkpoint={_TAR_CHECKPOINT}", "--checkpoint-action=echo=#%u",
         *args],
        on_line=on_line,
    )  # fmt: skip


def _mounts_below(path: Path) -> list[Path]:
    root = path.resolve()
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = Path(_unescape(line.split()[4]))
            if point != root and point.is_relative_to(root):
                found.append(point)
    return found


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _host_env() -> Mapping[str, str]:
    """The caller's environment (proxies, apt settings) with sbin on PATH and no prompts."""
    env = dict(os.environ)
    path = env.get("PATH", "/usr/bin:/bin")
    for directory in ("/usr/sbin", "/sbin"):
        if directory not in path.split(":"):
            path += f":{directory}"
    env.update(PATH=path, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    return env
