"""What the builder asks of the Docker Engine: is the tag there, load an archive, run a check.

Nothing here pulls: `containers.run` in aiodocker pulls a missing image, so containers are
created and started separately, and a missing image is an error.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError
from aiodocker.types import JSONObject

from cloudcontainer.images.archive import ImageArchive
from cloudcontainer.images.errors import DockerUnavailable, InvalidTag
from cloudcontainer.images.progress import Task

__all__ = ["connect", "find_image", "load", "normalize_tag", "remove_image", "run_in_image"]

# The reference grammar of github.com/distribution/reference, without digests (a build names a
# tag) and without IPv6 registry hosts.
_DOMAIN = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"(?:{_DOMAIN}(?:\.{_DOMAIN})*(?::[0-9]+)?/)?{_PATH}(?:/{_PATH})*(?::[\w][\w.-]{{0,127}})?"
)
_MAX_NAME = 255


def normalize_tag(tag: str) -> str:
    """`tag` as repository:tag (":latest" added when absent); InvalidTag when Docker would refuse
    it, so a typo fails before minutes of debootstrap rather than after."""
    if not _REFERENCE.fullmatch(tag):
        raise InvalidTag(
            f"invalid image tag {tag!r}: expected NAME[:TAG] such as cloudcontainer/sandbox:latest "
            "(lowercase name parts separated by '/', a tag of letters, digits, '_', '.' or '-')"
        )
    name, _, version = tag.rpartition(":") if ":" in tag.rsplit("/", 1)[-1] else (tag, "", "")
    if len(name) > _MAX_NAME:
        raise InvalidTag(f"invalid image tag: the name is longer than {_MAX_NAME} characters")
    return f"{name}:{version or 'latest'}"


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[aiodocker.Docker]:
    """A client for the engine at `url`, checked to answer before anything else is done."""
    try:
        docker = aiodocker.Docker(url=url)
    except ValueError as exc:
        raise DockerUnavailable(f"bad Docker address {url!r}: {exc}") from exc
    try:
        try:
            await docker.version()
        except DockerError as exc:
            raise DockerUnavailable(
                f"the Docker Engine at {url} does not answer ({exc.message}); start it "
                "(`systemctl start docker`, or `dockerd &` where there is no init)"
            ) from exc
        yield docker
    finally:
        await docker.close()


async def find_image(docker: aiodocker.Docker, tag: str) -> dict[str, Any] | None:
    try:
        return await docker.images.inspect(tag)
    except DockerError as exc:
        if exc.status == 404:
            return None
        raise DockerUnavailable(f"cannot inspect image {tag}: {exc.message}") from exc


async def load(docker: aiodocker.Docker, archive: ImageArchive, task: Task) -> None:
    """Stream the archive into `POST /images/load`; the engine tags it from the manifest."""

    async def body() -> AsyncIterator[bytes]:
        async for chunk in archive.chunks():
            yield chunk
            task.advance(len(chunk))

    try:
        await docker.images.import_image(data=body())
    except DockerError as exc:
        raise DockerUnavailable(f"the Docker Engine refused the image: {exc.message}") from exc


async def remove_image(docker: aiodocker.Docker, image_id: str) -> bool:
    """Delete an image that a rebuild untagged; False when containers or other tags keep it."""
    try:
        await docker.images.delete(image_id)
    except DockerError as exc:
        if exc.status in (404, 409):
            return False
        raise DockerUnavailable(f"cannot remove image {image_id}: {exc.message}") from exc
    return True


async def run_in_image(
    docker: aiodocker.Docker, image: str, argv: Sequence[str], *, user: str
) -> tuple[int, str]:
    """Run `argv` in a throwaway container without network; (exit status, stdout + stderr).

    DockerError escapes when the container cannot start (e.g. the program is not in the image).
    """
    config: JSONObject = {
        "Image": image,
        "Cmd": list(argv),
        "User": user,
        "NetworkDisabled": True,
        "HostConfig": {"NetworkMode": "none"},
    }
    container = await docker.containers.create(config)
    try:
        await container.start()
        status = await container.wait()
        output = await container.log(stdout=True, stderr=True)
    finally:
        await container.delete(force=True)
    return int(status["StatusCode"]), "".join(output)
