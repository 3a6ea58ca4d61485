"""`Database.exclusive`: a lock across processes, on PostgreSQL (advisory locks) and SQLite
(flock beside the file). Two `Database` objects on one URL stand in for two gateways: each
has its own engine and connections, as another process would."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from cloudcontainer.db import Database


@pytest.fixture
async def two(database_url: str):  # type: ignore[no-untyped-def]
    first, second = Database(database_url), Database(database_url)
    yield first, second
    await first.aclose()
    await second.aclose()


async def test_a_second_holder_waits_until_the_first_lets_go(
    two: tuple[Database, Database],
) -> None:
    first, second = two
    order: list[str] = []
    waiting = asyncio.Event()

    async def one() -> None:
        async with first.exclusive("job"):
            order.append("first in")
            await waiting.wait()
            for _ in range(20):  # time for the second to get in, were the lock not held
                await asyncio.sleep(0.01)
            order.append("first out")

    async def other() -> None:
        while not order:
            await asyncio.sleep(0.005)
        waiting.set()
        async with second.exclusive("job"):
            order.append("second in")

    async with asyncio.timeout(30):
        await asyncio.gather(one(), other())
    assert order == ["first in", "first out", "second in"]


async def test_other_names_do_not_wait(two: tuple[Database, Database]) -> None:
    first, second = two
    async with first.exclusive("job"), asyncio.timeout(10), second.exclusive("another job"):
        pass


async def test_the_lock_is_free_again_after_an_error_in_the_block(
    two: tuple[Database, Database],
) -> None:
    first, second = two
    with pytest.raises(RuntimeError):
        async with first.exclusive("job"):
            raise RuntimeError("the work failed")
    async with asyncio.timeout(10), second.exclusive("job"):
        pass


async def test_a_waiter_that_is_cancelled_leaves_the_lock_to_the_next(
    two: tuple[Database, Database],
) -> None:
    first, second = two
    async with first.exclusive("job"):
        waiter = asyncio.create_task(_enter(second, "job"))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    async with asyncio.timeout(10), second.exclusive("job"):
        pass


async def test_postgresql_releases_the_lock_of_a_connection_that_died(
    postgres_url: str,
) -> None:
    """A gateway killed while it holds the lock: its connection ends, and with it the lock."""
    first, second = Database(postgres_url), Database(postgres_url)
    try:
        held = asyncio.Event()
        release = asyncio.Event()

        async def hold() -> None:
            async with first.exclusive("job"):
                held.set()
                await release.wait()

        holder = asyncio.create_task(hold())
        await held.wait()
        async with second.engine.connect() as connection:
            await connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
                )
            )
        async with asyncio.timeout(10), second.exclusive("job"):
            pass
        release.set()
        await holder
    finally:
        await first.aclose()
        await second.aclose()


async def _enter(database: Database, name: str) -> None:
    async with database.exclusive(name):
        pass
