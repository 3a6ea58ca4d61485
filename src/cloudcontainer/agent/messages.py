"""The agent protocol's requests, replies and events, as types: one definition for both ends.

The agent builds its replies as these shapes (its handlers are annotated with them) and the
gateway's facade (`agentlink/files.py`, `fs.py`, `snapshots.py`, `watch.py`, `search.py`,
`archives.py`, `status.py`) sends these arguments and reads these replies, so `mypy --strict`
sees both sides of every call. Nothing here is checked at run time: every reply is still
validated by `agentlink/schema.py` (the agent is the tenant's and may send anything) before
the facade types it, so a type here never claims more than the schema checks.

`OPS` and `EVENTS` name every op and event with its types; a test holds them equal to the
agent's op table and the gateway's schema. The `proc.*` ops are in `messages_proc.py`.

Stdlib only, Python >= 3.9: optional keys are `total=False` subclasses (no NotRequired). The
agent imports this module only for type checking, so it costs a sandbox no memory.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Tuple, TypedDict, Union, final

# -- shared values ----------------------------------------------------------------------------

EntryType = Literal["file", "directory", "symlink", "other"]
ManifestType = Literal["file", "directory", "symlink"]  # what a snapshot keeps


class Entry(TypedDict):
    """A file, folder or link as `lstat` saw it; `path` is absolute in the sandbox."""

    path: str
    name: str
    type: EntryType
    size: int
    mtime: float
    mode: int
    ino: int


class _KeptRequired(TypedDict):
    path: str
    size: int


class Kept(_KeptRequired, total=False):
    """Content an op replaced (file history): without `data` when larger than asked."""

    data: str  # base64


class Replaced(TypedDict, total=False):
    """What a write, delete or move replaced, when `keep_previous` asked for it."""

    previous: Kept
    replaced: Kept


class Error(TypedDict):
    code: str  # an errno name: ENOENT, EISDIR, ETAGMISMATCH...
    message: str


# -- requests ---------------------------------------------------------------------------------


class Empty(TypedDict):
    """An op without arguments."""


class PathArgs(TypedDict):
    path: str


class ReadArgs(PathArgs, total=False):
    offset: int
    length: int


class _WriteRequired(TypedDict):
    path: str
    data: str  # base64


class WriteOptions(TypedDict, total=False):
    """What a caller may add to a write: the gateway's file API passes these through."""

    mkdirs: bool
    expect_sha256: str  # "" for: the file must not exist
    keep_previous: int  # a size cap: answer the replaced content up to this many bytes


class WriteArgs(_WriteRequired, WriteOptions):
    pass


class LastPartArgs(WriteArgs):
    """The last part of a multi-part write: renames the staged `fs.write.part`s into place."""

    upload: str


class _PartRequired(TypedDict):
    upload: str
    path: str
    data: str  # base64


class WritePartArgs(_PartRequired, total=False):
    mkdirs: bool


class UploadArgs(TypedDict):
    upload: str


class ListArgs(PathArgs, total=False):
    recursive: bool


class MkdirArgs(PathArgs, total=False):
    recursive: bool


class KeepArgs(TypedDict, total=False):
    keep_previous: int


class RemoveArgs(PathArgs, KeepArgs, total=False):
    recursive: bool
    force: bool


class _RenameRequired(TypedDict):
    source: str
    target: str


class RenameArgs(_RenameRequired, KeepArgs, total=False):
    pass


class _BatchRequired(TypedDict):
    # {"op": "write"|"mkdir"|"delete"|"move", ...}: the file API's batch operations as the
    # client sent them (validated there), passed through.
    operations: List[Dict[str, Any]]


class BatchArgs(_BatchRequired, KeepArgs, total=False):
    atomic: bool


class ExcludeArgs(TypedDict, total=False):
    exclude: List[str]  # globs


class _PruneRequired(TypedDict):
    keep: Dict[str, ManifestType]  # path -> type: what stays


class PruneArgs(_PruneRequired, ExcludeArgs, total=False):
    pass


class _ApplyEntryRequired(TypedDict):
    path: str
    type: ManifestType
    mode: int


class ApplyEntry(_ApplyEntryRequired, total=False):
    data: str  # base64, a file's
    target: str  # a symlink's


class ApplyArgs(TypedDict):
    entries: List[ApplyEntry]


class _TunnelOpenRequired(TypedDict):
    port: int


class TunnelOpenArgs(_TunnelOpenRequired, total=False):
    host: str


class TunnelArgs(TypedDict):
    tunnel_id: int


class WatchFilter(TypedDict):
    include: List[str]  # globs
    exclude: List[str]


class _SubscribeRequired(WatchFilter):
    id: str


class SubscribeArgs(_SubscribeRequired, total=False):
    content: bool  # send the bytes of added and changed files
    initial: bool  # report the current state first
    replaces: str  # the subscription this one takes over from
    since: str  # replay what changed after this cursor first


class WatchIdArgs(TypedDict):
    id: str


class _SearchQueryRequired(TypedDict):
    query: str


class SearchQuery(_SearchQueryRequired, total=False):
    """What a client asks of a search (the file API's request, passed through)."""

    regex: bool
    case_sensitive: bool
    whole_word: bool
    include: List[str]
    exclude: List[str]
    gitignore: bool
    path: str
    max_results: int


class _SearchRequired(TypedDict):
    search_id: str
    timeout_seconds: float


class SearchArgs(_SearchRequired, SearchQuery):
    pass


class SearchIdArgs(TypedDict):
    search_id: str


ArchiveFormat = Literal["zip", "tar.gz"]


class _ArchiveRequired(TypedDict):
    path: str
    format: ArchiveFormat


class ArchiveCreateArgs(_ArchiveRequired, ExcludeArgs, total=False):
    pass


class ExtractLimits(TypedDict):
    max_bytes: int  # uncompressed
    max_entries: int


class ArchiveExtractArgs(_ArchiveRequired, ExtractLimits):
    pass


class StreamArgs(TypedDict):
    stream_id: int


# -- replies ----------------------------------------------------------------------------------


class Hello(TypedDict, total=False):
    """The agent's first answer. The schema requires `workspace` and `started_at`; a link
    holds `{}` until it is answered."""

    version: str
    protocol: int
    pid: int
    uid: int
    python: str
    workspace: str
    started_at: float


class _PingRequired(TypedDict):
    cpu_seconds: float  # the sandbox's processes', for the supervisor's CPU accounting


class Ping(_PingRequired, total=False):
    """The health check's answer; all but `cpu_seconds` is for diagnosis."""

    time: float
    live_procs: int
    rss_bytes: int
    polling_ports: bool
    watch: Dict[str, Any]  # the watcher's counters


class Digest(TypedDict, total=False):
    sha256: str  # only with an answer that holds the whole file


class _ChunkRequired(Entry):
    data: str  # base64


class Chunk(_ChunkRequired, Digest, total=False):
    eof: bool  # the answer reaches the end of the file (missing: it does)


class _WrittenRequired(Entry):
    sha256: str


class Written(_WrittenRequired, Replaced, total=False):
    pass


class PartWritten(TypedDict):
    size: int  # of the upload so far


class Moved(Entry, Replaced, total=False):
    pass


@final
class StepEntry(Entry, Replaced, total=False):
    sha256: str  # a write's


@final
class Removed(Replaced):
    """What a delete removed (and nothing else: no entry)."""


class _StepDoneRequired(TypedDict):
    ok: Literal[True]


class StepDone(_StepDoneRequired, total=False):
    """One step of a batch that worked: its entry (a write adds `sha256`), or, for a delete,
    what it removed or nothing. (Final types: `"path" in result` tells them apart.)"""

    result: Optional[Union[StepEntry, Removed]]


class StepFailed(TypedDict):
    ok: Literal[False]
    error: Error


@final
class BatchResults(TypedDict):
    results: List[Union[StepDone, StepFailed]]


@final
class BatchFailed(TypedDict):
    """An atomic batch that stopped at step `failed` and was undone (`rolled_back`: fully)."""

    failed: int
    error: Error
    rolled_back: bool


BatchReply = Union[BatchResults, BatchFailed]


class _ManifestEntryRequired(TypedDict):
    path: str  # workspace-relative, with a leading /
    type: ManifestType
    mode: int
    size: int


class ManifestEntry(_ManifestEntryRequired, total=False):
    sha256: str  # a file's
    target: str  # a symlink's


class _ManifestRequired(TypedDict):
    entries: List[ManifestEntry]


class Manifest(_ManifestRequired, total=False):
    skipped: List[str]  # unreadable files


class DiskUsage(TypedDict):
    total: int  # bytes
    used: int
    free: int


class ListeningPort(TypedDict):
    port: int
    address: str


class TunnelOpened(TypedDict):
    tunnel_id: int


class _SubscribedRequired(TypedDict):
    cursor: str


class Subscribed(_SubscribedRequired, total=False):
    resync: bool  # the cursor asked for was lost: a full state report follows


class Unsubscribed(TypedDict):
    removed: bool


class SearchTotals(TypedDict):
    files: int
    matches: int
    truncated: bool
    timed_out: bool


class ArchiveOpened(TypedDict):
    stream_id: int


class DownloadOpened(ArchiveOpened):
    name: str  # the archive's file name


class Skipped(TypedDict):
    path: str
    reason: str


class Extracted(TypedDict):
    count: int
    files: List[str]
    skipped: List[Skipped]


# -- events -----------------------------------------------------------------------------------


class PortEvent(TypedDict):
    port: int
    state: Literal["open", "close"]
    address: str


WatchEventType = Literal["add_file", "change", "remove_file", "add_dir", "remove_dir"]


class _WatchEventRequired(TypedDict):
    type: WatchEventType
    path: str
    mtime: float
    ino: int


class WatchEvent(_WatchEventRequired, total=False):
    buffer: str  # base64: the file's bytes, when the subscription asked for content


class _WatchBatchRequired(TypedDict):
    sub: str
    cursor: Optional[str]  # None on a part of a state report
    events: List[WatchEvent]


class WatchBatch(_WatchBatchRequired, total=False):
    resync: bool


class TunnelClosed(TypedDict):
    tunnel_id: int
    reason: str


class Range(TypedDict):
    startLineNumber: int
    startColumn: int
    endLineNumber: int
    endColumn: int


class Preview(TypedDict):
    text: str
    matches: List[Range]


class Match(TypedDict):
    preview: Preview
    ranges: List[Range]


class SearchFile(TypedDict):
    search_id: str
    path: str
    matches: List[Match]


# -- the tables -------------------------------------------------------------------------------

# op -> (its arguments, its reply)
OPS: Dict[str, Tuple[Any, Any]] = {
    "hello": (Empty, Hello),
    "ping": (Empty, Ping),
    "fs.stat": (PathArgs, Entry),
    "fs.read": (ReadArgs, Chunk),
    "fs.write": (Union[WriteArgs, LastPartArgs], Written),
    "fs.write.part": (WritePartArgs, PartWritten),
    "fs.write.abort": (UploadArgs, None),
    "fs.list": (ListArgs, List[Entry]),
    "fs.mkdir": (MkdirArgs, Entry),
    "fs.remove": (RemoveArgs, Optional[Replaced]),
    "fs.rename": (RenameArgs, Moved),
    "fs.batch": (BatchArgs, BatchReply),
    "fs.manifest": (ExcludeArgs, Manifest),
    "fs.prune": (PruneArgs, int),
    "fs.apply": (ApplyArgs, int),
    "fs.statfs": (Empty, DiskUsage),
    "ports.list": (Empty, List[ListeningPort]),
    "tunnel.open": (TunnelOpenArgs, TunnelOpened),
    "tunnel.close": (TunnelArgs, None),
    "watch.subscribe": (SubscribeArgs, Subscribed),
    "watch.unsubscribe": (WatchIdArgs, Unsubscribed),
    "search.text": (SearchArgs, SearchTotals),
    "search.cancel": (SearchIdArgs, None),
    "archive.create": (ArchiveCreateArgs, DownloadOpened),
    "archive.extract": (ArchiveExtractArgs, ArchiveOpened),
    "archive.finish": (StreamArgs, Extracted),
    "archive.cancel": (StreamArgs, None),
}

EVENTS: Dict[str, Any] = {
    "port": PortEvent,
    "fs.watch": WatchBatch,
    "tunnel.closed": TunnelClosed,
    "search.file": SearchFile,
}
