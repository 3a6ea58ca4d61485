"""The sandbox root filesystem: Debian from debootstrap and apt, then Node.js and the user.

Everything here runs as root on the host, in a scratch directory the builder owns. The Debian
part (debootstrap, then the toolchain packages and security updates through apt in a chroot) is
kept as a tarball, so a rebuild skips the slow part.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cloudcontainer.images import toolchains
from cloudcontainer.images.errors import DownloadFailed, ImageBuildError
from cloudcontainer.images.process import CHROOT_ENV, TAR_FLAGS, run
from cloudcontainer.images.progress import Progress, Task

__all__ = [
    "DEBIAN_PACKAGES",
    "SANDBOX_GID",
    "SANDBOX_UID",
    "DebianBase",
    "NodeTarballs",
    "add_sandbox_user",
    "debian_record",
    "ensure_debootstrap",
    "finish_system",
    "install_node",
    "link_default_node",
    "remove_tree",
    "restore_base",
    "save_base",
    "tree_size",
]

# What a sandbox offers besides Node.js (docs/runtimes.md lists them with their versions).
DEBIAN_PACKAGES = (
    "bash", "build-essential", "ca-certificates", "curl", "file", "git", "jq", "less", "nano",
    "openssh-client", "pkg-config", "procps", "python3", "python3-dev", "python3-pip",
    "python3-venv", "ripgrep", "sqlite3", "unzip", "vim-tiny", "wget", "xz-utils", "zip",
)  # fmt: skip
SANDBOX_UID = SANDBOX_GID = 1000
_TAR_RECORD_BYTES = 10240  # GNU tar's default record: 20 blocks of 512 bytes
_TAR_CHECKPOINT = 100
_CHECKPOINT_LINE = re.compile(r"#(\d+)$")


@dataclass(frozen=True)
class DebianBase:
    """The Debian part of the rootfs; `cache_name` changes whenever the result would (except
    for updates the mirrors published since: `image build --refresh` fetches those)."""

    arch: str
    mirror: str
    security_mirror: str
    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = DEBIAN_PACKAGES
    # A rebuild from a manifest: every package at the version it records ("name=version").
    pins: tuple[str, ...] = ()

    @property
    def cache_name(self) -> str:
        key = "|".join([self.suite, self.variant, self.arch, self.mirror, self.security_mirror,
                        *sorted(self.packages), *sorted(self.pins)])  # fmt: skip
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return f"debian-{self.suite}-{self.variant}-{self.arch}-{digest}.tar"

    @property
    def sources(self) -> str:
        """The suite, its point updates and its security updates (apt's sources.list)."""
        return (
            f"deb {self.mirror} {self.suite} main\n"
            f"deb {self.mirror} {self.suite}-updates main\n"
            f"deb {self.security_mirror} {self.suite}-security main\n"
        )

    async def run(self, rootfs: Path, progress: Progress) -> None:
        """debootstrap a minimal system, then install the packages with every update through
        apt in a chroot, and drop what only the build needed (apt lists, .debs)."""
        task = progress.task(f"Debian {self.suite} base (debootstrap {self.variant})")
        retrieved = 0

        def on_debootstrap(line: str) -> None:
            nonlocal retrieved
            if line.startswith("I: Retrieving ") and "Release" not in line:
                retrieved += 1
            if line.startswith(("I: ", "W: ", "E: ")):
                task.detail(f"{line[3:]} ({retrieved} packages)")

        await run(
            ["debootstrap", f"--variant={self.variant}", f"--arch={self.arch}",
             "--include=ca-certificates", self.suite, rootfs, self.mirror],
            env=_host_env(), on_line=on_debootstrap,
        )  # fmt: skip
        task.done(f"{retrieved} packages")
        await self._apt(rootfs, progress)
        await asyncio.to_thread(_tidy_base, rootfs)

    async def _apt(self, rootfs: Path, progress: Progress) -> None:
        task = progress.task(f"Debian packages and security updates ({len(self.packages)})")
        (rootfs / "etc/apt/sources.list").write_text(self.sources)
        shutil.copyfile("/etc/resolv.conf", rootfs / "etc/resolv.conf")  # only for the build
        unpacked = 0

        def on_apt(line: str) -> None:
            nonlocal unpacked
            if line.startswith("Unpacking "):
                unpacked += 1
            if line.startswith(("Get:", "Unpacking ", "Setting up ")):
                task.detail(f"{line[:100]} ({unpacked} unpacked)")

        if self.pins:  # exactly these versions, older or newer than what debootstrap took
            install = "apt-get install -y -q --no-install-recommends --allow-downgrades "
            script = "apt-get update -q && " + install + " ".join(self.pins)
        else:
            script = (
                "apt-get update -q && apt-get -y -q -o Dpkg::Options::=--force-confold upgrade"
                " && apt-get install -y -q --no-install-recommends " + " ".join(self.packages)
            )
        # /proc and /dev for the packages' scripts, mounted in a mount namespace of the build's
        # own: they vanish with it, even when the build is killed.
        await run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && exec chroot "$1" '
             'sh -c "$2"', "sh", rootfs, script],
            env=CHROOT_ENV, on_line=on_apt,
        )  # fmt: skip
        task.done(f"{unpacked} packages")


def debian_record(rootfs: Path) -> dict[str, object]:
    """What Debian put in the rootfs, for the manifest: every package's version and the date
    of each suite's Release file (the snapshot to rebuild it from)."""
    query = ["dpkg-query", f"--admindir={rootfs / 'var/lib/dpkg'}", "-W",
             "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n"]  # fmt: skip
    output = subprocess.run(query, capture_output=True, text=True, check=True).stdout  # noqa: S603
    packages = {}
    for line in output.splitlines():
        name, version, status = line.split("\t")
        if status.startswith("ii"):
            packages[name] = version
    return {"packages": packages, "release_dates": _release_dates(rootfs)}


def _release_dates(rootfs: Path) -> dict[str, str]:
    dates = {}
    for release in sorted((rootfs / "var/lib/apt/lists").glob("*_InRelease")):
        fields = dict(
            line.split(": ", 1) for line in release.read_text(errors="replace").splitlines()
            if ": " in line and not line.startswith(" ")
        )  # fmt: skip
        if "Codename" in fields and "Date" in fields:
            suite = fields.get("Suite", fields["Codename"])
            dates[f"{fields.get('Label', 'Debian')} {suite}"] = fields["Date"]
    return dates


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


@dataclass(frozen=True)
class NodeTarballs:
    """The npm registry tarballs that make one Node.js major's toolchain."""

    major: str
    node: Path
    npm: Path
    corepack: Path


def install_node(rootfs: Path, tarballs: NodeTarballs) -> None:
    """Lay out /opt/node/<major> as nodejs.org's own tarball does: bin/node, include/node
    (node-gyp's headers) and share/, npm and corepack in lib/node_modules with their commands
    linked into bin/ (corepack's pnpm and yarn shims included, i.e. `corepack enable`), and a
    global npmrc (etc/npmrc, which npm reads from its prefix)."""
    prefix = PurePosixPath(toolchains.node_prefix(tarballs.major).lstrip("/"))

    def place(inner: PurePosixPath) -> PurePosixPath | None:
        if inner.parts[1:] == ("bin", "node"):
            return prefix / "bin/node"
        if len(inner.parts) > 2 and inner.parts[1] in ("include", "share"):
            return prefix.joinpath(*inner.parts[1:])
        return None

    _unpack(tarballs.node, rootfs, place)
    if not (rootfs / prefix / "bin/node").is_file():
        raise DownloadFailed(f"{tarballs.node.name} holds no bin/node")
    commands = {"npm": "bin/npm-cli.js", "npx": "bin/npx-cli.js"}
    _install_package(rootfs, prefix, "npm", tarballs.npm, commands)
    shims = {name: f"dist/{name}.js" for name in ("corepack", *toolchains.COREPACK_SHIMS)}
    _install_package(rootfs, prefix, "corepack", tarballs.corepack, shims)
    # No "new major version" banner in every install's output, nor a registry call to look for
    # one. (node-gyp's headers are set in the environment: toolchains.toolchain_env.)
    (rootfs / prefix / "etc").mkdir(mode=0o755)
    (rootfs / prefix / "etc/npmrc").write_text("update-notifier=false\n")


def _install_package(
    rootfs: Path, prefix: PurePosixPath, name: str, tarball: Path, commands: Mapping[str, str]
) -> None:
    """An npm package in <prefix>/lib/node_modules/<name>, its `commands` linked into bin/."""
    home = prefix / "lib/node_modules" / name
    _unpack(tarball, rootfs, lambda inner: home.joinpath(*inner.parts[1:]))
    for command, script_path in commands.items():
        script = rootfs / home / script_path
        if not script.is_file():
            raise DownloadFailed(f"{tarball.name} holds no {script_path}")
        script.chmod(0o755)
        link = rootfs / prefix / "bin" / command
        link.unlink(missing_ok=True)
        link.symlink_to(f"../lib/node_modules/{name}/{script_path}")


def link_default_node(rootfs: Path, major: str) -> None:
    """/usr/local/bin/{node,npm,...} → the default major's, for whatever runs the image
    without a sandbox's environment (PATH puts the sandbox's chosen major first)."""
    bin_dir = PurePosixPath(toolchains.node_prefix(major)) / "bin"
    for entry in sorted((rootfs / bin_dir.relative_to("/")).iterdir()):
        link = rootfs / "usr/local/bin" / entry.name
        link.unlink(missing_ok=True)
        link.symlink_to(bin_dir / entry.name)


def finish_system(rootfs: Path) -> None:
    """Python as on E2B: `pip install` works for the sandbox user (into ~/.local; the system
    site-packages are read-only anyway) instead of being refused by Debian's guard. And the
    mount points that runtimes bind over the read-only root."""
    for guard in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        guard.unlink()
    agent = rootfs / "opt/cloudcontainer"
    agent.mkdir(mode=0o755, parents=True, exist_ok=True)
    (agent / "agent.pyz").touch(mode=0o644)
    # Mount points of the files each sandbox gets its own of (runtimes bind them).
    for name in ("hosts", "hostname", "resolv.conf", "passwd", "group"):
        (rootfs / "etc" / name).touch(mode=0o644)


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
    """Drop package lists and downloaded .debs (the small signed Release files stay: they date
    the packages, see `debian_record`); blank the host's resolv.conf and hostname."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for path in rootfs.glob(pattern):
            if path.is_file() and path.name != "lock" and not path.name.endswith("_InRelease"):
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
