"""The database handle: one async engine and its session factory, for SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from cloudcontainer.db.errors import DATABASE_ERRORS, database_error

__all__ = ["Database"]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the single writer; busy_timeout waits for the write lock
    # instead of failing with "database is locked" under concurrent requests.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    """Owns the engine; `session()` commits on success and rolls back on error. A database
    that is full or gone away raises `Unavailable` (`database_full`, `database_unavailable`):
    see db/errors.py."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        parsed = make_url(url)
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        options: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        else:
            options.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        # SQLite's cross-process locks (`exclusive`) are files beside the database.
        self._lock_dir = (
            Path(f"{parsed.database}.locks")
            if self.is_sqlite and parsed.database and parsed.database != ":memory:"
            else None
        )
        self.engine: AsyncEngine = create_async_engine(url, **options)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as session:
            try:
                yield session
                await session.commit()
            except BaseException as exc:
                # A connection that is gone cannot roll back; its transaction is gone with it.
                with contextlib.suppress(*DATABASE_ERRORS):
                    await session.rollback()
                mapped = database_error(exc) if isinstance(exc, DATABASE_ERRORS) else None
                if mapped is not None:
                    raise mapped from exc
                raise

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """Hold the lock `name` across every process using this database, for the block.

        For work several gateways could start at once and must not overlap (a snapshot's
        upload racing another's sweep of the same project's blobs). PostgreSQL: a
        session-level advisory lock on a connection of its own, which the server releases if
        this process dies. SQLite (one host): `flock` on a file beside the database, which
        the kernel releases likewise. Waits as long as the holder keeps it."""
        digest = hashlib.sha256(f"cloudcontainer:{name}".encode()).digest()
        if not self.is_sqlite:
            key = int.from_bytes(digest[:8], "big", signed=True)
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
                await connection.commit()  # no transaction stays open while the lock is held
                try:
                    yield
                finally:
                    with contextlib.suppress(*DATABASE_ERRORS):  # a lost connection released it
                        await connection.execute(
                            text("SELECT pg_advisory_unlock(:key)"), {"key": key}
                        )
                        await connection.commit()
            return
        if self._lock_dir is None:  # an in-memory database lives in this process only
            yield
            return
        self._lock_dir.mkdir(exist_ok=True)
        fd = os.open(self._lock_dir / f"{digest.hex()[:32]}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    async def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def aclose(self) -> None:
        await self.engine.dispose()
