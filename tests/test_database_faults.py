"""The database's disk full, or the database gone: 503 with a JSON error, never a 500; nothing
half-written stays; once space (or the server) is back, the service works again (issue 9).

Real faults only: SQLite and a PostgreSQL tablespace on small tmpfs mounts that the test fills
up, and a PostgreSQL server that the test stops under the running gateway. Needs root (mount).
"""

from __future__ import annotations

import errno
import os
import pwd
import sqlite3
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from cloudcontainer.audit import actions
from cloudcontainer.db.errors import database_error
from tests.conftest import Api, make_settings, running_api
from tests.support.pgcluster import Cluster
from tests.support.smtp import Mailbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

DESCRIPTION = "x" * 2000


@pytest.fixture
def small_fs() -> Iterator[Path]:
    # Not under tmp_path: PostgreSQL's user must reach it (pytest's base is root's alone).
    mount = Path(tempfile.mkdtemp(prefix="cc-small-"))
    mount.chmod(0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", mount], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", mount], check=False)
        mount.rmdir()


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no byte left."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        chunk = b"\0" * 65536
        while True:
            try:
                out.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        while True:  # the last partial block
            try:
                out.write(b"\0")
            except OSError:
                break
    return filler


async def create_until_refused(api: Api, headers: dict[str, str], prefix: str) -> list[int]:
    """Create projects until one is refused; every answer is 201 or the JSON 503."""
    statuses = []
    for n in range(2000):
        response = await api.client.post(
            "/api/projects", json={"name": f"{prefix}{n}", "description": DESCRIPTION},
            headers=headers,
        )  # fmt: skip
        statuses.append(response.status_code)
        assert response.status_code in (201, 503), response.text
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "database_full", response.text
            break
    return statuses


async def project_names(api: Api, headers: dict[str, str]) -> set[str]:
    names: set[str] = set()
    offset = 0
    while True:
        page = await api.client.get(
            "/api/projects", params={"limit": 100, "offset": offset}, headers=headers
        )
        assert page.status_code == 200, page.text
        items = page.json()["items"]
        names |= {item["name"] for item in items}
        if len(items) < 100:
            return names
        offset += 100


async def outage_then_recovery(api: Api, space: Path) -> None:
    admin = await api.user("root@example.com", admin=True)
    filled = fill(space)
    statuses = await create_until_refused(api, admin.headers, "p")
    assert statuses[-1] == 503, "the disk never filled up"
    refused = f"p{len(statuses) - 1}"
    # Reads still answer; a failed login is answered (its audit record waits in the queue).
    assert (await api.client.get("/api/auth/me", headers=admin.headers)).status_code == 200
    wrong = await api.client.post(
        "/api/auth/login", json={"email": admin.email, "password": "wrong password here"}
    )
    assert wrong.status_code == 401
    filled.unlink()  # space again
    names = await project_names(api, admin.headers)
    assert refused not in names  # nothing of the refused write stayed
    assert len(names) == len(statuses) - 1
    again = await api.client.post(
        "/api/projects", json={"name": refused, "description": DESCRIPTION}, headers=admin.headers
    )
    assert again.status_code == 201, again.text
    audit = await api.client.get(
        "/api/admin/audit", params={"action": actions.LOGIN_FAILED}, headers=admin.headers
    )
    assert audit.status_code == 200
    assert [e["actor_email"] for e in audit.json()["items"]] == [admin.email]


@pytest.fixture
async def sqlite_on_small_fs(
    tmp_path: Path, small_fs: Path, smtp: tuple[Mailbox, int], mailbox: Mailbox
) -> AsyncIterator[Api]:
    settings = make_settings(tmp_path, f"sqlite+aiosqlite:///{small_fs / 'cc.db'}", smtp[1])
    async with running_api(settings, mailbox) as api:
        yield api


async def test_sqlite_disk_full_answers_503_and_recovers(
    sqlite_on_small_fs: Api, small_fs: Path
) -> None:
    await outage_then_recovery(sqlite_on_small_fs, small_fs)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


async def test_postgresql_tablespace_full_answers_503_and_recovers(
    tmp_path: Path, small_fs: Path, cluster: Cluster, smtp: tuple[Mailbox, int], mailbox: Mailbox
) -> None:
    postgres = pwd.getpwnam("postgres")
    space = small_fs / "pg"
    space.mkdir()
    os.chown(space, postgres.pw_uid, postgres.pw_gid)
    cluster.psql("postgres", f"CREATE TABLESPACE small LOCATION '{space}'")
    cluster.psql("postgres", "CREATE DATABASE cc TABLESPACE small")
    settings = make_settings(tmp_path, cluster.url("cc"), smtp[1])
    async with running_api(settings, mailbox) as api:
        await outage_then_recovery(api, small_fs)


async def test_postgresql_gone_answers_503_then_works_when_back(
    tmp_path: Path, cluster: Cluster, smtp: tuple[Mailbox, int], mailbox: Mailbox
) -> None:
    cluster.psql("postgres", "CREATE DATABASE cc")
    settings = make_settings(tmp_path, cluster.url("cc"), smtp[1])
    async with running_api(settings, mailbox) as api:
        ada = await api.user("ada@example.com")
        cluster.stop()
        for method, path, body in (
            ("POST", "/api/projects", {"name": "while down"}),
            ("GET", "/api/projects", None),
            ("POST", "/api/auth/login", {"email": ada.email, "password": "wrong password"}),
        ):
            response = await api.client.request(method, path, json=body, headers=ada.headers)
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "database_unavailable"
        ready = await api.client.get("/readyz")
        assert ready.status_code == 503
        cluster.start()
        created = await api.client.post(
            "/api/projects", json={"name": "after"}, headers=ada.headers
        )
        assert created.status_code == 201, created.text
        names = {p["name"] for p in (await api.client.get("/api/projects", headers=ada.headers))
                 .json()["items"]}  # fmt: skip
        assert names == {"after"}


def _wrapped(orig: Exception) -> BaseException:
    """`orig` as SQLAlchemy raises it from a driver."""
    return DBAPIError.instance("INSERT ...", None, orig, Exception)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (_wrapped(sqlite3.OperationalError("database or disk is full")), "database_full"),
        (_wrapped(sqlite3.OperationalError("disk I/O error")), "database_unavailable"),
        (_wrapped(sqlite3.OperationalError("database is locked")), "database_unavailable"),
        (
            _wrapped(sqlite3.OperationalError("unable to open database file")),
            "database_unavailable",
        ),
        (_wrapped(asyncpg.exceptions.DiskFullError("no space")), "database_full"),
        (
            _wrapped(asyncpg.exceptions.ConnectionDoesNotExistError("closed")),
            "database_unavailable",
        ),
        (_wrapped(asyncpg.exceptions.CannotConnectNowError("starting")), "database_unavailable"),
        (_wrapped(asyncpg.exceptions.AdminShutdownError("bye")), "database_unavailable"),
        (_wrapped(asyncpg.exceptions.TooManyConnectionsError("busy")), "database_unavailable"),
        (ConnectionRefusedError(111, "refused"), "database_unavailable"),
        (PoolTimeout("pool"), "database_unavailable"),
        (_wrapped(sqlite3.IntegrityError("UNIQUE constraint failed")), None),
        (_wrapped(asyncpg.exceptions.UniqueViolationError("dup")), None),
        (_wrapped(sqlite3.OperationalError("no such table: x")), None),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_every_database_failure_maps_to_its_answer(error: BaseException, code: str | None) -> None:
    """The table in db/errors.py, one driver exception each (the mapping test httpx keeps)."""
    mapped = database_error(error)
    assert (mapped.code if mapped else None) == code
    if mapped is not None:
        assert mapped.status_code == 503
