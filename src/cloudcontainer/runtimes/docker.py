"""The `docker` runtime: one hardened container per sandbox, through the Docker Engine API.

Each sandbox has two named volumes (`cc-<id>-home` at /home, `cc-<id>-workspace` at
/home/project) and, while running, one container `cc-<id>` on the `cloudcontainer` bridge
network (inter-container traffic off). Containers run as uid 1000 with every capability
dropped, no-new-privileges, the sandboxes' seccomp filter (runtimes/seccomp.py, the same as
`local`'s), a read-only root filesystem with
tmpfs /tmp and /run, memory/cpu/pids/open-file limits, no core dumps, a capped log, an init
process, and the host CA bundle mounted read-only. The agent listens on TCP 7070 on the
container's bridge address. Stopping removes the container; the volumes keep the files.
Containers and volumes are labelled with the sandbox's id, its user and project, and the
gateway that made them (`RuntimeOptions.gateway_id`); `list()` sees only that gateway's.

The agent is copied (`AgentDelivery.COPY`), never bound from a host path, so the engine need
not share the gateway's filesystem: one volume per agent version, `cc-agent-<hash of its
sources>` (labelled `cloudcontainer.agent`), is filled once through the Engine's archive API
(a container that is created, never started, takes the file) and mounted read-only at
/opt/cloudcontainer in every sandbox. Gateways of one version share it; an old version's
volume stays until an operator removes it (`docker volume rm` refuses one a sandbox uses).

The engine must remap user namespaces (`dockerd --userns-remap=default`, or rootless Docker):
without it the container's uid 1000 is the host's uid 1000, a real user on most machines, and
a process escaping the container would be that user. `check()` refuses such an engine unless
the operator sets `docker_require_userns = false` (logged loudly).

The agent's secret never enters the container's configuration (`docker inspect` shows the
environment, and so would /proc/1/environ): the gateway attaches to the container's stdin
before starting it and writes the secret there; the agent reads one line and closes stdin.

The sandbox's traffic leaves through the network's bridge, where runtimes/egress.py's chains
(entered from DOCKER-USER and INPUT) refuse this host, private networks and the metadata
address.

With a disk quota the two volumes are binds (local driver, `o=bind`) of `home/` and
`workspace/` inside a sparse ext4 image `DATA_DIR/sandboxes/<id>/disk.img` (runtimes/disk.py)
that the gateway loop-mounts on the host at `DATA_DIR/sandboxes/<id>/disk` before the
container starts and unmounts when it stops. The local driver cannot mount an image itself
(`o=loop` is a mount(8) option, not a kernel one: dockerd 20.10 answers "invalid argument").
The directories exist only inside the image, so a volume can never bind the empty mount point.
Their owner is the host uid the container's uid 1000 maps to.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import re
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Concatenate, ParamSpec, TypeVar

import aiodocker
import aiohttp
import structlog
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError

from cloudcontainer.agentlink.client import AgentAddress
from cloudcontainer.runtimes import disk, seccomp
from cloudcontainer.runtimes.base import (
    AGENT_PATH,
    CA_BUNDLE_PATH,
    HOME,
    SANDBOX_UID,
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
from cloudcontainer.runtimes.egress import Firewall

__all__ = ["DockerRuntime"]

log = structlog.get_logger(__name__)

AGENT_PORT = 7070
LABEL = "cloudcontainer.sandbox"
# Which gateway made it (RuntimeOptions.gateway_id; the name predates user labels).
GATEWAY_LABEL = "cloudcontainer.owner"
USER_LABEL = "cloudcontainer.user"
PROJECT_LABEL = "cloudcontainer.project"
# On the agent's volume: the hash of the agent build it holds.
AGENT_LABEL = "cloudcontainer.agent"
AGENT_DIR = str(PurePosixPath(AGENT_PATH).parent)
AGENT_COMMAND = [
    "python3", "-S", AGENT_PATH, "--listen", f"tcp:0.0.0.0:{AGENT_PORT}", "--secret-file", "-",
]  # fmt: skip
# What Docker writes of a container's output to the host (the agent caps its own log too).
LOG_CONFIG = {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "1"}}
# dockerd --userns-remap keeps each mapping's data in <root>/<uid>.<gid>.
_REMAPPED_ROOT = re.compile(r"/(\d+)\.(\d+)$")


# aiodocker's status for "cannot connect to the engine" (no HTTP answer at all).
UNREACHABLE = 900
NOT_FOUND, CONFLICT = 404, 409

P = ParamSpec("P")
R = TypeVar("R")


def _engine_call(
    method: Callable[Concatenate[DockerRuntime, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[DockerRuntime, P], Coroutine[Any, Any, R]]:
    """A Docker Engine that does not answer, or answers with its own failure (a 5xx, as while
    it shuts down), is RuntimeUnavailable — a clear 503 and, for the supervisor, a reason to
    wait rather than a crashed sandbox."""

    @functools.wraps(method)
    async def call(runtime: DockerRuntime, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(runtime, *args, **kwargs)
        except DockerError as exc:
            if exc.status == UNREACHABLE or exc.status >= 500:  # e.g. "database not open"
                raise RuntimeUnavailable(f"the Docker Engine failed: {exc.message}") from exc
            raise
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise RuntimeUnavailable(
                f"the Docker Engine is not answering ({type(exc).__name__}: {exc})"
            ) from exc

    return call


@contextlib.contextmanager
def _unless(*statuses: int) -> Iterator[None]:
    """Swallow the engine's answers with these statuses (404: no such thing; 409: in the
    way): never "cannot connect", which must not pass for "no such container"."""
    try:
        yield
    except DockerError as exc:
        if exc.status not in statuses:
            raise


def _name(sandbox_id: str) -> str:
    return f"cc-{sandbox_id}"


def _volumes(sandbox_id: str) -> dict[str, str]:
    return {f"cc-{sandbox_id}-home": HOME, f"cc-{sandbox_id}-workspace": WORKSPACE}


class DockerRuntime:
    name = "docker"
    agent_delivery = AgentDelivery.COPY

    def __init__(self, options: RuntimeOptions) -> None:
        self.options = options
        self._docker: aiodocker.Docker | None = None
        self.root = options.data_dir / "sandboxes"
        self.disk_quotas = bool(options.extra.get("disk_quotas", False))
        self.gateway_id = options.gateway_id
        self.seccomp_profile = seccomp.docker_profile()
        # The host uid that owns the sandbox's files on a quota disk (set by check()).
        self.host_uid = SANDBOX_UID
        self._agent_volume: str | None = None  # filled in this process (see module docstring)
        self._agent_volume_lock = asyncio.Lock()

    def _labels(self, spec: SandboxSpec) -> dict[str, str]:
        labels = {LABEL: spec.sandbox_id, GATEWAY_LABEL: self.gateway_id}
        if spec.owner_id is not None:
            labels[USER_LABEL] = spec.owner_id
        if spec.project_id is not None:
            labels[PROJECT_LABEL] = spec.project_id
        return labels

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker()
        return self._docker

    # -- host checks ----------------------------------------------------------------------

    @_engine_call
    async def check(self) -> None:
        try:
            await self.docker.version()
        except (DockerError, OSError) as exc:
            raise RuntimeUnavailable(
                f"the docker runtime needs a running Docker Engine: {exc}"
            ) from exc
        try:
            await self.docker.images.inspect(self.options.image)
        except DockerError as exc:
            raise RuntimeUnavailable(
                f"the sandbox image {self.options.image} is missing: run "
                "`cloudcontainer image build`"
            ) from exc
        await self._check_userns()
        bridge = await self._ensure_network()
        await Firewall(self.options.egress).install_bridge(bridge)
        if self.disk_quotas:
            disk.check_tools()

    async def _check_userns(self) -> None:
        """Refuse an engine that runs the container's uid 1000 as the host's (see above)."""
        info = await self.docker.system.info()
        options = " ".join(info.get("SecurityOptions") or [])
        remapped = _REMAPPED_ROOT.search(info.get("DockerRootDir") or "")
        if remapped is not None:
            self.host_uid = int(remapped.group(1)) + SANDBOX_UID
        if "name=userns" in options or "name=rootless" in options:
            return
        if self.options.docker_require_userns:
            raise RuntimeUnavailable(
                "the Docker Engine does not remap user namespaces, so a sandbox's uid 1000 "
                "would be this host's uid 1000: start dockerd with --userns-remap=default (or "
                '"userns-remap": "default" in /etc/docker/daemon.json), use rootless Docker, '
                "or set docker_require_userns = false (not recommended)"
            )
        log.warning(
            "DOCKER SANDBOXES RUN AS HOST UID 1000: the engine does not remap user namespaces "
            "and docker_require_userns is off"
        )

    async def _ensure_network(self) -> str:
        """Make the sandboxes' network if missing; return its bridge's interface name."""
        try:
            network = await self.docker.networks.get(self.options.network)
        except DockerError as exc:
            if exc.status != NOT_FOUND:
                raise
            with _unless(CONFLICT):  # a concurrent gateway made it first
                await self.docker.networks.create(
                    {
                        "Name": self.options.network,
                        "Driver": "bridge",
                        "Labels": {LABEL: "network"},
                        "Options": {"com.docker.network.bridge.enable_icc": "false"},
                    }
                )
            network = await self.docker.networks.get(self.options.network)
        details = await network.show()
        if details.get("Driver") != "bridge":
            raise RuntimeUnavailable(
                f"the docker network {self.options.network!r} is not a bridge network: the "
                "sandboxes' egress rules need one"
            )
        options = details.get("Options") or {}
        return str(options.get("com.docker.network.bridge.name") or f"br-{details['Id'][:12]}")

    # -- lifecycle ------------------------------------------------------------------------

    def _dir(self, sandbox_id: str) -> Path:
        if not sandbox_id.replace("_", "").isalnum():
            raise ValueError(f"bad sandbox id {sandbox_id!r}")
        return self.root / sandbox_id

    @_engine_call
    async def create(self, spec: SandboxSpec) -> None:
        base = self._dir(spec.sandbox_id)
        image = base / "disk.img"
        # The quota is decided once: volumes made without one stay plain named volumes.
        if spec.disk_mb > 0 and not await self._has_volumes(spec.sandbox_id):
            base.mkdir(parents=True, exist_ok=True)
            await disk.make_image(image, spec.disk_mb, self.host_uid)
        for volume, target in _volumes(spec.sandbox_id).items():
            try:
                await self.docker.volumes.get(volume)
            except DockerError as exc:
                if exc.status != NOT_FOUND:
                    raise
                config: dict[str, Any] = {"Name": volume, "Labels": self._labels(spec)}
                if image.exists():
                    source = base / "disk" / ("home" if target == HOME else "workspace")
                    config["Driver"] = "local"
                    config["DriverOpts"] = {"type": "none", "o": "bind", "device": str(source)}
                await self.docker.volumes.create(config)

    def _config(self, spec: SandboxSpec, agent_volume: str) -> dict[str, Any]:
        env = sandbox_env(spec, self.options.ca_bundle is not None)
        binds = [f"{agent_volume}:{AGENT_DIR}:ro,nocopy"]
        if self.options.ca_bundle is not None:
            binds.append(f"{self.options.ca_bundle}:{CA_BUNDLE_PATH}:ro")
        binds += [f"{volume}:{target}" for volume, target in _volumes(spec.sandbox_id).items()]
        memory = spec.memory_mb * 1024 * 1024
        open_files = open_files_limit(self.options.open_files)
        return {
            "Image": self.options.image,
            "Cmd": AGENT_COMMAND,
            "Env": [f"{key}={value}" for key, value in env.items()],
            "User": f"{SANDBOX_UID}:{SANDBOX_UID}",
            "WorkingDir": WORKSPACE,
            "Hostname": "sandbox",
            "Labels": self._labels(spec),
            # The secret's way in (see the module docstring): read once, then closed.
            "OpenStdin": True,
            "StdinOnce": True,
            "AttachStdin": True,
            "HostConfig": {
                "Binds": binds,
                "CapDrop": ["ALL"],
                "SecurityOpt": ["no-new-privileges", f"seccomp={self.seccomp_profile}"],
                "ReadonlyRootfs": True,
                # exec: Docker's default for tmpfs is noexec, a local sandbox's /tmp is not (a
                # venv or a build in /tmp must run the same on both).
                "Tmpfs": {
                    "/tmp": "rw,exec,nosuid,nodev,size=1g",  # noqa: S108
                    "/run": "rw,nosuid,nodev,size=16m",
                },
                "Memory": memory,
                "MemorySwap": memory,
                "NanoCpus": int(spec.cpu * 1e9),
                "PidsLimit": spec.pids,
                "Ulimits": [
                    {"Name": "nofile", "Soft": open_files, "Hard": open_files},
                    {"Name": "core", "Soft": 0, "Hard": 0},
                ],
                "LogConfig": LOG_CONFIG,
                "NetworkMode": self.options.network,
                "Init": True,
            },
        }

    @_engine_call
    async def start(self, spec: SandboxSpec) -> SandboxInfo:
        info = await self.inspect(spec.sandbox_id)
        if info.state is SandboxState.RUNNING:
            return info
        await self._remove_container(spec.sandbox_id)
        await self.create(spec)
        image = self._dir(spec.sandbox_id) / "disk.img"
        if image.exists():
            # If another mount namespace still holds the last mount, mount(8) reuses its loop
            # device, so the kernel shares that filesystem: the image is never mounted twice.
            await disk.mount_image(image, image.parent / "disk")
        try:
            container = await self.docker.containers.create(
                self._config(spec, await self._deliver_agent()), name=_name(spec.sandbox_id)
            )
            await self._start_with_secret(container, spec.agent_secret)
        except DockerError as exc:
            if exc.status == UNREACHABLE:
                raise
            raise SandboxStartFailed(f"docker could not start the sandbox: {exc.message}") from exc
        info = await self.inspect(spec.sandbox_id)
        if info.state is not SandboxState.RUNNING or info.address is None:
            output = (await self.logs(spec.sandbox_id)).strip()
            raise SandboxStartFailed(f"the sandbox exited as it started: {output or 'no output'}")
        return info

    async def _deliver_agent(self) -> str:
        """The volume holding the gateway's agent build, checked (and filled if need be)
        once per process."""
        async with self._agent_volume_lock:
            if self._agent_volume is None:
                self._agent_volume = await self._fill_agent_volume()
            return self._agent_volume

    async def _fill_agent_volume(self) -> str:
        """Fill the version's volume unless it holds the agent already. Never rewritten: the
        Engine replaces a file by removing it first, and a sandbox of another gateway may be
        starting from it."""
        data = await asyncio.to_thread(self.options.agent_zipapp.read_bytes)
        build = _sources_digest(data)
        volume = f"cc-agent-{build}"
        with _unless(CONFLICT):  # made meanwhile by another gateway
            await self.docker.volumes.create({"Name": volume, "Labels": {AGENT_LABEL: build}})
        # Created, never started: the Engine mounts its volumes for the archive calls.
        carrier = await self.docker.containers.create(
            {"Image": self.options.image, "Labels": {AGENT_LABEL: build},
             "NetworkDisabled": True,
             # nocopy: the image's empty mount point for the agent is not copied in.
             "HostConfig": {"Binds": [f"{volume}:{AGENT_DIR}:nocopy"]}},
        )  # fmt: skip
        try:
            if not await _holds(carrier, AGENT_PATH, len(data)):
                await carrier.put_archive(AGENT_DIR, _tar(PurePosixPath(AGENT_PATH).name, data))
        finally:
            await carrier.delete(force=True)
        return volume

    async def _start_with_secret(self, container: DockerContainer, secret: str) -> None:
        """Start the container with the secret waiting on its stdin (attached before the
        start, so the agent's first read finds it), then close stdin."""
        stream = container.attach(stdin=True, stdout=False, stderr=False)
        async with stream:
            await container.start()
            await stream.write_in(secret.encode() + b"\n")

    async def _remove_container(self, sandbox_id: str) -> None:
        with _unless(NOT_FOUND, CONFLICT):  # gone, or its removal already under way
            container = await self.docker.containers.get(_name(sandbox_id))
            await container.delete(force=True)

    @_engine_call
    async def stop(self, sandbox_id: str) -> None:
        """Remove the container, then unmount its disk: a stopped sandbox holds no loop
        device."""
        await self._remove_container(sandbox_id)
        await disk.unmount(self._dir(sandbox_id) / "disk")

    @_engine_call
    async def destroy(self, sandbox_id: str) -> None:
        await self.stop(sandbox_id)
        for volume in _volumes(sandbox_id):
            with _unless(NOT_FOUND):
                await (await self.docker.volumes.get(volume)).delete()
        base = self._dir(sandbox_id)
        image = base / "disk.img"
        if image.exists() and not await disk.wait_released(image):
            # Another mount namespace made while it was mounted still holds a copy; the loop
            # device and the blocks go when that namespace does.
            log.warning("the disk image is still in use; removed anyway", sandbox_id=sandbox_id)
        if base.exists():
            await asyncio.to_thread(shutil.rmtree, base, True)

    @_engine_call
    async def inspect(self, sandbox_id: str) -> SandboxInfo:
        details = None
        with _unless(NOT_FOUND):
            details = await (await self.docker.containers.get(_name(sandbox_id))).show()
        if details is not None and details["State"]["Running"]:
            networks = details["NetworkSettings"]["Networks"]
            ip = (networks.get(self.options.network) or {}).get("IPAddress") or None
            address = AgentAddress(host=ip, port=AGENT_PORT) if ip else None
            return SandboxInfo(sandbox_id, SandboxState.RUNNING, address, ip=ip,
                               detail={"container": details["Id"][:12]})  # fmt: skip
        if (
            details is not None
            or await self._has_volumes(sandbox_id)
            or self._dir(sandbox_id).exists()  # a disk image, maybe still mounted
        ):
            return SandboxInfo(sandbox_id, SandboxState.STOPPED)
        return SandboxInfo(sandbox_id, SandboxState.MISSING)

    async def _has_volumes(self, sandbox_id: str) -> bool:
        for volume in _volumes(sandbox_id):
            with _unless(NOT_FOUND):
                await self.docker.volumes.get(volume)
                return True
        return False

    @_engine_call
    async def list(self) -> list[SandboxInfo]:
        ids: set[str] = set()
        mine = {"label": [LABEL, f"{GATEWAY_LABEL}={self.gateway_id}"]}
        for container in await self.docker.containers.list(all=True, filters=mine):
            ids.add(container["Labels"][LABEL])
        volumes = await self.docker.volumes.list(filters=mine)
        for volume in volumes.get("Volumes") or []:
            ids.add(volume["Labels"][LABEL])
        # Disk images too: their container and volumes may be gone (removed by hand, or a
        # crash between making the image and the volumes) while the disk is still mounted.
        if self.root.exists():
            ids.update(
                path.name
                for path in self.root.iterdir()
                if path.is_dir() and path.name.replace("_", "").isalnum()
            )
        return [await self.inspect(sandbox_id) for sandbox_id in sorted(ids)]

    @_engine_call
    async def logs(self, sandbox_id: str, limit: int = 2000) -> str:
        try:
            container = await self.docker.containers.get(_name(sandbox_id))
            lines = await container.log(stdout=True, stderr=True, tail=50)
            state = (await container.show())["State"]
        except DockerError as exc:
            if exc.status != NOT_FOUND:
                raise
            return ""
        text = "".join(lines)[-limit:]
        if not state["Running"] and state.get("ExitCode") == 127:
            return f"the image cannot run python3, which the agent needs (exit 127): {text}"
        return text

    async def aclose(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None


def _sources_digest(zipapp: bytes) -> str:
    """What identifies an agent version: its entries other than bytecode. Two builds of the
    same sources may differ in their .pyc bytes (marshal's output depends on reference
    counts), and an agent on another Python ignores them anyway."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(io.BytesIO(zipapp)) as archive:
        for entry in archive.infolist():
            if not entry.filename.endswith(".pyc"):
                digest.update(f"{entry.filename}\0{entry.CRC}\0".encode())
    return digest.hexdigest()[:16]


async def _holds(container: DockerContainer, path: str, size: int) -> bool:
    """Whether the container (its volumes included) has `path`, `size` bytes long (not the
    image's empty mount point, which an older Engine may have copied into the volume)."""
    try:
        archive = await container.get_archive(path)
    except DockerError as exc:
        if exc.status != NOT_FOUND:
            raise
        return False
    try:
        return archive.getmember(PurePosixPath(path).name).size == size
    except KeyError:
        return False
    finally:
        archive.close()


def _tar(name: str, data: bytes) -> bytes:
    """One file, readable by everyone, as the Engine's archive API takes it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        member = tarfile.TarInfo(name)
        member.size, member.mode = len(data), 0o644
        archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()
