"""Tracked background tasks: nothing fire-and-forget; all drained or cancelled at shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

__all__ = ["TaskSet", "until_first_ends"]

log = structlog.get_logger(__name__)


class TaskSet:
    """Keeps a strong reference to each task, logs its failure, and closes them in order."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task failed", task=task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait for every task running now (tests use this to observe their effects)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def aclose(self, grace_seconds: float = 10.0) -> None:
        """Let running tasks finish for up to `grace_seconds`, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_seconds)
        for task in pending:
            log.warning("cancelling background task at shutdown", task=task.get_name())
            task.cancel()
        if pending:
            await asyncio.wait(pending)


async def until_first_ends(*coroutines: Coroutine[Any, Any, Any]) -> None:
    """Run the coroutines together until one of them ends, then cancel and await the others
    (a WebSocket's reader and writer: when one side is done, so is the connection)."""
    workers = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        await asyncio.wait(workers, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
