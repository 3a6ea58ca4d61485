"""File operations inside the workspace, with WebContainer's path semantics.

Paths resolve as WORKSPACE + posixpath.normalize('/' + p): `..` is clamped at the root and
`x` means `/x` (bolt.diy writes `../../src/App.tsx` and relies on this). Absolute paths that
already start with the workspace are taken as they are. Writes are atomic: a temp file in the
same directory, then rename — a reader never sees half a file. They are not fsync'd (a save
would cost several times more): docs/api.md says what a save promises after a host crash.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import posixpath
import stat
from typing import TYPE_CHECKING, Any, BinaryIO, Dict, List, Optional

from cloudcontainer.agent.paths import workdir_rooted
from cloudcontainer.agent.protocol import READ_CHUNK_BYTES, AgentError
from cloudcontainer.agent.server import OFF_LOOP_BYTES, Registry, Session, off_loop

if TYPE_CHECKING:  # the replies' types, for the checker only: no memory in the sandbox
    from cloudcontainer.agent.messages import (
        Chunk,
        Digest,
        DiskUsage,
        Entry,
        EntryType,
        Kept,
        Moved,
        PartWritten,
        Replaced,
        Written,
    )

MAX_PATH = 4096
# Replaced content an answer carries at most per file (file history): a rename answers two,
# and both fit the link's message limit (protocol.MAX_MESSAGE_BYTES) with room to spare.
MAX_KEEP_PREVIOUS = 4 * 1024 * 1024


MAX_UPLOADS = 16  # unfinished multi-part writes per connection


class Upload:
    """The parts of one large fs.write so far, in a private temp file beside its target."""

    def __init__(self, absolute: str, parent: str) -> None:
        fd, self.tmp = _temp_file(parent)
        self.handle = os.fdopen(fd, "wb")
        self.absolute = absolute
        self.hasher = hashlib.sha256()
        self.size = 0

    def add(self, content: bytes) -> None:
        self.handle.write(content)
        self.hasher.update(content)
        self.size += len(content)

    def discard(self) -> None:
        """Close and remove the temp file (gone already once it was renamed into place)."""
        with contextlib.suppress(OSError):  # a flush failing (disk full) changes nothing
            self.handle.close()
        _unlink_quietly(self.tmp)


class Files:
    def __init__(self, workspace: str) -> None:
        self.root = posixpath.normpath(workspace)

    def resolve(self, path: Any) -> str:
        """The absolute path a client's `path` names, in the workspace (agent/paths.py)."""
        if not isinstance(path, str):
            raise AgentError("EINVAL", "path must be a string")
        if "\x00" in path:
            raise AgentError("EINVAL", "path contains a NUL byte")
        if len(path) > MAX_PATH:
            raise AgentError("ENAMETOOLONG", "ENAMETOOLONG: name too long")
        rooted = workdir_rooted(path, self.root)
        return self.root if rooted == "/" else self.root + rooted

    def entry(self, absolute: str, st: os.stat_result) -> Entry:
        return {
            "path": absolute,
            "name": posixpath.basename(absolute),
            "type": _type(st.st_mode),
            "size": st.st_size,
            "mtime": st.st_mtime,
            "mode": stat.S_IMODE(st.st_mode),
            "ino": st.st_ino,
        }

    # -- operations -----------------------------------------------------------------------

    def stat(self, path: Any) -> Entry:
        absolute = self.resolve(path)
        return self.entry(absolute, os.lstat(absolute))

    def read(self, path: Any, offset: Any = 0, length: Any = None) -> Chunk:
        """The file's bytes; with `length`, at most that many (capped at READ_CHUNK_BYTES)
        from `offset`: larger files travel in chunks, each answer under the message limit.
        `sha256` comes only with an answer that holds the whole file; `eof` says whether the
        answer reaches the end."""
        absolute = self.resolve(path)
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise AgentError("EINVAL", "offset must be a non-negative integer")
        if length is not None and (not isinstance(length, int) or isinstance(length, bool)
                                   or length < 1):  # fmt: skip
            raise AgentError("EINVAL", "length must be a positive integer")
        with open_regular(absolute) as handle:
            st = os.fstat(handle.fileno())
            if offset:
                handle.seek(offset)
            if length is None:
                data, eof = handle.read(), True
            else:
                length = min(length, READ_CHUNK_BYTES)
                data = handle.read(length)
                eof = len(data) < length or not handle.read(1)
        digest: Digest = {"sha256": hashlib.sha256(data).hexdigest()} if eof and not offset else {}
        return {"data": base64.b64encode(data).decode("ascii"), "eof": eof,
                **self.entry(absolute, st), **digest}  # fmt: skip

    def write(self, path: Any, data: Any, mkdirs: bool = False,
              expect_sha256: Optional[str] = None, keep_previous: int = 0,
              staged: Optional[Upload] = None) -> Written:  # fmt: skip
        """Replace the file's bytes. With `expect_sha256` ("" for: must not exist), refuse
        with ETAGMISMATCH unless the current content has that hash: a compare-and-swap, atomic
        because the agent runs one file operation at a time. With `keep_previous` (a size
        cap), the answer carries the replaced content as `previous` (file history). With
        `staged`, `data` is the last part of an upload (`fs.write.part`): it is consumed."""
        try:
            return self._write(path, data, mkdirs, expect_sha256, keep_previous, staged)
        finally:
            if staged is not None:
                staged.discard()  # renamed into place, or dropped on a failure

    def _write(self, path: Any, data: Any, mkdirs: bool, expect_sha256: Optional[str],
               keep_previous: int, staged: Optional[Upload]) -> Written:  # fmt: skip
        absolute = self.resolve(path)
        if absolute == self.root:
            raise IsADirectoryError(21, "Is a directory", absolute)
        content = _decode(data)
        if staged is not None and staged.absolute != absolute:
            raise AgentError("EINVAL", "the upload was started for another path")
        if expect_sha256 is not None and _sha256_of(absolute) != expect_sha256:
            raise AgentError("ETAGMISMATCH", "the file changed since it was read: '%s'" % absolute)
        previous = _previous(absolute, keep_previous)
        digest = None
        if staged is not None:
            staged.add(content)
            digest = staged.hasher.hexdigest()
        if previous is not None and _same_bytes(previous, content, staged, digest):
            previous = None  # saved again unchanged (editors autosave): no version to keep
        parent = posixpath.dirname(absolute)
        if mkdirs:
            os.makedirs(parent, exist_ok=True)
        if os.path.isdir(absolute):
            raise IsADirectoryError(21, "Is a directory", absolute)
        if not os.path.isdir(parent):
            raise FileNotFoundError(2, "No such file or directory", absolute)
        mode = stat.S_IMODE(os.stat(absolute).st_mode) if os.path.exists(absolute) else 0o644
        if staged is not None:
            staged.handle.flush()
            os.fchmod(staged.handle.fileno(), mode)
            staged.handle.close()
            os.rename(staged.tmp, absolute)
        else:
            fd, tmp = _temp_file(parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(content)
                    handle.flush()
                    os.fchmod(handle.fileno(), mode)
                os.rename(tmp, absolute)
            except BaseException:
                _unlink_quietly(tmp)
                raise
        return {
            "sha256": digest or hashlib.sha256(content).hexdigest(),
            **self.entry(absolute, os.stat(absolute)), **kept(previous),
        }  # fmt: skip

    def write_part(self, uploads: Dict[str, Upload], upload_id: str, path: Any, data: Any,
                   mkdirs: bool) -> PartWritten:  # fmt: skip
        """A part of a file too large for one message: appended to a temp file beside the
        target, which the upload's last part (`fs.write` with `upload`) renames into place."""
        absolute = self.resolve(path)
        content = _decode(data)
        upload = uploads.get(upload_id)
        if upload is None:
            if len(uploads) >= MAX_UPLOADS:
                raise AgentError("EMFILE", "EMFILE: too many unfinished uploads")
            if absolute == self.root:
                raise IsADirectoryError(21, "Is a directory", absolute)
            parent = posixpath.dirname(absolute)
            if mkdirs:
                os.makedirs(parent, exist_ok=True)
            if not os.path.isdir(parent):
                raise FileNotFoundError(2, "No such file or directory", absolute)
            upload = uploads[upload_id] = Upload(absolute, parent)
        elif upload.absolute != absolute:
            raise AgentError("EINVAL", "the upload was started for another path")
        try:
            upload.add(content)
        except BaseException:
            del uploads[upload_id]
            upload.discard()
            raise
        return {"size": upload.size}

    def statfs(self) -> DiskUsage:
        """The workspace filesystem's size in bytes: with a disk quota, the quota's own
        filesystem (which also holds /home); without, the host's."""
        st = os.statvfs(self.root)
        return {
            "total": st.f_blocks * st.f_frsize,
            "used": (st.f_blocks - st.f_bfree) * st.f_frsize,
            "free": st.f_bavail * st.f_frsize,
        }

    def listdir(self, path: Any, recursive: bool = False) -> List[Entry]:
        absolute = self.resolve(path)
        if not os.path.isdir(absolute):
            if os.path.exists(absolute):
                raise NotADirectoryError(20, "Not a directory", absolute)
            raise FileNotFoundError(2, "No such file or directory", absolute)
        entries: List[Entry] = []
        stack = [absolute]
        while stack:
            current = stack.pop()
            with os.scandir(current) as listing:
                for item in sorted(listing, key=lambda e: e.name):
                    st = item.stat(follow_symlinks=False)
                    entries.append(self.entry(item.path, st))
                    if recursive and stat.S_ISDIR(st.st_mode):
                        stack.append(item.path)
        return entries

    def mkdir(self, path: Any, recursive: bool = False) -> Entry:
        absolute = self.resolve(path)
        if recursive:
            os.makedirs(absolute, exist_ok=True)
        else:
            os.mkdir(absolute)
        return self.entry(absolute, os.stat(absolute))

    def remove(self, path: Any, recursive: bool = False, force: bool = False,
               keep_previous: int = 0) -> Optional[Replaced]:  # fmt: skip
        """Delete; with `keep_previous`, answer {"previous": ...} for a removed regular file."""
        absolute = self.resolve(path)
        st = self.removable(absolute, recursive, force)
        if st is None:
            return None
        if stat.S_ISDIR(st.st_mode):
            _remove_tree(absolute)
            return None
        previous = _previous(absolute, keep_previous)
        os.unlink(absolute)
        return None if previous is None else {"previous": previous}

    def removable(self, absolute: str, recursive: bool, force: bool) -> Optional[os.stat_result]:
        """What `rm` may delete at `absolute` (its lstat), None when it is missing and `force`
        says that is fine; refuses the workspace root and a folder without `recursive`."""
        if absolute == self.root:
            raise AgentError("EPERM", "EPERM: operation not permitted, rm '%s'" % absolute)
        try:
            st = os.lstat(absolute)
        except FileNotFoundError:
            if force:
                return None
            raise
        if stat.S_ISDIR(st.st_mode) and not recursive:
            raise IsADirectoryError(21, "Is a directory", absolute)
        return st

    def rename(self, source: Any, target: Any, keep_previous: int = 0) -> Moved:
        """Move; with `keep_previous`, the answer carries the moved file's content as
        `previous` and the content of a file it replaced as `replaced`."""
        old, new = self.resolve(source), self.resolve(target)
        if old == self.root or new == self.root:
            raise AgentError("EPERM", "EPERM: operation not permitted, rename '%s'" % old)
        if new.startswith(old + "/"):
            raise AgentError("EINVAL", "EINVAL: cannot move '%s' into itself" % old)
        previous = _previous(old, keep_previous) if old != new else None
        replaced = _previous(new, keep_previous) if old != new else None
        os.rename(old, new)
        return {**self.entry(new, os.lstat(new)), **kept(previous, replaced)}


def kept(previous: Optional[Kept], replaced: Optional[Kept] = None) -> Replaced:
    """The content a change replaced, for an answer (file history): only what there is."""
    answer: Replaced = {}
    if previous is not None:
        answer["previous"] = previous
    if replaced is not None:
        answer["replaced"] = replaced
    return answer


def _type(mode: int) -> EntryType:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


# tempfile and shutil would pull bz2, lzma and random into every agent (~1 MiB of RSS each
# sandbox); these two helpers are all the agent needs of them.


def _temp_file(directory: str) -> tuple[int, str]:
    """A new, empty, private file in `directory` (for write-then-rename)."""
    while True:
        path = posixpath.join(directory, ".cc-write-" + os.urandom(6).hex())
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path
        except FileExistsError:
            continue


def _remove_tree(path: str) -> None:
    """Remove a directory and everything below it, without following symlinks."""
    for root, directories, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(posixpath.join(root, name))
        for name in directories:
            child = posixpath.join(root, name)
            if os.path.islink(child):
                os.unlink(child)
            else:
                os.rmdir(child)
    os.rmdir(path)


def open_regular(absolute: str) -> BinaryIO:
    """Open a file to read it without ever blocking on the open: the sandbox can put a FIFO
    (whose open waits for a writer, forever) or a link to a device where a file was, even
    between a check and the open. Anything but a regular file is refused: a folder with
    EISDIR, the rest with EINVAL."""
    fd = os.open(absolute, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", absolute)
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "Not a regular file", absolute)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _sha256_of(path: str) -> str:
    """The file's SHA-256, or "" when there is no file."""
    try:
        with open_regular(path) as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except FileNotFoundError:
        return ""


def _previous(path: str, limit: Any) -> Optional[Kept]:
    """The content of the regular file at `path` for file history: {"path", "data", "size"} when it
    is at most `limit` bytes, without "data" when larger, None when there is none (or
    `limit` is 0: not asked)."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        return None
    limit = min(limit, MAX_KEEP_PREVIOUS)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    if st.st_size > limit:
        return {"path": path, "size": st.st_size}
    with open_regular(path) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        return {"path": path, "size": len(data)}
    return {"path": path, "data": base64.b64encode(data).decode("ascii"), "size": len(data)}


def _same_bytes(previous: Kept, content: bytes, staged: Optional[Upload],
                digest: Optional[str]) -> bool:  # fmt: skip
    size = len(content) if staged is None else staged.size
    if previous.get("size") != size or "data" not in previous:
        return False
    old = base64.b64decode(previous["data"])
    return old == content if staged is None else hashlib.sha256(old).hexdigest() == digest


def _decode(data: Any) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (ValueError, TypeError) as exc:
        raise AgentError("EINVAL", "data is not valid base64") from exc


def _discard_all(uploads: Dict[str, Upload]) -> None:
    """A connection that ended mid-upload leaves no temp file behind."""
    for upload in uploads.values():
        upload.discard()
    uploads.clear()


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def register(registry: Registry, files: Files) -> None:
    async def stat_(session: Session, args: Dict[str, Any]) -> Entry:
        return files.stat(args["path"])

    async def read(session: Session, args: Dict[str, Any]) -> Chunk:
        path, offset, length = args["path"], args.get("offset", 0), args.get("length")
        if _large_read(files, path, length):
            return await off_loop(files.read, path, offset, length)
        return files.read(path, offset, length)

    def uploads_of(session: Session) -> Dict[str, Upload]:
        uploads: Optional[Dict[str, Upload]] = session.state.get("fs.uploads")
        if uploads is None:
            uploads = session.state["fs.uploads"] = {}
            session.on_close.append(lambda: _discard_all(uploads))
        return uploads

    async def write(session: Session, args: Dict[str, Any]) -> Written:
        staged = None
        if args.get("upload") is not None:
            staged = uploads_of(session).pop(str(args["upload"]), None)
            if staged is None:
                raise AgentError("EINVAL", "no such upload: %s" % (args["upload"],))
        call = (
            files.write, args["path"], args["data"], bool(args.get("mkdirs", False)),
            args.get("expect_sha256"), args.get("keep_previous", 0), staged,
        )  # fmt: skip
        if staged is not None or _large(args["data"]):
            return await off_loop(*call)
        return call[0](*call[1:])

    async def write_part(session: Session, args: Dict[str, Any]) -> PartWritten:
        call = (files.write_part, uploads_of(session), str(args["upload"]), args["path"],
                args["data"], bool(args.get("mkdirs", False)))  # fmt: skip
        if _large(args["data"]):
            return await off_loop(*call)
        return call[0](*call[1:])

    async def write_abort(session: Session, args: Dict[str, Any]) -> None:
        upload = uploads_of(session).pop(str(args["upload"]), None)
        if upload is not None:
            upload.discard()
        return None

    async def listdir(session: Session, args: Dict[str, Any]) -> List[Entry]:
        path, recursive = args.get("path", "/"), bool(args.get("recursive", False))
        if recursive:  # a whole tree: node_modules is 100k entries
            return await off_loop(files.listdir, path, recursive)
        return files.listdir(path, recursive)

    async def mkdir(session: Session, args: Dict[str, Any]) -> Entry:
        return files.mkdir(args["path"], bool(args.get("recursive", False)))

    async def remove(session: Session, args: Dict[str, Any]) -> Optional[Replaced]:
        call = (
            files.remove, args["path"], bool(args.get("recursive", False)),
            bool(args.get("force", False)), args.get("keep_previous", 0),
        )  # fmt: skip
        if call[2]:  # a whole tree
            return await off_loop(*call)
        return call[0](*call[1:])

    async def rename(session: Session, args: Dict[str, Any]) -> Moved:
        return files.rename(args["source"], args["target"], args.get("keep_previous", 0))

    async def statfs(session: Session, args: Dict[str, Any]) -> DiskUsage:
        return files.statfs()

    for name, handler in (
        ("fs.stat", stat_), ("fs.read", read), ("fs.write", write), ("fs.list", listdir),
        ("fs.mkdir", mkdir), ("fs.remove", remove), ("fs.rename", rename),
        ("fs.statfs", statfs), ("fs.write.part", write_part), ("fs.write.abort", write_abort),
    ):  # fmt: skip
        registry.add(name, handler)


def _large(data: Any) -> bool:
    return isinstance(data, str) and len(data) > OFF_LOOP_BYTES


def _large_read(files: Files, path: Any, length: Any) -> bool:
    """Whether reading would move more than OFF_LOOP_BYTES (what the answer asks for, else
    the file's size); a path that cannot be stat'ed is read on the loop, to fail there."""
    if isinstance(length, int) and not isinstance(length, bool) and length <= OFF_LOOP_BYTES:
        return False
    try:
        return os.stat(files.resolve(path)).st_size > OFF_LOOP_BYTES
    except (OSError, AgentError):
        return False
