"""The database failures a client is told about: full, or not answering (issue 9).

A write the database cannot take because its disk is full, or a database that went away,
is not the request's fault and not a bug: it answers `503 database_full` or
`503 database_unavailable`, never a 500 with a traceback. Its transaction is rolled back, so
nothing of the request stays. Other database errors (a constraint violated, bad SQL) are bugs
of the caller and are left alone.

    sqlite3   SQLITE_FULL "database or disk is full"                 -> database_full
              SQLITE_IOERR "disk I/O error", SQLITE_CANTOPEN,
              SQLITE_BUSY "database is locked"                       -> database_unavailable
    asyncpg   SQLSTATE 53100 disk_full                               -> database_full
              class 08 (connection), 53 (resources), 57P0x (shutdown),
              a closed connection, a refused connect (a raw
              ConnectionError: asyncpg's connect is not wrapped)     -> database_unavailable
    SQLAlchemy pool timeout                                          -> database_unavailable
"""

from __future__ import annotations

import sqlite3

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from cloudcontainer.errors import Unavailable

__all__ = ["DATABASE_ERRORS", "database_error"]

FULL = "database_full"
UNAVAILABLE = "database_unavailable"
_SQLITE_UNAVAILABLE = ("disk i/o error", "unable to open database", "database is locked")
_PG_UNAVAILABLE_STATES = ("57P01", "57P02", "57P03")

# What `database_error` may recognise: catch these, then ask it.
DATABASE_ERRORS: tuple[type[Exception], ...] = (DBAPIError, PoolTimeout, ConnectionError)


def database_error(exc: BaseException) -> Unavailable | None:
    """The client-facing error for `exc`, or None when it is not a full or absent database."""
    code = _classify(exc)
    if code == FULL:
        return Unavailable("The database is out of space; try again later.", code=FULL)
    if code == UNAVAILABLE:
        return Unavailable("The database is not reachable; try again later.", code=UNAVAILABLE)
    return None


def _classify(exc: BaseException) -> str | None:
    if isinstance(exc, PoolTimeout):
        return UNAVAILABLE
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return UNAVAILABLE
        cause = exc.orig.__cause__ if exc.orig is not None else None
        return _classify_driver(exc.orig) or _classify_driver(cause)
    if isinstance(exc, ConnectionError):  # asyncpg's connect (a refused one), unwrapped
        return UNAVAILABLE
    return None


def _classify_driver(orig: BaseException | None) -> str | None:
    if orig is None:
        return None
    if isinstance(orig, sqlite3.Error):
        message = str(orig).lower()
        if "database or disk is full" in message:
            return FULL
        return UNAVAILABLE if any(part in message for part in _SQLITE_UNAVAILABLE) else None
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(state, str):
        if state == "53100":
            return FULL
        if state.startswith(("08", "53")) or state in _PG_UNAVAILABLE_STATES:
            return UNAVAILABLE
    name = type(orig).__name__
    if name in ("ConnectionDoesNotExistError", "InterfaceError") and "closed" in str(orig):
        return UNAVAILABLE
    if isinstance(orig, (ConnectionError, TimeoutError)):
        return UNAVAILABLE
    return None
