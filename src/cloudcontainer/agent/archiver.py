"""The archive worker: a short-lived python3 process the agent starts per download or upload.

It runs apart from the agent so that zipfile, tarfile and zlib never load into the agent,
whose memory is paid once per sandbox (docs/agent-protocol.md, Memory). Stdlib only,
python >= 3.9. Invoked as `python3 -I -X utf8 -c <bootstrap> create|extract '<json args>'`:

- `create {folder, base, workspace, format, exclude, skip_prefix}` writes a zip or tar.gz of
  `folder` (`base` in the workspace `workspace`) to stdout, as it walks (never the whole
  archive in memory). Symlinks are stored as symlinks, never followed; sockets, fifos and
  devices are left out; `exclude` globs (agent/globs.py, from the workspace root) prune whole
  folders.
- `extract {format, dest, staging, root, max_bytes, max_entries}` reads an archive on stdin
  into the private folder `staging/tree` (a zip is spooled to `staging/upload.zip` first: its
  index is at the end), then, only once stdin reached EOF and every entry was safe, moves the
  entries into `dest`. Refused: absolute names and `..` (zip slip), more than `max_entries`
  entries or `max_bytes` uncompressed bytes (zip bombs), a corrupt archive, an entry whose
  type clashes with what `dest` already holds. Symlinks whose target stays inside `root` are
  created; other links, hard links, devices and fifos are skipped and reported. The agent
  removes `staging` afterwards whatever happened.

Success prints a JSON result on stdout; failure prints `{"code", "message"}` as the last line
of stderr and exits 1.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
import sys
from typing import IO, Any, Dict, Iterator, List, Optional, Tuple, Type

from cloudcontainer.agent.globs import GlobSet
from cloudcontainer.agent.paths import covers

CHUNK = 256 * 1024
MAX_LINK_TARGET = 4096
MAX_LISTED = 1000  # file names returned in the answer; `count` has them all


class Failure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- create ---------------------------------------------------------------------------------


class Source:
    """What a download archives: `folder` (symlinks resolved), which is `base` in the workspace
    (`src/lib`; `` for the root), less what `exclude` (agent/globs.py) matches there."""

    def __init__(self, args: Dict[str, Any]) -> None:
        self.folder = str(args["folder"])
        base = str(args["base"])
        self.base = base + "/" if base else ""
        self.exclude = GlobSet(args["exclude"], str(args["workspace"]))
        self.skip_prefix = str(args.get("skip_prefix") or "\x00")

    def skips(self, relative: str, name: str) -> bool:
        """Whether the entry at `relative` (from `folder`) is left out."""
        return name.startswith(self.skip_prefix) or self.exclude.matches(self.base + relative)


def walk(source: Source) -> Iterator[Tuple[str, str, os.stat_result]]:
    """(absolute, relative to the folder, lstat) of everything the source archives, parents
    first, by name; names starting with `skip_prefix` (uploads being extracted) are not
    content."""
    stack = [("", source.folder)]
    while stack:
        prefix, current = stack.pop()
        with os.scandir(current) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        children = []
        for entry in entries:
            relative = prefix + entry.name
            if source.skips(relative, entry.name):
                continue
            st = entry.stat(follow_symlinks=False)
            kind = stat.S_IFMT(st.st_mode)
            if kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
                continue
            yield entry.path, relative, st
            if kind == stat.S_IFDIR:
                children.append((relative + "/", entry.path))
        stack.extend(reversed(children))


def create_tar(out: IO[bytes], source: Source) -> None:
    import tarfile

    with tarfile.open(fileobj=out, mode="w|gz", format=tarfile.PAX_FORMAT) as tar:
        for absolute, relative, st in walk(source):
            info = tarfile.TarInfo(relative)
            info.mode = stat.S_IMODE(st.st_mode)
            info.mtime = int(st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(absolute)
                tar.addfile(info)
            else:
                info.size = st.st_size
                with open(absolute, "rb") as handle:
                    tar.addfile(info, handle)


def create_zip(out: IO[bytes], source: Source) -> None:
    import time
    import zipfile

    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for absolute, relative, st in walk(source):
            when = time.localtime(max(st.st_mtime, 315532800 + 86400))[:6]  # zip starts in 1980
            if stat.S_ISDIR(st.st_mode):
                info = zipfile.ZipInfo(relative + "/", when)
                info.external_attr = (st.st_mode & 0xFFFF) << 16 | 0x10
                archive.writestr(info, b"")
            elif stat.S_ISLNK(st.st_mode):
                # Info-ZIP's convention: the mode says symlink, the content is the target.
                info = zipfile.ZipInfo(relative, when)
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                archive.writestr(info, os.fsencode(os.readlink(absolute)))
            else:
                info = zipfile.ZipInfo(relative, when)
                info.external_attr = (st.st_mode & 0xFFFF) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                _add_file(archive, info, absolute, st.st_size > 1 << 31)


def _add_file(archive: Any, info: Any, absolute: str, big: bool) -> None:
    sink = archive.open(info, "w", force_zip64=big)  # streamed: no file is held in memory
    with open(absolute, "rb") as source, sink:
        _copy(source, sink)


def _copy(source: IO[bytes], sink: IO[bytes]) -> None:
    while True:
        chunk = source.read(CHUNK)
        if not chunk:
            return
        sink.write(chunk)


# -- extract --------------------------------------------------------------------------------


def safe_name(name: str) -> Optional[str]:
    """The entry's path relative to the destination, None for the root itself; absolute names
    and `..` are refused (zip slip)."""
    if name.startswith("/") or "\x00" in name:
        raise Failure("EUNSAFE", "archive entry has an absolute name: %r" % name)
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise Failure("EUNSAFE", "archive entry leaves its folder: %r" % name)
    return "/".join(parts) or None


class Extraction:
    """Entries go to `tree` (private, hidden); links are made last, files never through one."""

    def __init__(self, args: Dict[str, Any]) -> None:
        self.tree = posixpath.join(args["staging"], "tree")
        self.dest = args["dest"]
        self.root = args["root"]
        self.max_bytes = int(args["max_bytes"])
        self.max_entries = int(args["max_entries"])
        self.entries = 0
        self.total = 0
        self.links: List[Tuple[str, str]] = []
        self.skipped: List[Dict[str, str]] = []
        os.mkdir(self.tree, 0o700)

    def count(self, size: int) -> None:
        self.entries += 1
        self.total += size
        if self.entries > self.max_entries:
            raise Failure("ETOOBIG", "the archive has more than %d entries" % self.max_entries)
        if self.total > self.max_bytes:
            raise Failure("ETOOBIG", "the archive unpacks to more than %d bytes" % self.max_bytes)

    def directory(self, relative: str) -> None:
        path = posixpath.join(self.tree, relative)
        if not os.path.isdir(path):
            os.makedirs(path, 0o755)

    def file(self, relative: str, source: IO[bytes], mode: int, size: int) -> None:
        path = posixpath.join(self.tree, relative)
        os.makedirs(posixpath.dirname(path), 0o755, exist_ok=True)
        if os.path.lexists(path) and not os.path.isdir(path):
            os.unlink(path)  # a later entry of the same name wins, as tar does
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(path, flags, 0o600), "wb") as sink:
            written = 0
            while True:
                chunk = source.read(CHUNK)
                if not chunk:
                    break
                written += len(chunk)
                if written > size:  # more than declared: the size check would be a lie
                    raise Failure("ETOOBIG", "entry %r is larger than it declares" % relative)
                sink.write(chunk)
            os.fchmod(sink.fileno(), mode & 0o777)

    def link(self, relative: str, target: str) -> None:
        self.links.append((relative, target))

    def skip(self, relative: str, reason: str) -> None:
        self.skipped.append({"path": self.workdir(relative), "reason": reason})

    def workdir(self, relative: str) -> str:
        return "/" + posixpath.relpath(posixpath.join(self.dest, relative), self.root)

    def make_links(self) -> None:
        """Create the links whose target, seen from where the link will live, stays inside the
        workspace; a link is never written through (files were all written before)."""
        for relative, target in self.links:
            final = posixpath.join(self.dest, relative)
            seen = posixpath.normpath(posixpath.join(posixpath.dirname(final), target))
            if not target or "\x00" in target or len(target) > MAX_LINK_TARGET:
                self.skip(relative, "invalid link target")
            elif not covers(self.root, seen):
                self.skip(relative, "link points outside the workspace")
            else:
                path = posixpath.join(self.tree, relative)
                os.makedirs(posixpath.dirname(path), 0o755, exist_ok=True)
                if os.path.lexists(path):
                    self.skip(relative, "conflicts with another entry")
                else:
                    os.symlink(target, path)


def read_tar(stream: IO[bytes], job: Extraction) -> None:
    import gzip
    import tarfile

    # gzip apart from tar so that its end is checked too: tarfile alone ends quietly on a
    # truncated stream, which would extract part of an archive as if it were whole.
    with gzip.GzipFile(fileobj=stream, mode="rb") as unzipped:
        with tarfile.open(fileobj=unzipped, mode="r|") as tar:
            for member in tar:
                _tar_member(tar, member, job)
        while unzipped.read(CHUNK):  # to the end: the gzip trailer (CRC, length) is verified
            pass


def _tar_member(tar: Any, member: Any, job: Extraction) -> None:
    relative = safe_name(member.name)
    job.count(member.size if member.isfile() else 0)
    if relative is None:
        return
    if member.isdir():
        job.directory(relative)
    elif member.isfile():
        job.file(relative, tar.extractfile(member), member.mode, member.size)
    elif member.issym():
        job.link(relative, member.linkname)
    else:
        job.skip(relative, "hard links, devices and fifos are not extracted")


def read_zip(stream: IO[bytes], job: Extraction, spool: str) -> None:
    import zipfile

    with open(spool, "wb") as handle:
        _copy(stream, handle)
    with zipfile.ZipFile(spool) as archive:
        for info in archive.infolist():
            relative = safe_name(info.filename)
            job.count(info.file_size)
            if relative is None:
                continue
            mode = info.external_attr >> 16 if info.create_system == 3 else 0
            if info.is_dir():
                job.directory(relative)
            elif stat.S_ISLNK(mode):
                if info.file_size > MAX_LINK_TARGET:
                    raise Failure("EARCHIVE", "symlink %r has an oversized target" % relative)
                job.link(relative, os.fsdecode(archive.read(info)))
            elif stat.S_IFMT(mode) in (0, stat.S_IFREG):
                with archive.open(info) as source:
                    job.file(relative, source, stat.S_IMODE(mode) or 0o644, info.file_size)
            else:
                job.skip(relative, "hard links, devices and fifos are not extracted")


def plan(tree: str, dest: str) -> List[Tuple[str, str]]:
    """(staged, target) moves that put `tree` into `dest`, checked before anything moves: a
    staged folder merges into an existing real folder; a staged file replaces a file or link;
    any other clash refuses the whole archive."""
    moves: List[Tuple[str, str]] = []
    stack = [(tree, dest)]
    while stack:
        staged_dir, target_dir = stack.pop()
        for name in sorted(os.listdir(staged_dir)):
            staged, target = posixpath.join(staged_dir, name), posixpath.join(target_dir, name)
            try:
                existing = os.lstat(target)
            except FileNotFoundError:
                moves.append((staged, target))
                continue
            staged_is_dir = stat.S_ISDIR(os.lstat(staged).st_mode)
            if staged_is_dir and stat.S_ISDIR(existing.st_mode):
                stack.append((staged, target))
            elif not staged_is_dir and not stat.S_ISDIR(existing.st_mode):
                moves.append((staged, target))
            else:
                kind = "a folder" if stat.S_ISDIR(existing.st_mode) else "not a folder"
                raise Failure("EEXIST", "'%s' already exists and is %s" % (target, kind))
    return moves


def extract(args: Dict[str, Any]) -> Dict[str, Any]:
    import zlib

    job = Extraction(args)
    stream = sys.stdin.buffer
    corrupt: Tuple[Type[BaseException], ...] = (EOFError, zlib.error, ValueError)
    try:
        if args["format"] == "zip":
            import zipfile

            corrupt += (zipfile.BadZipFile, NotImplementedError, RuntimeError)
            read_zip(stream, job, posixpath.join(args["staging"], "upload.zip"))
        else:
            import gzip
            import tarfile

            corrupt += (tarfile.TarError, gzip.BadGzipFile)
            read_tar(stream, job)
    except corrupt as exc:
        raise Failure("EARCHIVE", "not a valid %s archive: %s" % (args["format"], exc)) from None
    while stream.read(CHUNK):  # commit only once the whole upload arrived (no abort is coming)
        pass
    job.make_links()
    moves = plan(job.tree, job.dest)
    os.makedirs(job.dest, exist_ok=True)
    for staged, target in moves:
        os.replace(staged, target)
    written = [job.workdir(relative) for relative in _files(job.tree, moves)]
    return {"count": len(written), "files": written[:MAX_LISTED],
            "skipped": job.skipped}  # fmt: skip


def _files(tree: str, moves: List[Tuple[str, str]]) -> List[str]:
    """Every file and link written (moved folders counted by their contents), sorted."""
    found = []
    for staged, target in moves:
        relative = posixpath.relpath(staged, tree)
        if os.path.isdir(target) and not os.path.islink(target):
            for parent, directories, names in os.walk(target):
                inner = posixpath.relpath(parent, target)
                links = [d for d in directories if os.path.islink(posixpath.join(parent, d))]
                for name in names + links:
                    found.append(posixpath.normpath(posixpath.join(relative, inner, name)))
        else:
            found.append(relative)
    return sorted(found)


def main() -> None:
    command, args = sys.argv[1], json.loads(sys.argv[2])
    try:
        if command == "create":
            out = sys.stdout.buffer
            create = create_zip if args["format"] == "zip" else create_tar
            create(out, Source(args))
            out.flush()
        else:
            sys.stdout.write(json.dumps(extract(args)))
            sys.stdout.flush()
    except Failure as exc:
        _fail(exc.code, exc.message)
    except OSError as exc:
        import errno

        _fail(errno.errorcode.get(exc.errno or 0, "EIO"), "%s: %s" % (exc.strerror, exc.filename))


def _fail(code: str, message: str) -> None:
    sys.stderr.write("\n" + json.dumps({"code": code, "message": message}) + "\n")
    sys.exit(1)
