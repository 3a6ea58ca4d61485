"""Workspace watch: inotify turned into WebContainer's `watchPaths` events, with a journal.

State-based on purpose. inotify says which names were touched, not what a client must learn,
so the watcher keeps what it last reported for every tracked path (kind, inode, size, mtime)
and, after a short debounce, compares each touched path with the disk. The answer is always the
current state: coalesced writes never lose the final bytes, a rename is a removal plus an add,
a new folder is reported before the files inside it (it is scanned after its watch is placed,
so nothing created meanwhile is missed), and a deleted tree yields one removal per entry,
children first.

Subscriptions carry include/exclude globs (agent/globs.py) applied here, so excluded paths
(node_modules) never leave the sandbox; folders every known filter excludes are not even
watched. Every reported change also goes into a bounded journal with a cursor
(`EPOCH:SEQ`), so a client that reconnects asks for "everything since my cursor"; when the
journal cannot answer that (agent restarted, too old), it gets the whole current state marked
`resync`. Watching starts with the first subscription: idle sandboxes pay nothing.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import os
import posixpath
from typing import TYPE_CHECKING, Any, Deque, Dict, Iterable, List, Optional, Set, Tuple

from cloudcontainer.agent.fs import _type, open_regular
from cloudcontainer.agent.globs import PathFilter, glob_list
from cloudcontainer.agent.paths import covers
from cloudcontainer.agent.protocol import AgentError
from cloudcontainer.agent.server import Registry, Session

if TYPE_CHECKING:  # for the checker only: no memory in the sandbox
    from cloudcontainer.agent.messages import Subscribed, Unsubscribed

log = logging.getLogger("cloudcontainer.agent.watch")

DEBOUNCE_SECONDS = 0.008  # quiet time after the last inotify event before reporting
MAX_DELAY_SECONDS = 0.04  # but never hold events back longer than this
JOURNAL_SIZE = 20000
RETAINED_FILTERS = 8
MAX_CONTENT_BYTES = 8 * 1024 * 1024  # larger files are reported without their bytes
MESSAGE_BYTES = 4 * 1024 * 1024  # split event batches (base64 buffers and all) past this
EVENT_BYTES = 100  # an event's JSON beside its path and buffer, about
# Names the agent itself uses for a moment (atomic writes, batches, archive staging).
INTERNAL_PREFIXES = (".cc-write-", ".cc-batch-", ".cc-extract-", ".cc-trash-")

DIRECTORY = "directory"
# (type, inode, size, mtime_ns); type as fs entries name it: "directory", "file", "symlink"...
Entry = Tuple[str, int, int, int]
# (seq, type, path, mtime in ms, inode)
Record = Tuple[int, str, str, float, int]


def _entry(st: os.stat_result) -> Entry:
    return (_type(st.st_mode), st.st_ino, st.st_size, st.st_mtime_ns)


def _internal(path: str) -> bool:
    return posixpath.basename(path).startswith(INTERNAL_PREFIXES)


class Subscription:
    __slots__ = ("content", "filter", "id", "session")

    def __init__(self, sub_id: str, session: Session, path_filter: PathFilter, content: bool):
        self.id = sub_id
        self.session = session
        self.filter = path_filter
        self.content = content


class Watcher:
    def __init__(self, root: str, journal_size: int = JOURNAL_SIZE) -> None:
        self.root = root
        self.known: Dict[str, Entry] = {}
        self.subs: Dict[str, Subscription] = {}
        # filters seen recently (key -> (filter, seq when it started being tracked))
        self.filters: collections.OrderedDict[Any, Tuple[PathFilter, int]] = (
            collections.OrderedDict()
        )
        self.journal: Deque[Record] = collections.deque(maxlen=journal_size)
        self.epoch = os.urandom(4).hex()
        self.seq = 0
        self.errors = 0
        self._inotify: Any = None
        self._flags: Any = None
        self._mask = 0
        self._wd_path: Dict[int, str] = {}
        self._path_wd: Dict[str, int] = {}
        self._dirty: Set[str] = set()
        self._timer: Optional[asyncio.TimerHandle] = None
        self._first_dirty = 0.0

    # -- subscriptions --------------------------------------------------------------------

    @property
    def cursor(self) -> str:
        return "%s:%d" % (self.epoch, self.seq)

    def subscribe(
        self, session: Session, sub_id: str, path_filter: PathFilter, content: bool,
        since: Optional[str] = None, initial: bool = False, replaces: str = "",
    ) -> Subscribed:  # fmt: skip
        """Start (or restart) a subscription. With `since`, replay what changed after that
        cursor first; with `initial`, report the current state first."""
        # The subscription this one replaces ends before the flush below: what is flushed now
        # reaches the new one through the replay, after its cursor, never ahead of it.
        self.subs.pop(sub_id, None)
        self.subs.pop(replaces, None)
        tracked_since = self._retain(path_filter)
        if self._inotify is None:
            self._start()
        # Everything written before this request is in the kernel's queue already: read it
        # now, so the cursor answered covers it.
        self._on_readable()
        self.flush()
        sub = Subscription(sub_id, session, path_filter, content)
        self.subs[sub_id] = sub
        resync = False
        if since is not None:
            records = self._since(since, tracked_since)
            if records is None:
                resync = True
                self._send(sub, self._current_state(), resync=True)
            else:
                self._send(sub, _coalesce(records))
        elif initial:
            self._send(sub, self._current_state())
        return {"cursor": self.cursor, "resync": resync}

    def unsubscribe(self, sub_id: str) -> bool:
        return self.subs.pop(sub_id, None) is not None

    def forget_session(self, session: Session) -> None:
        for sub_id in [s.id for s in self.subs.values() if s.session is session]:
            del self.subs[sub_id]

    def _retain(self, path_filter: PathFilter) -> int:
        """Keep tracking what this filter wants (also after its client left, so a reconnect
        can be answered from the journal). Returns the seq since which that is true."""
        if path_filter.key in self.filters:
            self.filters.move_to_end(path_filter.key)
            return self.filters[path_filter.key][1]
        # Paths only this filter wants were not journaled until now: older cursors cannot
        # be answered for it. A fresh seq marks the moment.
        self.seq += 1
        self.filters[path_filter.key] = (path_filter, self.seq)
        while len(self.filters) > RETAINED_FILTERS:
            self.filters.popitem(last=False)
        if self._inotify is not None:
            self._track_new_paths()
        return self.seq

    def _since(self, cursor: str, tracked_since: int) -> Optional[List[Record]]:
        """Journal records after `cursor`, or None when the journal cannot tell."""
        epoch, _, seq_text = str(cursor).partition(":")
        if epoch != self.epoch or not seq_text.isdigit():
            return None
        seq = int(seq_text)
        full = len(self.journal) == self.journal.maxlen
        if seq > self.seq or seq < tracked_since or (full and seq < self.journal[0][0] - 1):
            return None  # from the future, before this filter was tracked, or evicted
        return [record for record in self.journal if record[0] > seq]

    # -- tracking -------------------------------------------------------------------------

    def tracks(self, path: str) -> bool:
        """Whether any retained filter could want `path` (else it is neither watched nor
        remembered: bolt's `**/node_modules` exclude keeps npm install out of here)."""
        return any(not f.prunes(path) for f, _ in self.filters.values())

    def _start(self) -> None:
        import inotify_simple

        try:
            self._inotify = inotify_simple.INotify(nonblocking=True)
        except OSError as exc:
            raise AgentError(
                "EMFILE",
                "cannot watch files: %s (raise fs.inotify.max_user_instances on the host)"
                % os.strerror(exc.errno or 0),
            ) from exc
        flags = inotify_simple.flags
        self._flags = flags
        self._mask = (
            flags.CREATE | flags.DELETE | flags.MODIFY | flags.CLOSE_WRITE | flags.MOVED_FROM
            | flags.MOVED_TO | flags.DELETE_SELF | flags.ATTRIB | flags.ONLYDIR
            | flags.DONT_FOLLOW | flags.EXCL_UNLINK
        )  # fmt: skip
        asyncio.get_event_loop().add_reader(self._inotify.fileno(), self._on_readable)
        self._watch_dir(self.root)
        self._scan(self.root, None)

    def close(self) -> None:
        if self._inotify is not None:
            asyncio.get_event_loop().remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None

    def _watch_dir(self, path: str) -> None:
        try:
            wd = self._inotify.add_watch(path, self._mask)
        except OSError as exc:
            # ENOSPC: fs.inotify.max_user_watches reached; the folder goes unwatched.
            self.errors += 1
            log.warning("cannot watch %s: %s", path, exc)
            return
        self._wd_path[wd] = path
        self._path_wd[path] = wd

    def _scan(self, directory: str, events: Optional[List[Record]]) -> None:
        """Remember (and with `events`, report) everything below `directory`, placing watches
        before listing, so a file created meanwhile is either listed or announced."""
        stack = [directory]
        while stack:
            current = stack.pop()
            try:
                with os.scandir(current) as listing:
                    children = sorted(listing, key=lambda item: item.name)
            except OSError:
                continue
            folders = []
            for child in children:
                path = child.path
                if _internal(path) or path in self.known or not self.tracks(path):
                    continue
                try:
                    entry = _entry(child.stat(follow_symlinks=False))
                except OSError:
                    continue
                self.known[path] = entry
                if events is not None:
                    events.append(self._record("add_dir" if entry[0] == DIRECTORY else "add_file",
                                               path, entry))  # fmt: skip
                if entry[0] == DIRECTORY:
                    self._watch_dir(path)
                    folders.append(path)
            stack.extend(reversed(folders))

    def _track_new_paths(self) -> None:
        """A new filter may want folders nobody watched: add them quietly (no events; the
        subscriber asks for `initial` if it wants to learn the current state)."""
        for directory in self._folders():
            self._scan(directory, None)

    def _folders(self) -> List[str]:
        """The workspace and every remembered folder below it."""
        return [self.root] + [p for p, e in self.known.items() if e[0] == DIRECTORY]

    # -- inotify --------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            events = self._inotify.read(timeout=0)
        except OSError:
            return
        flags = self._flags
        for event in events:
            if event.mask & flags.Q_OVERFLOW:
                self._dirty.update(self._everything_on_disk())
                continue
            base = self._wd_path.get(event.wd)
            if base is None:
                continue
            if event.mask & flags.IGNORED:
                self._forget_watch(base, event.wd)
                continue
            self._dirty.add(base + "/" + event.name if event.name else base)
        self._schedule()

    def _everything_on_disk(self) -> Set[str]:
        """After a queue overflow: every remembered path and every name in a known folder."""
        paths = set(self.known)
        for directory in self._folders():
            with contextlib.suppress(OSError):
                paths.update(posixpath.join(directory, name) for name in os.listdir(directory))
        return paths

    def _schedule(self) -> None:
        if not self._dirty:
            return
        loop = asyncio.get_event_loop()
        now = loop.time()
        if self._timer is None:
            self._first_dirty = now
        else:
            self._timer.cancel()
        delay = min(DEBOUNCE_SECONDS, max(0.0, self._first_dirty + MAX_DELAY_SECONDS - now))
        self._timer = loop.call_later(delay, self.flush)

    def _forget_watch(self, path: str, wd: int) -> None:
        if self._wd_path.get(wd) == path:
            del self._wd_path[wd]
        if self._path_wd.get(path) == wd:
            del self._path_wd[path]

    # -- reconciling ----------------------------------------------------------------------

    def flush(self) -> None:
        """Compare every touched path with the disk, journal the differences, tell clients."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        records: List[Record] = []
        present: List[Tuple[str, os.stat_result]] = []
        for path in dirty:  # removals first: a rename's old name goes before its new one
            if _internal(path) or not covers(self.root, path):
                continue
            try:
                present.append((path, os.lstat(path)))
            except OSError:
                if path in self.known:
                    self._remove(path, records)
        present.sort(key=lambda item: (item[0].count("/"), item[0]))
        for path, st in present:  # parents before children
            self._reconcile(path, st, records)
        if records:
            self._publish(records)

    def _reconcile(self, path: str, st: os.stat_result, records: List[Record]) -> None:
        if path == self.root:
            return
        parent = posixpath.dirname(path)
        if parent != self.root and self.known.get(parent, ("",))[0] != DIRECTORY:
            return  # below an untracked folder, or its folder is reported by its own event
        if not self.tracks(path):
            return
        new = _entry(st)
        old = self.known.get(path)
        if old is not None and (
            old[0] != new[0] or (new[0] == DIRECTORY and (old[1] != new[1] or self._replaced(path)))
        ):
            self._remove(path, records)  # another kind of thing, or another folder, took the name
            old = None
        if new[0] == DIRECTORY:
            if old is None:
                self.known[path] = new
                records.append(self._record("add_dir", path, new))
                self._watch_dir(path)
                self._scan(path, records)
            return
        if old == new:
            return
        self.known[path] = new
        records.append(self._record("add_file" if old is None else "change", path, new))

    def _replaced(self, path: str) -> bool:
        """A remembered folder whose watch ended was deleted (a new one may even reuse its
        inode number): what was below it is gone."""
        return path not in self._path_wd

    def _remove(self, path: str, records: List[Record]) -> None:
        """Report `path` and everything remembered below it as removed, children first."""
        entry = self.known.get(path)
        if entry is None:
            return
        if entry[0] == DIRECTORY:
            prefix = path + "/"
            below = [p for p in self.known if p.startswith(prefix)]
            below.sort(key=lambda p: p.count("/"), reverse=True)
            for child in below:
                self._drop(child, records)
        self._drop(path, records)

    def _drop(self, path: str, records: List[Record]) -> None:
        entry = self.known.pop(path)
        if entry[0] == DIRECTORY:
            wd = self._path_wd.pop(path, None)
            if wd is not None and self._wd_path.get(wd) == path:
                del self._wd_path[wd]
                with contextlib.suppress(OSError):  # gone with its folder
                    self._inotify.rm_watch(wd)
        records.append(self._record("remove_dir" if entry[0] == DIRECTORY else "remove_file", path,
                                    entry))  # fmt: skip

    def _record(self, kind: str, path: str, entry: Entry) -> Record:
        self.seq += 1
        record = (self.seq, kind, path, entry[3] / 1e6, entry[1])
        self.journal.append(record)
        return record

    def _current_state(self) -> List[Record]:
        """Everything remembered, as adds, parents first (seq 0: not journal entries)."""
        return [
            (0, "add_dir" if entry[0] == DIRECTORY else "add_file", path, entry[3] / 1e6, entry[1])
            for path, entry in sorted(self.known.items())
        ]

    # -- telling clients ------------------------------------------------------------------

    def _publish(self, records: List[Record]) -> None:
        for sub in list(self.subs.values()):
            self._send(sub, records)

    def _send(self, sub: Subscription, records: Iterable[Record], resync: bool = False) -> None:
        """Send the records this subscription wants, in messages of bounded size. The last
        message carries the current cursor; an earlier one the seq of its last record (none
        for state reports), so a client that lost a later part resumes from where it is."""
        batch: List[Dict[str, Any]] = []
        size = 0
        last_seq = 0
        for seq, kind, path, mtime, ino in records:
            if not sub.filter.wants(path):
                last_seq = seq
                continue
            event: Dict[str, Any] = {"type": kind, "path": path, "mtime": mtime, "ino": ino}
            cost = EVENT_BYTES + len(path)
            if sub.content and kind in ("add_file", "change"):
                data = _content(path)
                if data is not None:
                    event["buffer"] = base64.b64encode(data).decode("ascii")
                    cost += len(event["buffer"])
            # Split before the batch would pass its budget: a larger event (one file of at
            # most 8 MiB) travels alone, under the link's limit (protocol.MAX_MESSAGE_BYTES).
            if batch and size + cost > MESSAGE_BYTES:
                part_cursor = "%s:%d" % (self.epoch, last_seq) if last_seq else None
                self._message(sub, batch, resync, part_cursor)
                batch, size = [], 0
            batch.append(event)
            size += cost
            last_seq = seq
        if batch or resync:
            self._message(sub, batch, resync, self.cursor)

    def _message(
        self, sub: Subscription, events: List[Dict[str, Any]], resync: bool,
        cursor: Optional[str],
    ) -> None:  # fmt: skip
        data: Dict[str, Any] = {"sub": sub.id, "cursor": cursor, "events": events}
        if resync:
            data["resync"] = True
        sub.session.event("fs.watch", data)

    def stats(self) -> Dict[str, Any]:
        return {
            "active": self._inotify is not None, "subscriptions": len(self.subs),
            "watched_folders": len(self._wd_path), "tracked_paths": len(self.known),
            "journal": len(self.journal), "errors": self.errors,
        }  # fmt: skip


def _content(path: str) -> Optional[bytes]:
    """The file's current bytes (through a symlink too: it resolves inside the sandbox), or
    None for folders, unreadable and oversized files."""
    try:
        with open_regular(path) as handle:  # never blocks on a FIFO put there
            st = os.fstat(handle.fileno())
            if st.st_size > MAX_CONTENT_BYTES:
                return None
            return handle.read(MAX_CONTENT_BYTES + 1)[:MAX_CONTENT_BYTES]
    except OSError:
        return None


def _coalesce(records: List[Record]) -> List[Record]:
    """A replay needs each file's bytes once: an add or change followed by a later add or
    change of the same path is dropped (the later one carries the current bytes); an add
    folded into a later change keeps being an add."""
    last_write: Dict[str, int] = {}
    for index, record in enumerate(records):
        if record[1] in ("add_file", "change"):
            last_write[record[2]] = index
        elif record[1] == "remove_file":
            last_write.pop(record[2], None)
    kept: List[Record] = []
    added: Set[str] = set()
    for index, record in enumerate(records):
        seq, kind, path, mtime, ino = record
        if kind in ("add_file", "change"):
            if kind == "add_file":
                added.add(path)
            if last_write.get(path) != index:
                continue
            if path in added:
                record = (seq, "add_file", path, mtime, ino)
        elif kind == "remove_file":
            added.discard(path)
        kept.append(record)
    return kept


def register(registry: Registry, watcher: Watcher) -> None:
    async def subscribe(session: Session, args: Dict[str, Any]) -> Subscribed:
        include = glob_list(args.get("include"), "include")
        exclude = glob_list(args.get("exclude"), "exclude")
        path_filter = PathFilter(include, exclude, watcher.root)
        since = args.get("since")
        return watcher.subscribe(
            session, str(args["id"]), path_filter, bool(args.get("content", True)),
            since=None if since is None else str(since), initial=bool(args.get("initial")),
            replaces=str(args.get("replaces") or ""),
        )  # fmt: skip

    async def unsubscribe(session: Session, args: Dict[str, Any]) -> Unsubscribed:
        return {"removed": watcher.unsubscribe(str(args["id"]))}

    registry.add("watch.subscribe", subscribe)
    registry.add("watch.unsubscribe", unsubscribe)
