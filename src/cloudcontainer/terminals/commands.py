"""The project's command history: what ran in its containers, and who says so.

One row per command (which container, the command line, its exit code, when), written as it
starts and completed as it ends, so a command still running, or cut short by a crash, is on
record too. It is the tenant's history, not an audit log (issue 9): the rows of `exec` are
written by the gateway from the request it served (`reported_by: "gateway"`), but the lines
typed into `jsh` terminals are reported by the agent from inside the sandbox (`"sandbox"`), and
anything running there can forge them. So a reported line is cleaned before it is stored:
control characters (terminal escapes) are shown escaped, not kept; it is cut at
`MAX_REPORTED_CHARS`; and its exit code must be a 32-bit integer. How many may be reported is
bounded too (`ReportBudget`, and `prune_reported`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from sqlalchemy import delete, select, update

from cloudcontainer.db import CommandRecord, Database
from cloudcontainer.db.types import new_id, utcnow

__all__ = [
    "MAX_REPORTED_CHARS",
    "REPORTED_BY",
    "CommandLog",
    "clean_exit_code",
    "clean_reported_line",
    "command_line",
]

# Who wrote a row of each source: the gateway itself, or the sandbox (the agent's report).
REPORTED_BY = {"exec": "gateway", "shell": "sandbox"}
MAX_REPORTED_CHARS = 4096
# C0 and C1 controls and DEL (ESC starts every terminal escape), and the bidirectional
# overrides and isolates that make text display in another order than it runs.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_INT32 = range(-(2**31), 2**31)


def command_line(command: str, args: Sequence[str] = ()) -> str:
    """As a shell would show it: `npm 'run' 'dev'` is `npm run dev`."""
    return shlex.join([command, *args]) if args else command


def clean_reported_line(line: str) -> str:
    """A command line reported from a sandbox, safe to store and to show on a terminal:
    controls escaped as `\\x1b` (a tab too: one line stays one line), at most
    `MAX_REPORTED_CHARS` characters (cut ones end with `…`)."""
    cleaned = _UNSAFE.sub(lambda m: _escape(m.group()), line)
    if len(cleaned) > MAX_REPORTED_CHARS:
        cleaned = cleaned[: MAX_REPORTED_CHARS - 1] + "…"
    return cleaned


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def clean_exit_code(code: object) -> int | None:
    """An exit code as reported: an int the database column can hold, or None."""
    if isinstance(code, int) and not isinstance(code, bool) and code in _INT32:
        return code
    return None


class CommandLog:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def started(
        self, *, project_id: str, container_id: str, user_id: str | None, source: str,
        command: str,
    ) -> str:  # fmt: skip
        record = CommandRecord(
            id=new_id("cmd"), project_id=project_id, container_id=container_id,
            user_id=user_id, source=source, command=command,
        )  # fmt: skip
        async with self._db.session() as session:
            session.add(record)
        return record.id

    async def finished(self, record_id: str, exit_code: int | None) -> None:
        async with self._db.session() as session:
            await session.execute(
                update(CommandRecord)
                .where(CommandRecord.id == record_id)
                .values(exit_code=exit_code, finished_at=utcnow())
            )

    async def prune_reported(self, project_id: str, source: str, keep: int) -> None:
        """Keep the newest `keep` rows of `source` in the project (a sandbox that reports
        without end must not fill the database); rows of other sources are left alone."""
        oldest_kept = (
            select(CommandRecord.started_at)
            .where(CommandRecord.project_id == project_id, CommandRecord.source == source)
            .order_by(CommandRecord.started_at.desc())
            .offset(keep - 1)
            .limit(1)
            .scalar_subquery()
        )
        async with self._db.session() as session:
            await session.execute(
                delete(CommandRecord).where(
                    CommandRecord.project_id == project_id,
                    CommandRecord.source == source,
                    CommandRecord.started_at < oldest_kept,
                )
            )

    async def history(self, project_id: str, query: str, limit: int) -> list[CommandRecord]:
        """Newest first; `query` is a plain substring of the command line."""
        statement = (
            select(CommandRecord)
            .where(CommandRecord.project_id == project_id)
            .order_by(CommandRecord.started_at.desc(), CommandRecord.id.desc())
            .limit(limit)
        )
        if query:
            statement = statement.where(CommandRecord.command.contains(query, autoescape=True))
        async with self._db.session() as session:
            return list(await session.scalars(statement))
