"""A rootfs as a one-layer image archive, the format `docker load` reads.

aiodocker's `images.import_image` posts to `/images/load`, which takes a `docker save` archive
(manifest.json, an image config, layer tarballs), not the bare rootfs that `docker import` takes.
Writing the config ourselves is what `docker import --change` would do, without its string DSL:
ENV, WORKDIR and CMD are fields here, and labels record what went in.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tarfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cloudcontainer.images.process import TAR_FLAGS, stream_stdout
from cloudcontainer.images.progress import Task

__all__ = ["ImageArchive", "Layer", "pack_layer"]

_BLOCK = 512
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Layer:
    path: Path
    diff_id: str  # "sha256:<hex>" of the uncompressed tar
    size: int


async def pack_layer(rootfs: Path, dest: Path, task: Task) -> Layer:
    """tar the rootfs into `dest`, hashing it on the way (the image config names it by digest)."""
    hasher = hashlib.sha256()
    size = 0
    argv: list[str | Path] = ["tar", *TAR_FLAGS, "-C", rootfs, "-cf", "-", "."]
    with await asyncio.to_thread(dest.open, "wb") as out:
        async for chunk in stream_stdout(argv, chunk_size=_CHUNK):
            hasher.update(chunk)
            await asyncio.to_thread(out.write, chunk)
            size += len(chunk)
            task.advance(len(chunk))
    return Layer(dest, f"sha256:{hasher.hexdigest()}", size)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ImageArchive:
    """manifest.json + config + one layer; `chunks()` streams it without building it on disk."""

    layer: Layer
    tag: str
    architecture: str
    env: Sequence[str]
    workdir: str
    cmd: Sequence[str]
    labels: Mapping[str, str]
    created: str = field(default_factory=_now)

    def config(self) -> bytes:
        config = {
            "architecture": self.architecture,
            "os": "linux",
            "created": self.created,
            "config": {
                "Env": list(self.env),
                "WorkingDir": self.workdir,
                "Cmd": list(self.cmd),
                "Labels": dict(self.labels),
            },
            "rootfs": {"type": "layers", "diff_ids": [self.layer.diff_id]},
            "history": [{"created": self.created, "created_by": "cloudcontainer image build"}],
        }
        return json.dumps(config, sort_keys=True).encode()

    def size(self) -> int:
        """Bytes `chunks()` will yield."""
        small = sum(len(header) + _padded(len(body)) for header, body in self._small_members())
        layer_header = len(_header(self._layer_name, self.layer.size))
        return small + layer_header + _padded(self.layer.size) + 2 * _BLOCK

    async def chunks(self) -> AsyncIterator[bytes]:
        for header, body in self._small_members():
            yield header + body + _padding(len(body))
        yield _header(self._layer_name, self.layer.size)
        with self.layer.path.open("rb") as layer:
            while chunk := await asyncio.to_thread(layer.read, _CHUNK):
                yield chunk
        yield _padding(self.layer.size) + b"\0" * (2 * _BLOCK)

    @property
    def _layer_name(self) -> str:
        return f"{self.layer.diff_id.removeprefix('sha256:')}/layer.tar"

    def _small_members(self) -> list[tuple[bytes, bytes]]:
        config = self.config()
        config_name = f"{hashlib.sha256(config).hexdigest()}.json"
        manifest = [{"Config": config_name, "RepoTags": [self.tag], "Layers": [self._layer_name]}]
        members = [(config_name, config), ("manifest.json", json.dumps(manifest).encode())]
        return [(_header(name, len(body)), body) for name, body in members]


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def _padding(size: int) -> bytes:
    return b"\0" * (_padded(size) - size)
