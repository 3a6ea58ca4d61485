"""Text search in the workspace with ripgrep (`internal.textSearch` in WebContainer).

`search.text` runs `rg --json` inside the sandbox (cwd = workspace, symlinks never followed,
the query after `-e` so it can never become a flag) and turns its JSON lines into
WebContainer's `TextSearchMatch` shape: one match per matching line, with `ranges` (1-based
line numbers, 0-based columns counted in UTF-16 code units as JavaScript strings index them)
and a `preview` of the line whose `matches` index into the preview text. Each file's matches
go to the calling session as a `search.file` event while rg still runs; the answer carries
the totals. rg is stopped once `max_results` ranges were found (and one more was seen:
`truncated`), on `search.cancel`, when the session closes, or after `timeout_seconds`.
Python >= 3.9, stdlib only; subprocess handling comes from asyncio, which the agent has.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import posixpath
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from cloudcontainer.agent.fs import Files
from cloudcontainer.agent.globs import glob_list, ripgrep_globs
from cloudcontainer.agent.paths import covers
from cloudcontainer.agent.protocol import AgentError
from cloudcontainer.agent.server import Registry, Session

if TYPE_CHECKING:  # for the checker only: no memory in the sandbox
    from cloudcontainer.agent.messages import SearchTotals

PREVIEW_CHARS = 250  # a preview longer than this is cut around its first match
PREVIEW_BEFORE = 40  # characters kept before the first match in a cut preview
QUEUE_PAUSE_BYTES = 1024 * 1024  # stop reading rg while the session has this much queued


def rg_command(query: str, args: Dict[str, Any], target: str, root: str) -> List[str]:
    """The rg argv for one search, run in `root`; every user string is an option's value,
    never a flag. Globs keep the agent's one meaning (agent/globs.py)."""
    command = ["rg", "--json", "--no-config", "--no-messages"]
    command.append("--case-sensitive" if args.get("case_sensitive") else "--ignore-case")
    if not args.get("regex"):
        command.append("--fixed-strings")
    if args.get("whole_word"):
        command.append("--word-regexp")
    if args.get("gitignore", True):
        command.append("--no-require-git")  # .gitignore applies without a .git folder (bolt)
    else:
        command.append("--no-ignore")
    # rg lets the last matching glob decide: excludes win over includes.
    command += ripgrep_globs(glob_list(args.get("include"), "include"), root, exclude=False)
    command += ripgrep_globs(glob_list(args.get("exclude"), "exclude"), root, exclude=True)
    command += ["-e", query, "--", target]
    return command


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units: JavaScript's string index (an emoji counts 2)."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def _line_text(lines: Dict[str, Any]) -> bytes:
    if "text" in lines:
        return str(lines["text"]).encode("utf-8", "surrogatepass")
    return base64.b64decode(str(lines.get("bytes", "")))  # not valid UTF-8: rg sends base64


def convert_line(data: Dict[str, Any], budget: int) -> Tuple[Dict[str, Any], int]:
    """One rg `match` message → a TextSearchMatch with at most `budget` ranges; returns it
    with the number of ranges rg reported (so the caller can tell whether more existed)."""
    raw = _line_text(data["lines"]).rstrip(b"\r\n")
    number = data["line_number"]
    spans = []
    for sub in data["submatches"][:budget]:
        start = utf16_len(raw[: sub["start"]].decode("utf-8", "replace"))
        end = start + utf16_len(raw[sub["start"] : sub["end"]].decode("utf-8", "replace"))
        spans.append((start, end))
    text = raw.decode("utf-8", "replace")
    preview, shift = _preview(text, spans[0][0] if spans else 0)
    ranges = [_range(number, start, end) for start, end in spans]
    limit = utf16_len(preview)
    preview_matches = [
        _range(number, max(0, start - shift), min(limit, end - shift))
        for start, end in spans
        if start - shift < limit
    ]
    match = {"preview": {"text": preview, "matches": preview_matches}, "ranges": ranges}
    return match, len(data["submatches"])


def _range(line: int, start: int, end: int) -> Dict[str, int]:
    return {"startLineNumber": line, "startColumn": start, "endLineNumber": line,
            "endColumn": end}  # fmt: skip


def _preview(text: str, first: int) -> Tuple[str, int]:
    """The line, or a PREVIEW_CHARS window of it starting a little before the first match
    (minified files have megabyte lines); returns the window and its UTF-16 offset."""
    if len(text) <= PREVIEW_CHARS:
        return text, 0
    start = units = 0
    while start < len(text) and units < first - PREVIEW_BEFORE:
        units += 2 if ord(text[start]) > 0xFFFF else 1
        start += 1
    return text[start : start + PREVIEW_CHARS], units


class Search:
    """One running rg: reads its JSON lines and reports per-file matches to the session."""

    def __init__(self, files: Files, session: Session, search_id: str, max_results: int) -> None:
        self.files = files
        self.session = session
        self.search_id = search_id
        self.max_results = max_results
        self.found = 0
        self.file_count = 0
        self.truncated = False
        self.timed_out = False
        self.cancelled = False
        self.proc: Optional[asyncio.subprocess.Process] = None
        self._pending: List[Dict[str, Any]] = []
        self._summary = False

    async def run(self, command: List[str], timeout: float) -> SearchTotals:
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *command, cwd=self.files.root, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                limit=64 * 1024 * 1024,
            )  # fmt: skip
        except FileNotFoundError:
            raise AgentError("ENOTSUP", "ripgrep (rg) is not installed in this sandbox") from None
        stderr = asyncio.ensure_future(self._read_stderr())
        finished = False  # rg ended its output by itself: its exit code tells how it went
        try:
            await asyncio.wait_for(self._read(), timeout)
            finished = not (self.truncated or self.cancelled)
        except asyncio.TimeoutError:
            self.timed_out = self.truncated = True
        finally:
            if not finished:
                self.stop()
            await self.proc.wait()
        message = await stderr
        stopped = self.timed_out or self.truncated or self.cancelled
        if self.proc.returncode == 2 and not (self._summary or self.found or stopped):
            raise AgentError("EREGEX", message.strip() or "rg failed")
        return {"files": self.file_count, "matches": self.found, "truncated": self.truncated,
                "timed_out": self.timed_out}  # fmt: skip

    async def _read_stderr(self) -> str:
        assert self.proc is not None
        assert self.proc.stderr is not None
        kept = b""
        while True:
            chunk = await self.proc.stderr.read(65536)
            if not chunk:
                return kept.decode("utf-8", "replace")
            kept = (kept + chunk)[:65536]

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            if self.session.queued_bytes() > QUEUE_PAUSE_BYTES:
                await self.session.drained(QUEUE_PAUSE_BYTES // 4)
            if self.session.closed or self.cancelled or not self._on_message(json.loads(line)):
                return

    def _on_message(self, message: Dict[str, Any]) -> bool:
        """Handle one rg message; False once the limit is passed (stop reading)."""
        kind, data = message.get("type"), message.get("data") or {}
        if kind == "match":
            if self.found >= self.max_results:
                self.truncated = True
                self._flush(data)
                return False
            match, reported = convert_line(data, self.max_results - self.found)
            self.found += len(match["ranges"])
            self._pending.append(match)
            if reported > len(match["ranges"]):
                self.truncated = True
                self._flush(data)
                return False
        elif kind == "end":
            self._flush(data)
        elif kind == "summary":
            self._summary = True
        return True

    def _flush(self, data: Dict[str, Any]) -> None:
        if not self._pending:
            return
        relative = _line_text(data["path"]).decode("utf-8", "surrogateescape")
        path = posixpath.normpath(posixpath.join(self.files.root, relative))
        self.file_count += 1
        self.session.event("search.file", {"search_id": self.search_id, "path": path,
                                           "matches": self._pending})  # fmt: skip
        self._pending = []

    def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


class Searches:
    def __init__(self, files: Files) -> None:
        self.files = files
        self.running: Dict[Tuple[int, str], Search] = {}

    def target(self, path: Any) -> str:
        """The folder or file to search, relative to the workspace; it must stay inside the
        workspace once symlinks are resolved (rg follows a symlink given as its argument)."""
        absolute = self.files.resolve(path)
        real, root = os.path.realpath(absolute), os.path.realpath(self.files.root)
        if not covers(root, real):
            raise AgentError("EACCES", "EACCES: '%s' leads outside the workspace" % absolute)
        if not os.path.exists(real):
            raise FileNotFoundError(2, "No such file or directory", absolute)
        return "." if real == root else "./" + posixpath.relpath(real, root)

    async def text(self, session: Session, args: Dict[str, Any]) -> SearchTotals:
        query, search_id = args["query"], str(args["search_id"])
        if not isinstance(query, str) or not query or "\x00" in query:
            raise AgentError("EINVAL", "query must be a non-empty string without NUL")
        max_results = int(args.get("max_results", 500))
        if not 1 <= max_results <= 10000:
            raise AgentError("EINVAL", "max_results must be between 1 and 10000")
        command = rg_command(query, args, self.target(args.get("path", "/")), self.files.root)
        search = Search(self.files, session, search_id, max_results)
        key = (id(session), search_id)
        self.running[key] = search
        try:
            return await search.run(command, float(args.get("timeout_seconds", 30)))
        finally:
            self.running.pop(key, None)

    def cancel(self, session: Session, search_id: Any) -> None:
        search = self.running.get((id(session), str(search_id)))
        if search is not None:
            search.cancelled = True
            search.stop()

    def close_session(self, session: Session) -> None:
        for (owner, _), search in list(self.running.items()):
            if owner == id(session):
                search.stop()


def register(registry: Registry, searches: Searches) -> None:
    async def text(session: Session, args: Dict[str, Any]) -> SearchTotals:
        return await searches.text(session, args)

    async def cancel(session: Session, args: Dict[str, Any]) -> None:
        searches.cancel(session, args["search_id"])
        return None

    registry.add("search.text", text, concurrent=True)
    registry.add("search.cancel", cancel)
