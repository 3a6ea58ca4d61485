"""Text search through the agent (`search.text`), relayed as NDJSON while ripgrep runs.

The agent sends each file's matches as a `search.file` event tagged with a search id this
side picks, then answers with the totals; both travel in order on the one link, so every
file event has arrived when the answer does. Nothing is answered before the first file (or
the end): an invalid regex, a missing folder or a sandbox without rg then still become a
plain 4xx/5xx instead of a broken stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from cloudcontainer.agent.messages import SearchFile, SearchQuery, SearchTotals
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import (
    AgentOpError,
    AgentUnavailable,
    ErrorTable,
    agent_errors,
)
from cloudcontainer.agentlink.search import cancel_search, search_text
from cloudcontainer.errors import BadRequest, CloudContainerError, Unavailable
from cloudcontainer.tasks import TaskSet

__all__ = ["TextSearch"]

_ERRORS: ErrorTable = {
    "EREGEX": (BadRequest, "invalid_regex"),
    "ENOTSUP": (Unavailable, "search_unavailable"),
}


def _line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode() + b"\n"


class TextSearch:
    """One search on one agent link: `start()` waits for its first result, `lines()` relays."""

    def __init__(
        self, link: AgentClient, tasks: TaskSet, query: SearchQuery, timeout: float
    ) -> None:
        self.link = link
        self.tasks = tasks
        self.query = query
        self.timeout = timeout
        self.search_id = secrets.token_hex(8)
        self.files: asyncio.Queue[SearchFile] = asyncio.Queue()
        self.arrived = asyncio.Event()
        self._call: asyncio.Future[SearchTotals] | None = None
        self._unsubscribe: Callable[[], None] | None = link.on_event(self._on_event)

    def _on_event(self, name: str, data: dict[str, Any]) -> None:
        if name == "search.file" and data["search_id"] == self.search_id:
            self.files.put_nowait(cast(SearchFile, data))  # the link checked it
            self.arrived.set()
        elif name == "link.closed":
            self.arrived.set()

    async def start(self) -> None:
        """Run the search until it produced something; its early failures raise here."""
        self._call = asyncio.ensure_future(
            search_text(self.link, self.search_id, self.query, timeout=self.timeout)
        )
        try:
            await self._next()
            if self._call.done() and self.files.empty():
                with agent_errors(_ERRORS):
                    self._call.result()
        except BaseException:
            await self.close()
            raise

    async def _next(self) -> None:
        """Wait until a file arrived or the search ended."""
        assert self._call is not None
        while self.files.empty() and not self._call.done():
            self.arrived.clear()
            waiter = asyncio.ensure_future(self.arrived.wait())
            try:
                pending: set[asyncio.Future[Any]] = {self._call, waiter}
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    async def lines(self) -> AsyncIterator[bytes]:
        assert self._call is not None
        try:
            while True:
                while not self.files.empty():
                    data = self.files.get_nowait()
                    yield _line({"type": "file", "path": data["path"], "matches": data["matches"]})
                if self._call.done():
                    break
                await self._next()
            with agent_errors(_ERRORS):
                totals = self._call.result()
            yield _line({"type": "done", **totals})
        except CloudContainerError as exc:
            yield _line({"type": "error", "code": exc.code, "message": exc.message})
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop listening; a search still running (the client went away) is cancelled."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._call is not None and not self._call.done():
            self._call.cancel()
            # In a task of its own: the caller may itself be cancelled (client gone).
            self.tasks.spawn(self._cancel(), name=f"search-cancel:{self.search_id}")

    async def _cancel(self) -> None:
        with contextlib.suppress(AgentUnavailable, AgentOpError):
            await cancel_search(self.link, self.search_id, timeout=5)
