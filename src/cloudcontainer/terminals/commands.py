"""The commands the server runs for users: a project's command history, and the audit log.

One row per command (who, which container, the command line, its exit code, when), written as
it starts and completed as it ends, so a command still running, or cut short by a crash, is on
record too.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from sqlalchemy import select, update

from cloudcontainer.db import CommandRecord, Database
from cloudcontainer.db.types import new_id, utcnow

__all__ = ["CommandLog", "command_line"]


def command_line(command: str, args: Sequence[str] = ()) -> str:
    """As a shell would show it: `npm 'run' 'dev'` is `npm run dev`."""
    return shlex.join([command, *args]) if args else command


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
