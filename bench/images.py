"""The sandbox root filesystem: the one store every benchmark starts sandboxes from (built at
the bench's start), and IMG, what it costs: its size on disk and in Docker, and how long
`cloudcontainer image build` takes cold (an empty store) and warm (a store whose caches are
filled)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.server import ROOTFS_DIR
from bench.stats import Summary
from cloudcontainer.images.docker import DEFAULT_TAG
from cloudcontainer.images.store import RootfsStore

# The tag `image build --docker` loads (the `sandbox_image` setting's default): what the
# docker runtime of every benchmark's server starts, and the docker floor runs.
IMAGE = DEFAULT_TAG


def _cli_env(store: Path, data: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDCONTAINER_")}
    env["CLOUDCONTAINER_ROOTFS_DIR"] = str(store)
    if data is not None:
        env["CLOUDCONTAINER_DATA_DIR"] = str(data)
    return env


def _image_build(store: Path, *flags: str, data: Path | None = None) -> float:
    """Run `cloudcontainer image build` on `store`; its wall time (what a user waits)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cloudcontainer", "image", "build", *flags],
        env=_cli_env(store, data), capture_output=True, text=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"image build {' '.join(flags)} in {store} failed:\n{done.stdout}")
    return elapsed


def ensure_rootfs(docker: bool) -> dict[str, Any]:
    """Build the shared store once (nothing to do when its current build is up to date) and,
    with `docker`, load it as IMAGE. Every server of this run starts sandboxes from it."""
    seconds = _image_build(ROOTFS_DIR, "--docker" if docker else "--no-docker")
    build = RootfsStore(ROOTFS_DIR).current()
    assert build is not None
    return {
        "store": str(ROOTFS_DIR), "build_id": build.id, "seconds": seconds,
        "docker_tag": IMAGE if docker else None, "tools": dict(build.manifest["tools"]),
    }  # fmt: skip


def current_root() -> Path:
    """The tree a `local` sandbox binds read-only as /: the shared store's current build."""
    build = RootfsStore(ROOTFS_DIR).current()
    if build is None:
        raise RuntimeError(f"no current build in {ROOTFS_DIR}: ensure_rootfs() first")
    return build.root


def sizes(docker: bool) -> dict[str, Any]:
    """`du -sb` of the current build's root, what its manifest recorded, and the size Docker
    reports for the image loaded from it."""
    store = RootfsStore(ROOTFS_DIR)
    build = store.current()
    assert build is not None
    du = subprocess.run(["du", "-sb", build.root], capture_output=True, text=True, check=True)
    result: dict[str, Any] = {
        "build_id": build.id, "root_bytes": int(du.stdout.split()[0]),
        "manifest_size_bytes": build.manifest.get("size_bytes"),
        "debian_packages": len(build.manifest["debian"]["packages"]),
        "cache_bytes": _du(store.cache_dir),
    }  # fmt: skip
    if docker:
        size = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result.update(docker_tag=IMAGE, docker_bytes=int(size.stdout.strip()))
    return result


def _du(path: Path) -> int | None:
    if not path.exists():
        return None
    du = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True)
    return int(du.stdout.split()[0])


def build_times(cold: bool, warm_samples: int) -> dict[str, Any]:
    """`image build` (no Docker) in a fresh empty store, then `image build --force` on that
    store, its caches now filled, `warm_samples` times. Without `cold`, the warm store is a
    fresh one given a copy of the shared store's caches (the Debian base tarball and the npm
    tarballs): the same work as a warm rebuild, and the shared store is left alone."""
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cc-bench-img-") as tmp:
        # The build verifies its tree as uid 1000 (bubblewrap), which must reach it.
        os.chmod(tmp, 0o755)
        store, data = Path(tmp) / "rootfs", Path(tmp) / "data"
        if cold:
            seconds = _image_build(store, "--no-docker", data=data)
            result["cold"] = {"samples_s": [seconds], "summary": Summary.of([seconds]).__dict__}
        else:
            shutil.copytree(RootfsStore(ROOTFS_DIR).cache_dir, RootfsStore(store).cache_dir)
        times = [
            _image_build(store, "--no-docker", "--force", data=data) for _ in range(warm_samples)
        ]
        result["warm"] = {"samples_s": times, "summary": Summary.of(times).__dict__}
        built = RootfsStore(store).current()
        assert built is not None
        result["build_manifest"] = {
            "id": built.id, "size_bytes": built.manifest.get("size_bytes"),
            "node": {major: entry["node"]["version"]
                     for major, entry in built.manifest["node"]["majors"].items()},
        }  # fmt: skip
        result["store_bytes"] = _du(store)
    return result


__all__ = ["IMAGE", "ROOTFS_DIR", "build_times", "current_root", "ensure_rootfs", "sizes"]
