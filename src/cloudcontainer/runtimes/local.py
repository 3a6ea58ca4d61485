"""The `local` runtime: bubblewrap sandboxes on this host, each in its own network namespace.

A sandbox is a directory `DATA_DIR/sandboxes/<id>/`, owned by root and never visible inside,
holding its workspace (`/home/project` inside) and home (`/home`) — the only parts the sandbox
can write —, the agent's listening socket, a few generated /etc files, `uid` (the host uid the
sandbox runs as, its own), `labels.json` (whose it is: user and project) and `state.json` with
the pids that make it up. The data directory is the gateway's own, so `list()` sees only its
sandboxes. With a disk quota
the workspace and home live in `disk.img` instead (runtimes/disk.py), loop-mounted on `disk/`
inside the sandbox's own mount namespace only. Started as:

    sh (joins the cgroup) → unshare --mount (binds the directory, mounts disk.img)
      → nsenter --net=/run/netns/cc-<id> → prlimit (open files, no core dumps)
      → setpriv (the sandbox's own host uid) → bwrap (user, pid, ipc, uts, mount namespaces,
        no nested user namespaces, seccomp filter; the current root filesystem read-only as /)
      → python3 agent.pyz

The root filesystem is the one `cloudcontainer image build` made (images/store.py), the same
tree the docker runtime's image is made of: nothing of the host's /usr is visible. A sandbox
binds the build that was current when it started and keeps it until its next start.

with `slirp4netns` attached to the same named netns for egress, running with the sandbox's uid
as its group so the host firewall applies the egress policy to it (runtimes/egress.py).

Nothing root does follows a path the sandbox can change: the gateway makes the agent's
listening socket itself in the root-owned directory and hands it over as a descriptor, and the
agent's secret travels through a pipe on its stdin — nothing is written into, chowned in or
connected to inside the workspace or home. Nothing is a child that dies with the gateway: a
restarted gateway finds the sandboxes through `list()` and re-adopts them. Needs root (named
netns, setpriv), bwrap and slirp4netns, libseccomp, iptables, and writable cgroups (or the
operator's explicit `local_allow_without_cgroups`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from cloudcontainer.agentlink.client import AgentAddress
from cloudcontainer.images.store import Build, RootfsStore, StoreError
from cloudcontainer.runtimes import disk, seccomp
from cloudcontainer.runtimes.base import (
    AGENT_PATH,
    CA_BUNDLE_PATH,
    HOME,
    WORKSPACE,
    AgentDelivery,
    RuntimeOptions,
    RuntimeUnavailable,
    SandboxInfo,
    SandboxSpec,
    SandboxStartFailed,
    SandboxState,
    open_files_limit,
    sandbox_env,
)
from cloudcontainer.runtimes.cgroups import CgroupLimits
from cloudcontainer.runtimes.egress import Firewall

__all__ = ["LocalRuntime"]

log = structlog.get_logger(__name__)

TOOLS = ("bwrap", "slirp4netns", "nsenter", "setpriv", "prlimit", "ip")
# Where a sandbox's private mount namespace shows its directory before bwrap starts.
STAGE = "/mnt"
NETNS_DIR = Path("/run/netns")
# The one host uid of sandboxes made before each had its own (they keep it).
LEGACY_HOST_UID = 100_000
UID_FILE = "uid"
LABELS_FILE = "labels.json"
PASSWD = "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000:user:/home:/bin/bash\n"  # noqa: S105
GROUP = "root:x:0:\nuser:x:1000:\n"
HOSTS = "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost\n"
RESOLV = "nameserver 10.0.2.3\n"  # slirp4netns's DNS forwarder
TMP_BYTES = 1 << 30  # /tmp is a tmpfs of this size, as on the docker runtime


@dataclass(frozen=True, slots=True)
class _Pids:
    """The processes that make a sandbox, with start times so a reused pid is not mistaken."""

    init: int
    init_start: int
    slirp: int
    slirp_start: int
    rootfs: str = ""  # the build it started from (images/store.py), kept by `image prune`


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, start: int) -> bool:
    return pid > 0 and _start_time(pid) == start


class LocalRuntime:
    name = "local"
    # The sandbox runs on the gateway's host: a hard link of the zipapp, bound read-only.
    agent_delivery = AgentDelivery.BIND

    def __init__(self, options: RuntimeOptions) -> None:
        self.options = options
        self.root = options.data_dir / "sandboxes"
        self.uids = UidAllocator(self.root, *options.local_uids)
        self.cgroups = CgroupLimits()
        self.disk_quotas = bool(options.extra.get("disk_quotas", False))
        self.seccomp_filter = options.data_dir / "seccomp.bpf"

    # -- host checks ----------------------------------------------------------------------

    async def check(self) -> None:
        """Everything a sandbox's isolation rests on, or RuntimeUnavailable saying what is
        missing: sandboxes are never started with less than promised, unless the operator
        said so (and the log says it loudly)."""
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise RuntimeUnavailable(
                f"the local runtime needs {', '.join(missing)}: install the Debian packages "
                "bubblewrap slirp4netns util-linux iproute2 (`make run` does this)"
            )
        if os.geteuid() != 0:
            raise RuntimeUnavailable(
                "the local runtime needs root (it gives every sandbox its own network namespace);"
                " run the server as root or choose the docker runtime"
            )
        self._rootfs()
        self._check_cgroups()
        if self.disk_quotas:
            disk.check_tools()
        self.options.data_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(seccomp.build_filter, self.seccomp_filter)
        # Sandboxes made before per-sandbox uids keep the shared one: the policy covers it.
        await Firewall(self.options.egress).install_local(
            self.options.local_uids, (LEGACY_HOST_UID, LEGACY_HOST_UID)
        )

    def _check_cgroups(self) -> None:
        if self.cgroups.available:
            return
        if not self.options.local_allow_without_cgroups:
            raise RuntimeUnavailable(
                f"cgroups cannot limit sandboxes here ({self.cgroups.problem}): without them a "
                "sandbox can take every core, all memory and every pid of this host. Run the "
                "server where /sys/fs/cgroup is writable, or set local_allow_without_cgroups = "
                "true to run sandboxes without cpu, memory and pids limits"
            )
        log.warning(
            "SANDBOXES RUN WITHOUT CPU, MEMORY AND PIDS LIMITS (local_allow_without_cgroups): "
            "one sandbox can starve this host and every other sandbox",
            problem=self.cgroups.problem,
        )

    def _rootfs(self) -> Build:
        """The current root filesystem, or RuntimeUnavailable saying how to make one."""
        directory = self.options.rootfs_dir
        try:
            build = RootfsStore(directory).current() if directory is not None else None
        except StoreError as exc:
            raise RuntimeUnavailable(f"the sandbox root filesystem is damaged: {exc}") from exc
        if build is None:
            raise RuntimeUnavailable(
                f"no sandbox root filesystem in {directory}: build it with `cloudcontainer "
                "image build` (`make run` does this first; a few minutes the first time)"
            )
        return build

    # -- layout ---------------------------------------------------------------------------

    def _dir(self, sandbox_id: str) -> Path:
        if not sandbox_id.replace("_", "").isalnum():
            raise ValueError(f"bad sandbox id {sandbox_id!r}")
        return self.root / sandbox_id

    def _netns(self, sandbox_id: str) -> str:
        return f"cc-{sandbox_id}"

    def _image(self, sandbox_id: str) -> Path:
        return self._dir(sandbox_id) / "disk.img"

    async def create(self, spec: SandboxSpec) -> None:
        base = self._dir(spec.sandbox_id)
        base.mkdir(parents=True, exist_ok=True)
        uid = await self.uids.uid_for(spec.sandbox_id)
        owned = []
        # The quota is decided once: a sandbox made without one keeps its plain directories.
        if self._image(spec.sandbox_id).exists() or (
            spec.disk_mb > 0 and not (base / "workspace").exists()
        ):
            (base / "disk").mkdir(exist_ok=True)
            await disk.make_image(self._image(spec.sandbox_id), spec.disk_mb, uid)
        else:
            owned += ["workspace", "home"]
        for name in [*owned, "etc", "rootfs"]:
            (base / name).mkdir(exist_ok=True)
        for name in owned:
            # Made here by root in a directory only root writes: never a path the sandbox
            # could have replaced. Still, never follow one.
            os.chown(base / name, uid, uid, follow_symlinks=False)
        for name, text in (("passwd", PASSWD), ("group", GROUP), ("hosts", HOSTS),
                           ("resolv.conf", RESOLV), ("hostname", "sandbox\n")):  # fmt: skip
            (base / "etc" / name).write_text(text)
        labels = {"user": spec.owner_id, "project": spec.project_id}
        (base / LABELS_FILE).write_text(json.dumps(labels))

    # -- start ----------------------------------------------------------------------------

    async def start(self, spec: SandboxSpec) -> SandboxInfo:
        info = await self.inspect(spec.sandbox_id)
        if info.state is SandboxState.RUNNING:
            return info
        await self.stop(spec.sandbox_id)  # clear a half-dead previous run
        await self.create(spec)
        base = self._dir(spec.sandbox_id)
        uid = await self.uids.uid_for(spec.sandbox_id)
        try:
            rootfs = self._rootfs()
        except RuntimeUnavailable as exc:
            raise SandboxStartFailed(exc.message) from exc
        netns = self._netns(spec.sandbox_id)
        await self._run("ip", "netns", "add", netns)
        # Network and sandbox start side by side: neither waits for the other.
        started = await asyncio.gather(
            self._start_slirp(netns, uid), self._start_bwrap(spec, base, netns, uid, rootfs),
            return_exceptions=True,
        )  # fmt: skip
        failure = next((half for half in started if isinstance(half, BaseException)), None)
        if failure is not None:
            for half in started:
                if not isinstance(half, BaseException):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(half[0], signal.SIGKILL)
            await self.stop(spec.sandbox_id)
            raise failure
        slirp, init = started
        assert not isinstance(slirp, BaseException)
        assert not isinstance(init, BaseException)
        pids = _Pids(init[0], init[1], slirp[0], slirp[1], rootfs.id)
        (base / "state.json").write_text(json.dumps(dataclasses.asdict(pids)))
        return SandboxInfo(spec.sandbox_id, SandboxState.RUNNING, self._address(spec.sandbox_id))

    def _address(self, sandbox_id: str) -> AgentAddress:
        return AgentAddress(unix_path=str(self._socket_path(sandbox_id)))

    def _socket_path(self, sandbox_id: str) -> Path:
        return self._dir(sandbox_id) / "agent.sock"

    async def _run(self, *argv: str) -> None:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await process.communicate()
        if process.returncode != 0:
            raise SandboxStartFailed(
                f"{' '.join(argv)} failed: {stderr.decode(errors='replace').strip()}"
            )

    async def _start_slirp(self, netns: str, uid: int) -> tuple[int, int]:
        ready_read, ready_write = os.pipe()
        try:
            # `sh` starts it in the background in a session of its own and says its pid: the
            # sandbox's network never is the gateway's child and outlives it.
            process = await asyncio.create_subprocess_exec(
                "sh", "-c", 'setsid "$@" </dev/null >/dev/null 2>&1 & echo $!', "sh",
                # Root keeps the capabilities slirp4netns needs; the sandbox's id as its group
                # is what the egress rules match its connections by.
                "setpriv", f"--regid={uid}", "--clear-groups",
                "slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
                "--enable-seccomp", f"--ready-fd={ready_write}",
                "--netns-type=path", str(NETNS_DIR / netns), "tap0",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL, pass_fds=(ready_write,),
            )  # fmt: skip
            # One line, not EOF: an event loop that lets children inherit every descriptor
            # (uvloop) leaves the pipe's write end open in slirp4netns too.
            assert process.stdout is not None
            output = await process.stdout.readline()
            await process.wait()
        finally:
            os.close(ready_write)
        try:
            ready = await asyncio.wait_for(_read_fd(ready_read), timeout=10)
        finally:
            os.close(ready_read)
        if ready != b"1":
            raise SandboxStartFailed("slirp4netns did not start (no network for the sandbox)")
        pid = int(output)
        return pid, _start_time(pid) or 0

    def _bwrap_argv(self, spec: SandboxSpec, seccomp_fd: int) -> list[str]:
        argv = [
            "bwrap", "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--disable-userns", "--seccomp", str(seccomp_fd),
            "--hostname", "sandbox", "--uid", "1000", "--gid", "1000",
            "--new-session", "--clearenv",
            # Every mount point below exists in the tree (the builder makes the agent's).
            "--ro-bind", f"{STAGE}/rootfs", "/",
            "--proc", "/proc", "--dev", "/dev", "--size", str(TMP_BYTES), "--tmpfs", "/tmp",  # noqa: S108
            "--tmpfs", "/run",
        ]  # fmt: skip
        for option, source, target in self._binds(self._image(spec.sandbox_id).exists()):
            argv += [option, source, target]
        argv += ["--chdir", WORKSPACE]
        for key, value in sandbox_env(spec, self.options.ca_bundle is not None).items():
            argv += ["--setenv", key, value]
        return argv

    def _binds(self, quota: bool) -> list[tuple[str, str, str]]:
        """Bind sources, under STAGE: the sandbox's own mount namespace binds its directory
        there first (as root), so the unprivileged sandbox uid never has to traverse DATA_DIR,
        which may sit under a 0700 home directory. With a quota, home and workspace come from
        the disk image mounted on STAGE/disk."""
        files = f"{STAGE}/disk" if quota else STAGE
        binds = [
            ("--ro-bind", f"{STAGE}/etc/{name}", f"/etc/{name}")
            for name in ("passwd", "group", "hosts", "resolv.conf", "hostname")
        ]
        if self.options.ca_bundle is not None:
            binds.append(("--ro-bind", str(self.options.ca_bundle), CA_BUNDLE_PATH))
        binds += [
            ("--bind", f"{files}/home", HOME),
            ("--bind", f"{files}/workspace", WORKSPACE),
            ("--ro-bind", f"{STAGE}/agent.pyz", AGENT_PATH),
        ]
        return binds

    async def _start_bwrap(
        self, spec: SandboxSpec, base: Path, netns: str, uid: int, rootfs: Build
    ) -> tuple[int, int]:
        try:
            join = self.cgroups.create(
                spec.sandbox_id, cpu=spec.cpu, memory_mb=spec.memory_mb, pids=spec.pids
            )
        except OSError as exc:
            raise SandboxStartFailed(
                f"the sandbox's cgroup limits could not be set: {exc}"
            ) from exc
        image = self._image(spec.sandbox_id)
        _link_agent(self.options.agent_zipapp, base / "agent.pyz")
        _truncate_log(base / "agent.log")
        listener = _listen(self._socket_path(spec.sandbox_id))
        secret_read, secret_write = os.pipe()
        os.write(secret_write, spec.agent_secret.encode() + b"\n")
        os.close(secret_write)
        seccomp_fd = os.open(self.seccomp_filter, os.O_RDONLY | os.O_NOFOLLOW)
        info_read, info_write = os.pipe()
        open_files = open_files_limit(self.options.open_files)
        argv = [
            "setsid", "--fork",
            "sh", "-c", 'for f in $CC_CGROUP_PROCS; do echo $$ > "$f"; done; exec "$@"', "sh",
            # slave, not private: where the host's / is shared (systemd's default), an unmount
            # on the host (a docker sandbox's disk) reaches this copy too instead of pinning it.
            "unshare", "--mount", "--propagation", "slave",
            "sh", "-c", f'mount --bind "$CC_BASE" {STAGE} && mount --bind "$CC_ROOTFS" '
            f'{STAGE}/rootfs && {{ [ -z "$CC_DISK" ] || mount -t ext4 -o '
            f'{disk.MOUNT_OPTIONS} "$CC_DISK" {STAGE}/disk; }} && exec "$@"', "sh",
            "nsenter", f"--net={NETNS_DIR / netns}",
            # Raised and capped by root, before the uid changes: the sandbox cannot lift them.
            # No core dumps: a host's core_pattern may hand them to a program running as root.
            "prlimit", f"--nofile={open_files}:{open_files}", "--core=0:0",
            "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            *self._bwrap_argv(spec, seccomp_fd), "--info-fd", str(info_write),
            "/usr/bin/python3", "-S", AGENT_PATH, "--listen", f"fd:{listener.fileno()}",
            "--secret-file", "-", "--workspace", WORKSPACE,
        ]  # fmt: skip
        log_file = open(base / "agent.log", "ab")  # noqa: SIM115 (the child writes to it)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=secret_read, stdout=log_file, stderr=log_file,
                pass_fds=(info_write, listener.fileno(), seccomp_fd),
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                     "CC_CGROUP_PROCS": " ".join(str(p) for p in join), "CC_BASE": str(base),
                     "CC_ROOTFS": str(rootfs.root),
                     "CC_DISK": str(image) if image.exists() else ""},
            )  # fmt: skip
            await process.wait()
        finally:
            for fd in (info_write, secret_read, seccomp_fd):
                os.close(fd)
            listener.close()
            log_file.close()
        try:
            raw = await asyncio.wait_for(_read_fd(info_read, until_eof=False), timeout=10)
        finally:
            os.close(info_read)
        try:
            child = int(json.loads(raw)["child-pid"])
        except (ValueError, KeyError) as exc:
            tail = (base / "agent.log").read_text(errors="replace")[-500:]
            raise SandboxStartFailed(f"bubblewrap did not start the sandbox: {tail}") from exc
        return child, _start_time(child) or 0

    # -- stop, inspect, destroy -----------------------------------------------------------

    def _pids(self, sandbox_id: str) -> _Pids | None:
        try:
            data = json.loads((self._dir(sandbox_id) / "state.json").read_text())
            return _Pids(**data)
        except (OSError, ValueError, TypeError):
            return None

    async def stop(self, sandbox_id: str) -> None:
        pids = self._pids(sandbox_id)
        if pids is not None:
            for pid, start in ((pids.init, pids.init_start), (pids.slirp, pids.slirp_start)):
                if _alive(pid, start):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)  # the pid-namespace init takes all with it
            deadline = time.monotonic() + 5
            while _alive(pids.init, pids.init_start) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            with contextlib.suppress(FileNotFoundError):
                (self._dir(sandbox_id) / "state.json").unlink()
        if (NETNS_DIR / self._netns(sandbox_id)).exists():
            try:
                await self._run("ip", "netns", "delete", self._netns(sandbox_id))
            except SandboxStartFailed:
                if (NETNS_DIR / self._netns(sandbox_id)).exists():
                    raise  # gone meanwhile (a concurrent stop) is fine
        for _ in range(200):  # the last processes take a moment to leave the cgroup
            if self.cgroups.remove(sandbox_id):
                break
            await asyncio.sleep(0.01)
        else:
            log.warning("cgroup still busy after stop; left in place", sandbox_id=sandbox_id)

    async def inspect(self, sandbox_id: str) -> SandboxInfo:
        base = self._dir(sandbox_id)
        if not base.exists():
            return SandboxInfo(sandbox_id, SandboxState.MISSING)
        pids = self._pids(sandbox_id)
        if pids is not None and _alive(pids.init, pids.init_start):
            detail: dict[str, Any] = {
                "pid": pids.init,
                "network": _alive(pids.slirp, pids.slirp_start),
                "rootfs": pids.rootfs,
            }
            return SandboxInfo(
                sandbox_id, SandboxState.RUNNING, self._address(sandbox_id), detail=detail
            )
        return SandboxInfo(sandbox_id, SandboxState.STOPPED)

    async def destroy(self, sandbox_id: str) -> None:
        await self.stop(sandbox_id)
        base = self._dir(sandbox_id)
        image = self._image(sandbox_id)
        if image.exists() and not await disk.wait_released(image):
            log.warning("the disk image is still in use; removed anyway", sandbox_id=sandbox_id)
        if base.exists():
            await asyncio.to_thread(shutil.rmtree, base, True)

    async def list(self) -> list[SandboxInfo]:
        if not self.root.exists():
            return []
        return [
            await self.inspect(path.name) for path in sorted(self.root.iterdir()) if path.is_dir()
        ]

    async def rootfs_in_use(self) -> set[str]:
        """The root filesystem builds running sandboxes were started from (`image prune`
        keeps them)."""
        return {
            str(info.detail.get("rootfs"))
            for info in await self.list()
            if info.state is SandboxState.RUNNING and info.detail.get("rootfs")
        }

    async def logs(self, sandbox_id: str, limit: int = 2000) -> str:
        try:
            with open(self._dir(sandbox_id) / "agent.log", "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - limit))
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    async def aclose(self) -> None:
        """Nothing to release: sandboxes outlive the gateway by design."""


class UidAllocator:
    """One host uid per sandbox, from the configured range, recorded in the sandbox's
    root-owned directory. Sandboxes with uids of their own cannot signal, trace or share
    per-user kernel limits (inotify instances, RLIMIT_NPROC) with each other, and their files
    on the host are told apart."""

    def __init__(self, root: Path, first: int, last: int) -> None:
        self.root = root
        self.first, self.last = first, last
        self._lock = asyncio.Lock()

    def recorded(self, sandbox_id: str) -> int | None:
        try:
            return int((self.root / sandbox_id / UID_FILE).read_text())
        except (OSError, ValueError):
            return None

    async def uid_for(self, sandbox_id: str) -> int:
        uid = self.recorded(sandbox_id)
        if uid is not None:
            return uid
        async with self._lock:
            return await asyncio.to_thread(self._allocate, sandbox_id)

    def _allocate(self, sandbox_id: str) -> int:
        """The lowest free uid of the range; `flock` keeps two gateways sharing a data
        directory from taking the same one."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".uids.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            uid = self.recorded(sandbox_id)
            if uid is None:
                uid = self._legacy_uid(sandbox_id) or self._free_uid(sandbox_id)
                path = self.root / sandbox_id / UID_FILE
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "w") as handle:
                    handle.write(str(uid))
            return uid

    def _legacy_uid(self, sandbox_id: str) -> int | None:
        """A sandbox made when all shared one uid keeps it: its files are that uid's."""
        base = self.root / sandbox_id
        if (base / "workspace").exists() or (base / "disk.img").exists():
            log.warning(
                "a sandbox made before per-sandbox uids keeps the shared uid; recreate it for "
                "a uid of its own", sandbox_id=sandbox_id, uid=LEGACY_HOST_UID,
            )  # fmt: skip
            return LEGACY_HOST_UID
        return None

    def _free_uid(self, sandbox_id: str) -> int:
        taken = {self.recorded(path.name) for path in self.root.iterdir() if path.is_dir()}
        for uid in range(self.first, self.last + 1):
            if uid not in taken:
                return uid
        raise SandboxStartFailed(
            f"every host uid of local_sandbox_uids ({self.first}-{self.last}) is in use: widen "
            "the range or delete containers"
        )


def _listen(path: Path) -> socket.socket:
    """The agent's listening socket, made by the gateway in the root-owned sandbox directory
    (only root may connect) and handed to the agent as a descriptor."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:  # through /proc/self/fd: sun_path holds 108 bytes, a data directory may be deeper
            sock.bind(f"/proc/self/fd/{directory}/{path.name}")
        finally:
            os.close(directory)
        os.chmod(path, 0o600)
        sock.listen(64)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def _truncate_log(path: Path, keep: int = 64 * 1024, limit: int = 1024 * 1024) -> None:
    """Keep the agent's log on the host small across starts (the agent caps each run's)."""
    try:
        if path.stat().st_size <= limit:
            return
        with open(path, "rb") as handle:
            handle.seek(-keep, os.SEEK_END)
            tail = handle.read()
        path.write_bytes(tail)
    except OSError:
        return


def _link_agent(source: Path, target: Path) -> None:
    """Put the agent zipapp in the sandbox directory (a hard link where possible)."""
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


async def _read_fd(fd: int, until_eof: bool = True) -> bytes:
    """Read a pipe without blocking the loop: to EOF, or the first chunk."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(fd), "rb", buffering=0)
    )
    try:
        if until_eof:
            return await reader.read()
        data = b""
        while not data.rstrip().endswith(b"}"):
            chunk = await reader.read(4096)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        transport.close()
