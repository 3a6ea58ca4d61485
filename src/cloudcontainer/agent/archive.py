"""Archive download and upload streams: the agent's side of `archive.*` (docs/agent-protocol.md).

The work itself happens in a separate python3 process (agent/archiver.py) so that zipfile,
tarfile and zlib never load into the agent. This module moves bytes between that worker and
the gateway with backpressure both ways:

- download: `archive.create` answers `{stream_id, name}`, then the worker's stdout goes out as
  ARCHIVE_DATA frames. At most WINDOW bytes are in flight: the gateway returns ARCHIVE_ACK
  credit as its HTTP client takes the bytes, so a slow client slows the worker down instead
  of filling the gateway's memory. ARCHIVE_END says how it ended.
- upload: `archive.extract` answers `{stream_id}`; ARCHIVE_DATA frames from the gateway are
  written to the worker's stdin in order with the session's requests (its file work waits
  while the worker catches up, for at most STALL_SECONDS; terminal input and tunnels do not);
  `archive.finish` ends the input and answers the worker's result.
  Its staging folder is removed however the upload ended.
"""

from __future__ import annotations

import asyncio
import json
import os
import posixpath
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from cloudcontainer.agent.fs import Files, _remove_tree
from cloudcontainer.agent.globs import glob_list
from cloudcontainer.agent.paths import covers
from cloudcontainer.agent.protocol import ARCHIVE_ACK, ARCHIVE_DATA, ARCHIVE_END, AgentError
from cloudcontainer.agent.server import Registry, Session

if TYPE_CHECKING:  # for the checker only: no memory in the sandbox
    from cloudcontainer.agent.messages import ArchiveOpened, DownloadOpened, Extracted

STAGING_PREFIX = ".cc-extract-"  # uploads being extracted; downloads leave them out
WINDOW = 1024 * 1024
READ_CHUNK = 64 * 1024
STALL_SECONDS = 10.0
# A stream nobody moves for this long (a gateway that vanished without archive.cancel) is
# aborted, so its worker does not wait on a pipe for the life of the sandbox.
IDLE_SECONDS = 120.0
FORMATS = ("zip", "tar.gz")
# The worker's interpreter finds the agent package where this one did (agent.pyz, or src/).
BOOTSTRAP = "import sys; sys.path.insert(0, sys.argv.pop(1)); " \
    "from cloudcontainer.agent.archiver import main; main()"  # fmt: skip


def _package_root() -> str:
    here = posixpath.dirname(posixpath.abspath(__file__))  # .../cloudcontainer/agent
    return posixpath.dirname(posixpath.dirname(here))


class Stream:
    def __init__(self, stream_id: int, session: Session, proc: asyncio.subprocess.Process,
                 staging: Optional[str] = None) -> None:  # fmt: skip
        self.stream_id = stream_id
        self.session = session
        self.proc = proc
        self.staging = staging
        self.sent = 0
        self.acked = 0
        self.credit = asyncio.Event()
        self.broken: Optional[AgentError] = None
        self.pump: Optional[asyncio.Future[None]] = None
        self.idle: Optional[asyncio.TimerHandle] = None


class Archives:
    def __init__(self, files: Files) -> None:
        self.files = files
        self.streams: Dict[int, Stream] = {}
        self._next_id = 1

    # -- helpers ------------------------------------------------------------------------

    def _inside(self, absolute: str) -> str:
        """`absolute` with symlinks resolved, refused unless it stays in the workspace."""
        real = os.path.realpath(absolute)
        if not covers(os.path.realpath(self.files.root), real):
            raise AgentError("EACCES", "EACCES: '%s' leads outside the workspace" % absolute)
        return real

    async def _spawn(self, command: str, args: Dict[str, Any], stdin: bool) -> Any:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-X", "utf8", "-c", BOOTSTRAP, _package_root(), command,
            json.dumps(args), cwd=self.files.root,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
        )  # fmt: skip

    def _add(self, session: Session, proc: Any, staging: Optional[str] = None) -> Stream:
        stream = Stream(self._next_id, session, proc, staging)
        self._next_id += 1
        self.streams[stream.stream_id] = stream
        self._touch(stream)
        return stream

    def _touch(self, stream: Stream) -> None:
        """Restart the stream's idle timer (at every chunk in or acknowledgement)."""
        if stream.idle is not None:
            stream.idle.cancel()
        loop = asyncio.get_event_loop()
        stream.idle = loop.call_later(IDLE_SECONDS, self._abort, stream)

    def get(self, session: Session, stream_id: Any) -> Stream:
        stream = self.streams.get(int(stream_id))
        if stream is None or stream.session is not session:
            raise AgentError("ENOENT", "no such archive stream: %s" % stream_id)
        return stream

    # -- download -----------------------------------------------------------------------

    async def create(self, session: Session, args: Dict[str, Any]) -> DownloadOpened:
        absolute = self.files.resolve(args.get("path", "/"))
        fmt, exclude = _format(args.get("format")), glob_list(args.get("exclude"), "exclude")
        folder = self._inside(absolute)
        if not os.path.isdir(folder):
            if os.path.exists(folder):
                raise NotADirectoryError(20, "Not a directory", absolute)
            raise FileNotFoundError(2, "No such file or directory", absolute)
        base = posixpath.relpath(folder, os.path.realpath(self.files.root))
        worker_args = {
            "folder": folder, "base": "" if base == "." else base, "workspace": self.files.root,
            "format": fmt, "exclude": exclude, "skip_prefix": STAGING_PREFIX,
        }  # fmt: skip
        proc = await self._spawn("create", worker_args, stdin=False)
        stream = self._add(session, proc)
        # Runs after the answer is queued, so the gateway knows the id before any data.
        stream.pump = asyncio.ensure_future(self._pump(stream))
        return {"stream_id": stream.stream_id, "name": posixpath.basename(absolute)}

    async def _pump(self, stream: Stream) -> None:
        session, proc = stream.session, stream.proc
        assert proc.stdout is not None
        try:
            while True:
                while stream.sent - stream.acked >= WINDOW and not session.closed:
                    stream.credit.clear()
                    await stream.credit.wait()
                if session.closed:
                    return
                data = await proc.stdout.read(READ_CHUNK)
                if not data:
                    break
                stream.sent += len(data)
                session.send_stream(ARCHIVE_DATA, stream.stream_id, data, droppable=False)
            error = await _worker_error(proc)
            end = {"ok": True} if error is None else {"ok": False, "error": error.to_dict()}
            session.send_stream(ARCHIVE_END, stream.stream_id, json.dumps(end).encode(),
                                droppable=False)  # fmt: skip
        finally:
            self._end(stream)

    def ack(self, session: Session, stream_id: int, payload: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and stream.session is session and len(payload) == 4:
            stream.acked += int.from_bytes(payload, "big")
            stream.credit.set()
            self._touch(stream)

    # -- upload -------------------------------------------------------------------------

    async def extract(self, session: Session, args: Dict[str, Any]) -> ArchiveOpened:
        absolute = self.files.resolve(args.get("path", "/"))
        fmt = _format(args.get("format"))
        dest = self._destination(absolute)
        staging = posixpath.join(self.files.root, STAGING_PREFIX + os.urandom(6).hex())
        os.mkdir(staging, 0o700)
        worker_args = {
            "format": fmt, "dest": dest, "staging": staging,
            "root": os.path.realpath(self.files.root),
            "max_bytes": int(args.get("max_bytes", 1 << 30)),
            "max_entries": int(args.get("max_entries", 100_000)),
        }  # fmt: skip
        try:
            proc = await self._spawn("extract", worker_args, stdin=True)
        except BaseException:
            _remove_tree(staging)
            raise
        proc.stdin.transport.set_write_buffer_limits(high=WINDOW)
        return {"stream_id": self._add(session, proc, staging).stream_id}

    def _destination(self, absolute: str) -> str:
        """Where to extract: the folder with its existing part's symlinks resolved, which must
        stay in the workspace; every existing part must be a folder."""
        missing: List[str] = []
        current = absolute
        while not os.path.lexists(current):
            missing.append(posixpath.basename(current))
            current = posixpath.dirname(current)
        real = self._inside(current)
        if not os.path.isdir(real):
            raise NotADirectoryError(20, "Not a directory", current)
        return posixpath.join(real, *reversed(missing))

    async def write(self, session: Session, stream_id: int, data: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.session is not session or stream.broken is not None:
            return
        stdin = stream.proc.stdin
        assert stdin is not None
        self._touch(stream)
        try:
            stdin.write(data)
            await asyncio.wait_for(stdin.drain(), STALL_SECONDS)
        except asyncio.TimeoutError:
            stream.broken = AgentError("ETIMEDOUT", "the archive worker stopped reading")
            stream.proc.kill()
        except (BrokenPipeError, ConnectionResetError):
            stream.broken = AgentError("EPIPE", "the archive worker ended early")

    async def finish(self, session: Session, stream_id: Any) -> Extracted:
        stream = self.get(session, stream_id)
        if stream.idle is not None:
            stream.idle.cancel()  # extracting may take long; the worker is not idle
        try:
            out, _ = await _communicate(stream.proc)
            error = await _worker_error(stream.proc)
            if error is not None:
                raise error
            if stream.broken is not None:
                raise stream.broken
            extracted: Extracted = json.loads(out)  # the worker's answer
            return extracted
        finally:
            self._end(stream)

    # -- ending -------------------------------------------------------------------------

    async def cancel(self, session: Session, stream_id: Any) -> None:
        """Stop the worker; an upload's staging folder is gone when this returns."""
        stream = self.streams.get(int(stream_id))
        if stream is not None and stream.session is session:
            self._abort(stream)
            if stream.staging is not None:
                await stream.proc.wait()
                self._end(stream)

    def _abort(self, stream: Stream) -> None:
        if stream.proc.returncode is None:
            stream.proc.kill()
        if stream.pump is not None:
            stream.pump.cancel()
        if stream.staging is not None:
            stream.pump = asyncio.ensure_future(self._reap(stream))  # kept: not collected early
        else:  # a download: whoever still reads it learns that it ended badly
            self._end(stream)
            error = {"code": "ECANCELED", "message": "the archive download was stopped"}
            end = json.dumps({"ok": False, "error": error}).encode()
            stream.session.send_stream(ARCHIVE_END, stream.stream_id, end, droppable=False)

    async def _reap(self, stream: Stream) -> None:
        await stream.proc.wait()
        self._end(stream)

    def _end(self, stream: Stream) -> None:
        self.streams.pop(stream.stream_id, None)
        if stream.idle is not None:
            stream.idle.cancel()
        if stream.proc.returncode is None:
            stream.proc.kill()
        if stream.staging is not None and os.path.lexists(stream.staging):
            _remove_tree(stream.staging)

    def close_session(self, session: Session) -> None:
        for stream in [s for s in self.streams.values() if s.session is session]:
            self._abort(stream)


async def _communicate(proc: Any) -> Any:
    """Close the worker's input and collect its output (the answer is small)."""
    if proc.stdin is not None and not proc.stdin.is_closing():
        proc.stdin.close()
    out, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
    await proc.wait()
    proc.collected_stderr = err
    return out, err


async def _worker_error(proc: Any) -> Optional[AgentError]:
    """The worker's failure as an AgentError (its last stderr line), or None on success."""
    err = getattr(proc, "collected_stderr", None)
    if err is None:
        err = await proc.stderr.read()
    code = await proc.wait()
    if code == 0:
        return None
    lines = err.decode("utf-8", "replace").strip().splitlines()
    try:
        detail = json.loads(lines[-1])
        return AgentError(str(detail["code"]), str(detail["message"]))
    except (IndexError, ValueError, KeyError, TypeError):
        return AgentError("EIO", "the archive worker failed (exit %d): %s" % (code, lines[-3:]))


def _format(value: Any) -> str:
    if value not in FORMATS:
        raise AgentError("EINVAL", "format must be zip or tar.gz")
    return str(value)


def register(registry: Registry, archives: Archives) -> None:
    async def create(session: Session, args: Dict[str, Any]) -> DownloadOpened:
        return await archives.create(session, args)

    async def extract(session: Session, args: Dict[str, Any]) -> ArchiveOpened:
        return await archives.extract(session, args)

    async def finish(session: Session, args: Dict[str, Any]) -> Extracted:
        return await archives.finish(session, args["stream_id"])

    async def cancel(session: Session, args: Dict[str, Any]) -> None:
        await archives.cancel(session, args["stream_id"])
        return None

    async def on_data(session: Session, channel: int, payload: bytes) -> None:
        await archives.write(session, channel, payload)

    def on_ack(session: Session, channel: int, payload: bytes) -> None:
        archives.ack(session, channel, payload)

    registry.add("archive.create", create)
    registry.add("archive.extract", extract)
    registry.add("archive.finish", finish, concurrent=True)
    registry.add("archive.cancel", cancel)
    registry.ordered_binary[ARCHIVE_DATA] = on_data  # all bytes in before archive.finish
    registry.binary[ARCHIVE_ACK] = on_ack
