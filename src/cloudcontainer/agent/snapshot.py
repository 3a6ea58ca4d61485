"""Workspace snapshots, agent side: a manifest of the workspace with content hashes, and the
two steps of a restore (prune what the snapshot lacks, lay down batches of entries).

The gateway stores blobs and manifests; the agent only walks, hashes and writes. Hashes are
cached by (path, inode, size, mtime_ns), so a second manifest of an unchanged workspace reads
no file contents. Excludes are globs in the agent's one dialect (agent/globs.py): `node_modules`
at any depth, `.next/cache` from the workspace root; a matching folder is skipped whole.
"""

from __future__ import annotations

import base64
import hashlib
import os
import posixpath
import stat
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from cloudcontainer.agent.fs import Files, _remove_tree, _temp_file, _unlink_quietly, open_regular
from cloudcontainer.agent.globs import GlobSet, glob_list
from cloudcontainer.agent.protocol import AgentError
from cloudcontainer.agent.server import Registry, Session, off_loop

if TYPE_CHECKING:  # for the checker only: no memory in the sandbox
    from cloudcontainer.agent.messages import Manifest, ManifestEntry

CHUNK = 1024 * 1024
TEMP_PREFIX = ".cc-write-"


class Excluder:
    """The snapshot's excludes, and the agent's own temporary files (never content)."""

    def __init__(self, patterns: Any, root: str) -> None:
        self.globs = GlobSet(glob_list(patterns, "exclude"), root)

    def excluded(self, relative: str, name: str) -> bool:
        """`relative` is from the workspace root, without a leading slash."""
        return name.startswith(TEMP_PREFIX) or self.globs.matches(relative)


class Snapshots:
    def __init__(self, files: Files) -> None:
        self.files = files
        self._hashes: Dict[str, Tuple[int, int, int, str]] = {}

    def _walk(self, exclude: Excluder) -> List[Tuple[str, str, os.stat_result]]:
        """(absolute, relative-without-slash, lstat) of every entry that is not excluded."""
        root = self.files.root
        found: List[Tuple[str, str, os.stat_result]] = []
        stack = [root]
        while stack:
            current = stack.pop()
            try:
                listing = sorted(os.scandir(current), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            for item in listing:
                relative = posixpath.relpath(item.path, root)
                if exclude.excluded(relative, item.name):
                    continue
                try:
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                found.append((item.path, relative, st))
                if stat.S_ISDIR(st.st_mode):
                    stack.append(item.path)
        return found

    def _sha256(self, absolute: str, st: os.stat_result) -> str:
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._hashes.get(absolute)
        if cached is not None and cached[:3] == key:
            return cached[3]
        digest = hashlib.sha256()
        with open_regular(absolute) as handle:
            while True:
                chunk = handle.read(CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
        sha = digest.hexdigest()
        self._hashes[absolute] = (key[0], key[1], key[2], sha)
        return sha

    def manifest(self, exclude: Any) -> Manifest:
        """Every entry below the workspace root: path, type, mode, size, sha256 (files),
        target (symlinks). Sockets and fifos are left out; unreadable files are named in
        `skipped`."""
        entries: List[ManifestEntry] = []
        skipped: List[str] = []
        seen = set()
        for absolute, relative, st in self._walk(Excluder(exclude, self.files.root)):
            path, mode = "/" + relative, stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                entries.append({"path": path, "mode": mode, "size": 0, "type": "directory"})
            elif stat.S_ISLNK(st.st_mode):
                entries.append({"path": path, "mode": mode, "size": 0, "type": "symlink",
                                "target": os.readlink(absolute)})  # fmt: skip
            elif stat.S_ISREG(st.st_mode):
                try:
                    sha256 = self._sha256(absolute, st)
                except OSError:
                    skipped.append(path)
                    continue
                entries.append({"path": path, "mode": mode, "size": st.st_size, "type": "file",
                                "sha256": sha256})  # fmt: skip
                seen.add(absolute)
        # Forget hashes of files that are gone, so the cache never outgrows the workspace.
        for gone in [path for path in self._hashes if path not in seen]:
            del self._hashes[gone]
        return {"entries": entries, "skipped": skipped}

    def prune(self, keep: Any, exclude: Any) -> int:
        """Remove every entry that `keep` ({path: type}) lacks or types differently; excluded
        paths stay. Returns how many were removed."""
        if not isinstance(keep, dict):
            raise AgentError("EINVAL", "keep must map paths to types")
        removed = 0
        excluder = Excluder(exclude, self.files.root)
        root = self.files.root
        stack = [root]
        while stack:
            current = stack.pop()
            for item in sorted(os.scandir(current), key=lambda e: e.name):
                relative = posixpath.relpath(item.path, root)
                if excluder.excluded(relative, item.name):
                    continue
                st = item.stat(follow_symlinks=False)
                kind = _kind(st.st_mode)
                if keep.get("/" + relative) != kind:
                    if kind == "directory":
                        _remove_tree(item.path)
                    else:
                        os.unlink(item.path)
                    removed += 1
                elif kind == "directory":
                    stack.append(item.path)
        return removed

    def apply(self, entries: Any) -> int:
        """Lay down entries ({path, type, mode, data|target}) in order; returns how many."""
        if not isinstance(entries, list):
            raise AgentError("EINVAL", "entries must be a list")
        for entry in entries:
            self._apply_one(entry)
        return len(entries)

    def _apply_one(self, entry: Any) -> None:
        if not isinstance(entry, dict):
            raise AgentError("EINVAL", "an entry must be an object")
        absolute = self.files.resolve(entry.get("path"))
        if absolute == self.files.root:
            raise AgentError("EINVAL", "the workspace root is not an entry")
        kind, mode = entry.get("type"), entry.get("mode", 0o644)
        if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
            raise AgentError("EINVAL", "mode must be an integer permission")
        current = _lstat(absolute)
        parent = posixpath.dirname(absolute)
        os.makedirs(parent, exist_ok=True)
        if kind == "directory":
            if current is not None and not stat.S_ISDIR(current.st_mode):
                os.unlink(absolute)
            os.makedirs(absolute, exist_ok=True)
            os.chmod(absolute, mode)
        elif kind == "file":
            try:
                content = base64.b64decode(entry.get("data", ""), validate=True)
            except (ValueError, TypeError) as exc:
                raise AgentError("EINVAL", "data is not valid base64") from exc
            if current is not None and stat.S_ISDIR(current.st_mode):
                _remove_tree(absolute)
            fd, tmp = _temp_file(parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(content)
                    os.fchmod(handle.fileno(), mode)
                os.rename(tmp, absolute)
            except BaseException:
                _unlink_quietly(tmp)
                raise
        elif kind == "symlink":
            target = entry.get("target")
            if not isinstance(target, str) or not target or "\x00" in target:
                raise AgentError("EINVAL", "a symlink needs a target")
            if current is not None:
                if stat.S_ISDIR(current.st_mode):
                    _remove_tree(absolute)
                else:
                    os.unlink(absolute)
            os.symlink(target, absolute)
        else:
            raise AgentError("EINVAL", "type must be file, directory or symlink")


def _lstat(path: str) -> Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "file" if stat.S_ISREG(mode) else "other"


def register(registry: Registry, snapshots: Snapshots) -> None:
    # Each walks or writes a whole workspace: on the file thread, never on the loop.
    async def manifest(session: Session, args: Dict[str, Any]) -> Manifest:
        return await off_loop(snapshots.manifest, args.get("exclude"))

    async def prune(session: Session, args: Dict[str, Any]) -> int:
        return await off_loop(snapshots.prune, args.get("keep"), args.get("exclude"))

    async def apply(session: Session, args: Dict[str, Any]) -> int:
        return await off_loop(snapshots.apply, args.get("entries"))

    registry.add("fs.manifest", manifest)
    registry.add("fs.prune", prune)
    registry.add("fs.apply", apply)
