"""Built root filesystems on disk: one directory per build, and which one is current.

    ROOTFS_DIR/
      builds/<id>/root/            the tree; `local` sandboxes bind it read-only as /
      builds/<id>/manifest.json    what is in it (written last: a build without it is unfinished)
      builds/.partial-*/           a build under way, or one that died; never used, pruned
      current -> builds/<id>       switched by rename, so a reader sees the old or the new one
      cache/                       the Debian base and npm tarballs, reused by the next build

A sandbox resolves `current` once, when it starts, and binds that build: a rebuild switches the
link and leaves running sandboxes on the tree they started with until their next start. Builds
are removed only by `prune`, and never while a sandbox uses them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudcontainer.images.errors import ImageBuildError

__all__ = ["MANIFEST_FORMAT", "Build", "RootfsStore", "StoreError"]

MANIFEST_FORMAT = 1
MANIFEST = "manifest.json"
_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")
_PARTIAL = ".partial-"


class StoreError(ImageBuildError):
    """A build directory that is not what it claims to be, or a store another build holds."""


@dataclass(frozen=True)
class Build:
    id: str
    path: Path
    manifest: Mapping[str, Any]

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def store(self) -> RootfsStore:
        return RootfsStore(self.path.parent.parent)


class RootfsStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.builds_dir = directory / "builds"
        self.cache_dir = directory / "cache"
        self._current = directory / "current"

    @property
    def id(self) -> str:
        """Which store a Docker image was loaded from (its label): stores sharing one Docker
        Engine each prune only their own images."""
        return hashlib.sha256(str(self.directory.resolve()).encode()).hexdigest()[:16]

    # -- reading ----------------------------------------------------------------------------

    def current(self) -> Build | None:
        """The build sandboxes start from, or None when none was finished yet."""
        try:
            target = os.readlink(self._current)
        except OSError:
            return None
        return self.get(Path(target).name)

    def get(self, build_id: str) -> Build | None:
        """A finished build by id; None when absent or unfinished. A manifest that does not
        match its directory is an error, not an absence: somebody changed the store by hand."""
        if not _ID.fullmatch(build_id):
            return None
        path = self.builds_dir / build_id
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path / MANIFEST} is unreadable: {exc}") from exc
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("id") != build_id:
            raise StoreError(f"{path / MANIFEST} does not describe build {build_id}")
        if not (path / "root").is_dir():
            raise StoreError(f"{path} has a manifest but no root/")
        return Build(build_id, path, manifest)

    def builds(self) -> list[Build]:
        """Every finished build, oldest first (ids start with their UTC build time)."""
        if not self.builds_dir.is_dir():
            return []
        found = (self.get(path.name) for path in sorted(self.builds_dir.iterdir()))
        return [build for build in found if build is not None]

    # -- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, *, wait: bool = True) -> Iterator[None]:
        """One build or prune at a time per store (several gateways may share one)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise StoreError(f"another build is under way in {self.directory}") from None
            yield

    def begin(self) -> Path:
        """A fresh scratch directory for a build, beside the finished ones (same filesystem,
        so finishing is a rename)."""
        self.builds_dir.mkdir(parents=True, exist_ok=True)
        path = self.builds_dir / f"{_PARTIAL}{secrets.token_hex(4)}"
        path.mkdir(mode=0o755)
        return path

    def commit(self, scratch: Path, manifest: Mapping[str, Any]) -> Build:
        """Write the manifest last, move the scratch build into place and make it current."""
        build_id = str(manifest["id"])
        if not _ID.fullmatch(build_id) or manifest.get("format") != MANIFEST_FORMAT:
            raise StoreError(f"not a build manifest: id {build_id!r}")
        partial = scratch / f".{MANIFEST}.partial"
        partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        partial.replace(scratch / MANIFEST)
        final = self.builds_dir / build_id
        scratch.rename(final)
        self.make_current(build_id)
        build = self.get(build_id)
        assert build is not None
        return build

    def make_current(self, build_id: str) -> None:
        if self.get(build_id) is None:
            raise StoreError(f"no finished build {build_id}")
        link = self.directory / f".current-{secrets.token_hex(4)}"
        link.symlink_to(Path("builds") / build_id)
        link.replace(self._current)

    def unused(self, in_use: Iterable[str]) -> list[Path]:
        """Every build that is neither current nor in `in_use`, and every unfinished one:
        what `prune` removes (under `lock`, so no build is under way)."""
        keep = set(in_use)
        if (current := self.current()) is not None:
            keep.add(current.id)
        if not self.builds_dir.is_dir():
            return []
        return [
            path
            for path in sorted(self.builds_dir.iterdir())
            if path.name.startswith(_PARTIAL)
            or (_ID.fullmatch(path.name) and path.name not in keep)
        ]
