"""`fs.batch`: many file operations in one request, all-or-nothing or one by one.

An atomic batch runs as one synchronous step of the agent's event loop, so no other request
interleaves with it. Before each change it records how to take it back: an overwritten file
is hard-linked into a hidden trash folder first (renaming the link back restores the very
inode: bytes, mode, mtime), a deleted tree is renamed into the trash instead of removed, a
created file or folder is removed again, a move is moved back. When an operation fails the
undo steps run in reverse order and the answer names the failing operation; on success the
trash is purged. Everything hidden is named `.cc-batch-…` at the workspace root, and any such
leftover of a crash is removed before the next batch and when the agent starts.
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Union

from cloudcontainer.agent.fs import Files, _previous, _remove_tree, kept
from cloudcontainer.agent.protocol import AgentError
from cloudcontainer.agent.server import OFF_LOOP_BYTES, Registry, Session, off_loop, os_error

if TYPE_CHECKING:  # for the checker only: no memory in the sandbox
    from cloudcontainer.agent.messages import BatchReply, Error, StepDone, StepFailed

PREFIX = ".cc-batch-"
MAX_OPERATIONS = 1000
# Replaced content one batch answer carries in all (file history): past it, later steps keep
# nothing, so the answer stays under the link's message limit (protocol.MAX_MESSAGE_BYTES).
KEPT_BUDGET = 8 * 1024 * 1024

log = logging.getLogger("cloudcontainer.agent")


def clean(files: Files) -> None:
    """Remove what an interrupted batch left at the workspace root (trash folders)."""
    try:
        names = os.listdir(files.root)
    except OSError:
        return
    for name in names:
        if name.startswith(PREFIX):
            path = posixpath.join(files.root, name)
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    _remove_tree(path)
                else:
                    os.unlink(path)
            except OSError as exc:
                log.warning("could not remove batch leftover %s: %s", path, exc)


def _checked(files: Files, path: Any) -> str:
    """The absolute path, refusing names the batch machinery keeps for itself."""
    absolute = files.resolve(path)
    if any(part.startswith(PREFIX) for part in absolute[len(files.root) :].split("/")):
        raise AgentError("EINVAL", "EINVAL: reserved name, '%s'" % absolute)
    return absolute


class Journal:
    """The undo steps of one atomic batch, and the trash folder they keep old things in."""

    def __init__(self, files: Files) -> None:
        self.files = files
        self.undo: List[Callable[[], None]] = []
        self._trash: Optional[str] = None
        self._count = 0

    def spare(self) -> str:
        """A fresh name inside the trash folder (made on first use)."""
        if self._trash is None:
            self._trash = posixpath.join(self.files.root, PREFIX + os.urandom(6).hex())
            os.mkdir(self._trash, 0o700)
        self._count += 1
        return posixpath.join(self._trash, str(self._count))

    def rollback(self) -> bool:
        """Undo everything in reverse order; False when some step could not be undone."""
        complete = True
        for step in reversed(self.undo):
            try:
                step()
            except OSError as exc:
                complete = False
                log.error("batch rollback step failed: %s", exc)
        self.undo.clear()
        self.purge()
        return complete

    def purge(self) -> None:
        if self._trash is not None:
            try:
                _remove_tree(self._trash)
            except OSError as exc:
                log.warning("could not purge batch trash %s: %s", self._trash, exc)
            self._trash = None

    # -- recorded primitives --------------------------------------------------------------

    def makedirs(self, absolute: str) -> None:
        """Like os.makedirs(exist_ok=True), remembering each folder it creates."""
        missing: List[str] = []
        current = absolute
        while not os.path.lexists(current):
            missing.append(current)
            current = posixpath.dirname(current)
        if not os.path.isdir(current):
            raise NotADirectoryError(20, "Not a directory", current)
        for folder in reversed(missing):
            os.mkdir(folder)
            self.undo.append(lambda folder=folder: os.rmdir(folder))  # type: ignore[misc]

    def set_aside(self, absolute: str) -> None:
        """Move an existing entry into the trash; undo moves it back over whatever is there."""
        spare = self.spare()
        os.rename(absolute, spare)
        self.undo.append(lambda: os.rename(spare, absolute))

    def keep_copy(self, absolute: str) -> None:
        """Hard-link an existing file into the trash: renaming the link back restores it."""
        spare = self.spare()
        try:
            os.link(absolute, spare, follow_symlinks=False)
        except OSError:  # e.g. protected_hardlinks on a file the agent does not own
            self.set_aside(absolute)
            return
        self.undo.append(lambda: os.rename(spare, absolute))

    def forget_new(self, absolute: str) -> None:
        def remove() -> None:
            if os.path.lexists(absolute):
                os.unlink(absolute)

        self.undo.append(remove)


class Batch:
    """Applies operations; with a Journal (atomic), each change is recorded first."""

    def __init__(self, files: Files, journal: Optional[Journal], keep_previous: int = 0) -> None:
        self.files = files
        self.journal = journal
        self.keep = keep_previous  # file history: answer the content each step replaces
        self.budget = KEPT_BUDGET

    def _keep(self) -> int:
        """The cap for this step's kept content: 0 (keep none) once the budget is spent."""
        return self.keep if isinstance(self.keep, int) and self.keep <= self.budget else 0

    def _spend(self, result: Any) -> None:
        if isinstance(result, dict):
            for name in ("previous", "replaced"):
                kept = result.get(name)
                if kept is not None and "data" in kept:
                    self.budget -= kept["size"]

    def apply(self, operation: Any) -> Any:
        if not isinstance(operation, dict):
            raise AgentError("EINVAL", "an operation must be an object")
        kind = str(operation.get("op"))
        handler = {
            "write": self.write, "mkdir": self.mkdir, "delete": self.delete, "move": self.move,
        }.get(kind)  # fmt: skip
        if handler is None:
            raise AgentError("EINVAL", "unknown operation: %r" % (kind,))
        result = handler(operation)
        self._spend(result)
        return result

    def write(self, operation: Dict[str, Any]) -> Any:
        files, journal = self.files, self.journal
        absolute = _checked(files, operation["path"])
        if journal is None:
            return files.write(
                absolute, operation["data"], bool(operation.get("mkdirs", False)),
                operation.get("expect_sha256"), keep_previous=self._keep(),
            )  # fmt: skip
        if absolute == files.root or os.path.isdir(absolute):
            raise IsADirectoryError(21, "Is a directory", absolute)
        if operation.get("mkdirs"):
            journal.makedirs(posixpath.dirname(absolute))
        previous = _previous(absolute, self._keep())
        if os.path.lexists(absolute):
            journal.keep_copy(absolute)
        else:
            journal.forget_new(absolute)
        answer = files.write(absolute, operation["data"], False, operation.get("expect_sha256"))
        if previous is not None:
            answer["previous"] = previous
        return answer

    def mkdir(self, operation: Dict[str, Any]) -> Any:
        files, journal = self.files, self.journal
        absolute = _checked(files, operation["path"])
        recursive = bool(operation.get("recursive", False))
        if journal is None:
            return files.mkdir(absolute, recursive)
        if recursive:
            if os.path.lexists(absolute) and not os.path.isdir(absolute):
                raise FileExistsError(17, "File exists", absolute)
            journal.makedirs(absolute)
        else:
            os.mkdir(absolute)
            journal.undo.append(lambda: os.rmdir(absolute))
        return files.entry(absolute, os.stat(absolute))

    def delete(self, operation: Dict[str, Any]) -> Any:
        files, journal = self.files, self.journal
        absolute = _checked(files, operation["path"])
        recursive = bool(operation.get("recursive", False))
        force = bool(operation.get("force", False))
        if journal is None:
            return files.remove(absolute, recursive, force, self._keep())
        if files.removable(absolute, recursive, force) is None:
            return None
        previous = _previous(absolute, self._keep())
        journal.set_aside(absolute)
        return None if previous is None else {"previous": previous}

    def move(self, operation: Dict[str, Any]) -> Any:
        files, journal = self.files, self.journal
        old, new = _checked(files, operation["from"]), _checked(files, operation["to"])
        if journal is None:
            return files.rename(old, new, self._keep())
        if old == files.root or new == files.root:
            raise AgentError("EPERM", "EPERM: operation not permitted, rename '%s'" % old)
        if new.startswith(old + "/"):
            raise AgentError("EINVAL", "EINVAL: cannot move '%s' into itself" % old)
        source = os.lstat(old)
        if old == new:
            return files.entry(new, source)
        previous, replaced = _previous(old, self._keep()), _previous(new, self._keep())
        if os.path.lexists(new):
            _check_replace(source, new)
            journal.set_aside(new)
        os.rename(old, new)
        journal.undo.append(lambda: os.rename(new, old))
        return {**files.entry(new, os.lstat(new)), **kept(previous, replaced)}


def _check_replace(source: os.stat_result, target: str) -> None:
    """Refuse what rename(2) would refuse, before the target is set aside."""
    import errno

    target_st = os.lstat(target)
    source_dir, target_dir = stat.S_ISDIR(source.st_mode), stat.S_ISDIR(target_st.st_mode)
    if source_dir and not target_dir:
        raise NotADirectoryError(20, "Not a directory", target)
    if target_dir and not source_dir:
        raise IsADirectoryError(21, "Is a directory", target)
    if target_dir and os.listdir(target):
        raise OSError(errno.ENOTEMPTY, "Directory not empty", target)


def _error(exc: BaseException) -> Error:
    if isinstance(exc, AgentError):
        return exc.to_dict()
    if isinstance(exc, OSError):
        return os_error(exc).to_dict()
    return {"code": "EINVAL", "message": "bad operation: %s" % (exc,)}


def run(files: Files, operations: Any, atomic: bool, keep_previous: int = 0) -> BatchReply:
    """Apply the operations. Atomic: stop at the first failure and undo everything before
    it; the answer then holds `failed` (its index), `error` and `rolled_back`. Otherwise
    every operation is tried and each result says ok or its error."""
    if not isinstance(operations, list) or len(operations) > MAX_OPERATIONS:
        raise AgentError("EINVAL", "operations must be a list of at most %d" % MAX_OPERATIONS)
    clean(files)
    journal = Journal(files) if atomic else None
    batch = Batch(files, journal, keep_previous)
    results: List[Union[StepDone, StepFailed]] = []
    for index, operation in enumerate(operations):
        try:
            results.append({"ok": True, "result": batch.apply(operation)})
        except (AgentError, OSError, KeyError, TypeError, ValueError) as exc:
            if journal is None:
                results.append({"ok": False, "error": _error(exc)})
                continue
            complete = journal.rollback()
            return {"failed": index, "error": _error(exc), "rolled_back": complete}
    if journal is not None:
        journal.purge()
    return {"results": results}


def register(registry: Registry, files: Files) -> None:
    async def batch(session: Session, args: Dict[str, Any]) -> BatchReply:
        keep = args.get("keep_previous", 0)
        keep = keep if isinstance(keep, int) and not isinstance(keep, bool) else 0
        operations, atomic = args["operations"], bool(args.get("atomic", True))
        if _heavy(operations):
            return await off_loop(run, files, operations, atomic, keep)
        return run(files, operations, atomic, keep)

    registry.add("fs.batch", batch)


def _heavy(operations: Any) -> bool:
    """A batch worth the file thread: many operations, or many bytes to write."""
    if not isinstance(operations, list):
        return False
    if len(operations) > 64:
        return True
    size = sum(len(o.get("data") or "") for o in operations if isinstance(o, dict)
               and isinstance(o.get("data"), str))  # fmt: skip
    return size > OFF_LOOP_BYTES
