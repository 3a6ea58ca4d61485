"""The root filesystem as the docker runtime's image: one layer, loaded without a registry.

Containers keep the image they were created from, and the docker runtime creates a sandbox's
container anew at each start from the `sandbox_image` tag: retagging to a new build reaches
each sandbox at its next start and never disturbs a running one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiodocker
from aiodocker.exceptions import DockerError

from cloudcontainer import __version__
from cloudcontainer.images import engine, rootfs, toolchains
from cloudcontainer.images.archive import ImageArchive, pack_layer
from cloudcontainer.images.checks import WORKDIR
from cloudcontainer.images.errors import DockerUnavailable, ImageBuildError, VerificationFailed
from cloudcontainer.images.progress import Progress, SilentProgress
from cloudcontainer.images.store import Build, RootfsStore

__all__ = ["BUILD_LABEL", "DEFAULT_TAG", "ImageResult", "load_into_docker", "prune_images"]

DEFAULT_TAG = "cloudcontainer/sandbox:latest"
IMAGE_REPOSITORY = "cloudcontainer/sandbox"
BUILD_LABEL = "io.cloudcontainer.rootfs"
STORE_LABEL = "io.cloudcontainer.rootfs-store"
IMAGE_ENV = (f"PATH={toolchains.BASE_PATH}", "LANG=C.UTF-8")


@dataclass(frozen=True)
class ImageResult:
    tag: str
    image_id: str
    loaded: bool  # False: Docker had this build already
    seconds: float = 0.0


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
            STORE_LABEL: build.store.id,
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


async def prune_images(docker_url: str, store: RootfsStore) -> list[str]:
    """Remove the Docker images loaded from `store`'s builds other than its current one that no
    container uses; the tags removed. Nothing when no Docker Engine answers (a `local`-only
    host). Images of other stores (another gateway's, a test session's) are never touched."""
    current_build = store.current()
    current = current_build.id if current_build is not None else None
    removed: list[str] = []
    try:
        async with engine.connect(docker_url) as docker:
            images = await docker.images.list(filters={"label": [f"{STORE_LABEL}={store.id}"]})
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
