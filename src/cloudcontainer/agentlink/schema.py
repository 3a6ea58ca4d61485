"""The shapes the gateway accepts from an agent: every answer and event is checked here before
anyone uses it.

The agent runs inside the sandbox as the tenant's user: the tenant can replace it with a
program of their own, so nothing it sends is trusted (issue 9). A check is a plain function
that raises `Violation` naming the offending place; they are built once at import from small
combinators (`obj`, `list_of`, `string`...), a few isinstance calls per field on the hot path
of a file call (no model objects are made). Answers are checked per op (`check_result`), events
per name (`check_event`); an event name not listed here is dropped, so an agent cannot make up
the gateway's own `link.closed`. Events are relayed to clients as `{"type": name, **data}`, so
their objects are closed (no other keys: a `type` key would pose as another event). Sizes and
counts an agent reports are bounded here, but callers still never allocate by them.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Mapping
from typing import Any

from cloudcontainer.agentlink.errors import AgentProtocolError

__all__ = [
    "ERRNO", "Violation", "check_error", "check_event", "check_result", "decode",
]  # fmt: skip

Check = Callable[[Any, str], None]

# Generous bounds no honest agent reaches; a path is at most PATH_MAX bytes.
MAX_STRING = 1 << 16
MAX_PATH = 4096 + len("/home/project")
MAX_INT = (1 << 63) - 1
MAX_ERROR_MESSAGE = 8192
ERRNO = re.compile(r"E[A-Z0-9_]{1,31}")


class Violation(ValueError):
    """A message from the agent does not have the shape the protocol promises."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where


# -- combinators ----------------------------------------------------------------------------


def anything(value: Any, where: str) -> None:
    """No check: a value the gateway passes on without looking into it."""


def null(value: Any, where: str) -> None:
    if value is not None:
        raise Violation(where, "must be null")


def boolean(value: Any, where: str) -> None:
    if value is not True and value is not False:
        raise Violation(where, "must be a boolean")


def integer(low: int = 0, high: int = MAX_INT) -> Check:
    def check(value: Any, where: str) -> None:
        if type(value) is not int or not low <= value <= high:
            raise Violation(where, f"must be an integer in {low}..{high}")

    return check


def number(value: Any, where: str) -> None:
    if type(value) not in (int, float) or value != value or abs(value) > 1e18:
        raise Violation(where, "must be a finite number")


def string(limit: int = MAX_STRING, pattern: re.Pattern[str] | None = None) -> Check:
    def check(value: Any, where: str) -> None:
        if type(value) is not str or len(value) > limit:
            raise Violation(where, f"must be a string of at most {limit} characters")
        if pattern is not None and pattern.fullmatch(value) is None:
            raise Violation(where, f"must match {pattern.pattern}")

    return check


def base64_text(value: Any, where: str) -> None:
    """Cheap (no pass over the characters in Python): whoever decodes it uses `decode`,
    which refuses what is not base64."""
    if type(value) is not str or len(value) % 4 or not value.isascii():
        raise Violation(where, "must be base64 text")


def decode(value: str, where: str) -> bytes:
    """Base64 text from the agent, as bytes; AgentProtocolError when it is not base64."""
    try:
        # In C, strict (no characters outside the alphabet), and faster than b64decode.
        return binascii.a2b_base64(value, strict_mode=True)
    except ValueError as exc:  # binascii.Error, or text that is not ASCII
        raise AgentProtocolError(f"the agent sent invalid base64 in {where}") from exc


def one_of(*values: str) -> Check:
    allowed = frozenset(values)

    def check(value: Any, where: str) -> None:
        if type(value) is not str or value not in allowed:
            raise Violation(where, f"must be one of {sorted(allowed)}")

    return check


def optional(inner: Check) -> Check:
    """`inner`, or null."""

    def check(value: Any, where: str) -> None:
        if value is not None:
            inner(value, where)

    return check


def either(*checks: Check) -> Check:
    def check(value: Any, where: str) -> None:
        for candidate in checks[:-1]:
            try:
                candidate(value, where)
                return
            except Violation:
                continue
        checks[-1](value, where)

    return check


def list_of(item: Check, limit: int = 1 << 20) -> Check:
    def check(value: Any, where: str) -> None:
        if type(value) is not list or len(value) > limit:
            raise Violation(where, f"must be a list of at most {limit} items")
        for index, element in enumerate(value):
            item(element, f"{where}[{index}]")

    return check


def obj(
    required: Mapping[str, Check], optional: Mapping[str, Check] | None = None, *,
    closed: bool = False,
) -> Check:  # fmt: skip
    """An object with `required` keys, perhaps `optional` ones; `closed`: no others."""
    needed = tuple(required.items())
    maybe = tuple((optional or {}).items())
    known = frozenset(required) | frozenset(optional or {})

    def check(value: Any, where: str) -> None:
        if type(value) is not dict:
            raise Violation(where, "must be an object")
        for key, inner in needed:
            if key not in value:
                raise Violation(f"{where}.{key}", "is missing")
            inner(value[key], f"{where}.{key}")
        for key, inner in maybe:
            if key in value:
                inner(value[key], f"{where}.{key}")
        if closed and not known.issuperset(value):
            raise Violation(where, f"has keys other than {sorted(known)}")

    return check


# -- the protocol's values ------------------------------------------------------------------

PATH = string(MAX_PATH)


def ABSOLUTE(value: Any, where: str) -> None:
    if type(value) is not str or len(value) > MAX_PATH or value[:1] != "/" or "\x00" in value:
        raise Violation(where, f"must be an absolute path of at most {MAX_PATH} characters")


SIZE = integer()
COUNT = integer(0, 1 << 32)
ID = integer(0, (1 << 32) - 1)  # ids travel in 4-byte frame headers


def SHA256(value: Any, where: str) -> None:
    if type(value) is not str or len(value) != 64 or value.strip("0123456789abcdef"):
        raise Violation(where, "must be a SHA-256 in lowercase hex")


EXIT_CODE = optional(integer(-(1 << 31), 1 << 31))
ENTRY_FIELDS: dict[str, Check] = {
    "path": ABSOLUTE, "name": string(4096), "size": SIZE, "mtime": number,
    "mode": integer(0, 0o7777), "ino": SIZE,
    "type": one_of("file", "directory", "symlink", "other"),
}  # fmt: skip
_ENTRY_TYPES = frozenset(("file", "directory", "symlink", "other"))


def _is_entry(v: Any) -> bool:
    """ENTRY_FIELDS all valid, in one expression: entries come by the thousand in a listing
    and with every file call, and a call per field costs 5x this."""
    return (
        type(v) is dict
        and type(path := v.get("path")) is str and len(path) <= MAX_PATH
        and path[:1] == "/" and "\x00" not in path
        and type(name := v.get("name")) is str and len(name) <= 4096
        and type(size := v.get("size")) is int and 0 <= size <= MAX_INT
        and isinstance(mtime := v.get("mtime"), (int, float)) and type(mtime) is not bool
        and -1e18 <= mtime <= 1e18
        and type(mode := v.get("mode")) is int and 0 <= mode <= 0o7777
        and type(ino := v.get("ino")) is int and 0 <= ino <= MAX_INT
        and type(kind := v.get("type")) is str and kind in _ENTRY_TYPES
    )  # fmt: skip


def entry_and(
    required: Mapping[str, Check] | None = None, optional: Mapping[str, Check] | None = None
) -> Check:
    """An entry with more fields: the entry's checked at once, the rest one by one (a value
    the fast check refuses goes through the field checks for a message naming the field)."""
    rest = obj(required or {}, optional)
    full = obj({**ENTRY_FIELDS, **(required or {})}, optional)

    def check(value: Any, where: str) -> None:
        if _is_entry(value):
            rest(value, where)
        else:
            full(value, where)

    return check


ENTRY = entry_and()
PREVIOUS = obj({"path": ABSOLUTE, "size": SIZE}, {"data": base64_text})
KEPT = {"previous": PREVIOUS, "replaced": PREVIOUS}
ERROR = obj({"code": string(32, ERRNO), "message": string(1 << 20)})
PROCESS_FIELDS: dict[str, Check] = {
    "proc_id": ID, "pid": optional(integer(0, 1 << 32)), "command": string(),
    "args": list_of(string(), 4096), "cwd": string(MAX_PATH), "pty": boolean,
    "cols": integer(0, 1000), "rows": integer(0, 1000), "state": one_of("running", "exited"),
    "exit_code": EXIT_CODE, "started_at": number,
}  # fmt: skip
PROCESS = obj(PROCESS_FIELDS)
RANGE = obj({name: COUNT for name in
             ("startLineNumber", "startColumn", "endLineNumber", "endColumn")})  # fmt: skip
MATCH = obj({
    "preview": obj({"text": string(), "matches": list_of(RANGE)}, closed=True),
    "ranges": list_of(RANGE),
}, closed=True)  # fmt: skip
WATCH_EVENT = obj(
    {"type": one_of("add_file", "change", "remove_file", "add_dir", "remove_dir"),
     "path": ABSOLUTE, "mtime": number, "ino": SIZE},
    {"buffer": base64_text}, closed=True,
)  # fmt: skip
CURSOR = string(64)


def _batch_result(value: Any, where: str) -> None:
    """One step of fs.batch: an entry (a write adds sha256), or what a delete removed."""
    if value is None:
        return
    if type(value) is dict and "path" not in value:
        obj({}, KEPT, closed=True)(value, where)
        return
    _STEP_ENTRY(value, where)


_STEP_ENTRY = entry_and(None, {"sha256": SHA256, **KEPT})
_STEP_DONE = obj({"ok": boolean}, {"result": _batch_result})
_STEP_FAILED = obj({"ok": boolean, "error": ERROR})


def _STEP(value: Any, where: str) -> None:
    """A batch step that worked (perhaps with its result), or one that failed, with why."""
    failed = type(value) is dict and value.get("ok") is False
    (_STEP_FAILED if failed else _STEP_DONE)(value, where)


_BATCH = either(
    obj({"results": list_of(_STEP, 1000)}),
    obj({"failed": integer(0, 1000), "error": ERROR, "rolled_back": boolean}),
)
_MANIFEST_FIELDS = {"path": ABSOLUTE, "mode": integer(0, 0o7777), "size": SIZE}
_MANIFEST_KINDS = {
    "file": obj({**_MANIFEST_FIELDS, "sha256": SHA256}),
    "directory": obj(_MANIFEST_FIELDS),
    "symlink": obj({**_MANIFEST_FIELDS, "target": string(MAX_PATH)}),
}


def _manifest_entry(value: Any, where: str) -> None:
    """A snapshot's entry: a file has its hash, a symlink its target (the snapshot uses them)."""
    kind = value.get("type") if type(value) is dict else None
    check = _MANIFEST_KINDS.get(kind) if type(kind) is str else None
    if check is None:
        raise Violation(where, "must be an entry of type file, directory or symlink")
    check(value, where)


RESULTS: dict[str, Check] = {
    "hello": obj(
        {"started_at": number, "workspace": ABSOLUTE},
        {
            "version": string(64),
            "protocol": integer(),
            "pid": SIZE,
            "uid": SIZE,
            "python": string(64),
        },
    ),
    "ping": obj(
        {"cpu_seconds": number},
        {
            "time": number,
            "live_procs": COUNT,
            "rss_bytes": SIZE,
            "polling_ports": boolean,
            "watch": obj({}),
        },
    ),
    "fs.stat": ENTRY,
    "fs.read": entry_and({"data": base64_text}, {"sha256": SHA256, "eof": boolean}),
    "fs.write": entry_and({"sha256": SHA256}, KEPT),
    "fs.write.part": obj({"size": SIZE}),
    "fs.write.abort": null,
    "fs.list": list_of(ENTRY),
    "fs.mkdir": ENTRY,
    "fs.remove": optional(obj({}, KEPT)),
    "fs.rename": entry_and(None, KEPT),
    "fs.batch": _BATCH,
    "fs.manifest": obj({"entries": list_of(_manifest_entry)}, {"skipped": list_of(PATH)}),
    "fs.prune": COUNT,
    "fs.apply": COUNT,
    "fs.statfs": obj({"total": SIZE, "used": SIZE, "free": SIZE}),
    "proc.spawn": PROCESS,
    "proc.attach": obj({**PROCESS_FIELDS, "scrollback": base64_text, "scrollback_offset": SIZE}),
    "proc.detach": null,
    "proc.resize": null,
    "proc.kill": null,
    "proc.close_stdin": null,
    "proc.list": list_of(PROCESS),
    "proc.wait": obj({"proc_id": ID, "code": EXIT_CODE}),
    "proc.run": obj({"code": EXIT_CODE, "stdout": base64_text, "stderr": base64_text}),
    "ports.list": list_of(obj({"port": integer(1, 65535), "address": string(64)})),
    "tunnel.open": obj({"tunnel_id": ID}),
    "tunnel.close": null,
    "watch.subscribe": obj({"cursor": CURSOR}, {"resync": boolean}),
    "watch.unsubscribe": anything,
    "search.text": obj(
        {"files": COUNT, "matches": COUNT, "truncated": boolean, "timed_out": boolean},
        closed=True,
    ),
    "search.cancel": null,
    "archive.create": obj({"stream_id": ID, "name": string(4096)}),
    "archive.extract": obj({"stream_id": ID}),
    "archive.finish": obj(
        {
            "count": COUNT,
            "files": list_of(PATH, 100_000),
            "skipped": list_of(
                obj({"path": string(MAX_PATH), "reason": string(4096)}, closed=True), 100_000
            ),
        },
        closed=True,
    ),
    "archive.cancel": null,
}

EVENTS: dict[str, Check] = {
    "proc.start": obj(PROCESS_FIELDS, closed=True),
    "proc.exit": obj({"proc_id": ID, "code": EXIT_CODE}, closed=True),
    "proc.command": either(
        obj({"proc_id": ID, "phase": one_of("start"), "command": string()}, closed=True),
        obj({"proc_id": ID, "phase": one_of("end"), "code": EXIT_CODE}, closed=True),
    ),
    "proc.lagged": obj({"proc_id": ID}, closed=True),
    "port": obj(
        {"port": integer(1, 65535), "state": one_of("open", "close"), "address": string(64)},
        closed=True,
    ),
    "fs.watch": obj(
        {"sub": string(256), "cursor": optional(CURSOR), "events": list_of(WATCH_EVENT)},
        {"resync": boolean},
        closed=True,
    ),
    "tunnel.closed": obj({"tunnel_id": ID, "reason": string(256)}, closed=True),
    "search.file": obj(
        {"search_id": string(64), "path": ABSOLUTE, "matches": list_of(MATCH, 10_000)},
        closed=True,
    ),
}


def check_result(op: str, value: Any) -> None:
    """Raise Violation unless `value` is a valid answer to `op` (unknown ops: any value)."""
    check = RESULTS.get(op)
    if check is not None:
        check(value, op)


def check_error(value: Any) -> None:
    ERROR(value, "error")


def check_event(name: Any, data: Any) -> None:
    """Raise Violation unless this is a known event with valid data."""
    check = EVENTS.get(name) if type(name) is str else None
    if check is None:
        raise Violation("event", f"unknown event {str(name)[:64]!r}")
    check(data, name)
