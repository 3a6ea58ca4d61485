"""File watches of one event-WebSocket client, relayed from the container's agent.

The agent applies each watch's globs and reads the bytes (agent/watch.py); this side names
the subscriptions, forwards their batches in order, and keeps them whole when things go
wrong, using the agent's journal instead of buffering:
- a client that reads slower than files change stops being sent batches once
  `max_pending_bytes` wait for it; when it has caught up, the watch is re-subscribed "since"
  the last batch it was given, so it still sees every change (and each file's final bytes);
- when the agent link is replaced (the container restarted, the agent crashed), every watch is
  re-subscribed on the new link since its cursor (a new agent answers with a full `resync`).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import structlog

from cloudcontainer.agent.messages import SubscribeArgs, WatchBatch
from cloudcontainer.agentlink import watch as agent_watch
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError, AgentUnavailable, agent_errors
from cloudcontainer.errors import BadRequest, CloudContainerError, Conflict
from cloudcontainer.observability.metrics import Metrics
from cloudcontainer.sandbox.service import ContainerService

__all__ = ["WatchFeed", "WatchRequest"]

log = structlog.get_logger(__name__)

Message = dict[str, Any]
MAX_WATCHES = 16


@dataclass(slots=True)
class WatchRequest:
    """What a client asked for (validated by the API layer)."""

    id: str
    include: list[str]
    exclude: list[str]
    content: bool = True
    since: str | None = None
    initial: bool = False


@dataclass(slots=True)
class _Watch:
    request: WatchRequest
    # The agent's name for the subscription: a new one each time it is (re)subscribed, so a
    # batch the replaced subscription sent meanwhile is recognised and dropped (the new
    # subscription's replay holds what it had).
    agent_id: str = ""
    cursor: str | None = None  # of the last batch handed to the client
    lagging: bool = False


class WatchFeed:
    """Watches of one client. `deliver(message, size)` queues a message for the client; the
    caller reports each sent fs message back through `sent(size)`, so the feed knows how much
    waits for the client."""

    def __init__(
        self, containers: ContainerService, owner_id: str, container_id: str,
        deliver: Callable[[Message, int], None], metrics: Metrics,
        max_pending_bytes: int = 8 * 1024 * 1024,
    ) -> None:  # fmt: skip
        self.containers = containers
        self.owner_id = owner_id
        self.container_id = container_id
        self.deliver = deliver
        self.max_pending_bytes = max_pending_bytes
        self.metrics = metrics
        self._watches: dict[str, _Watch] = {}
        self._link: AgentClient | None = None  # listened to
        self._subscribed_on: AgentClient | None = None  # the watches live on this one
        self._unlisten: Callable[[], None] | None = None
        self._pending_bytes = 0
        self._token = secrets.token_hex(6)
        self._generations = itertools.count(1)
        self._lock = asyncio.Lock()

    # -- client commands ------------------------------------------------------------------

    async def watch(self, request: WatchRequest) -> Message:
        """Subscribe (or re-subscribe under the same id) and answer the client."""
        if request.id not in self._watches and len(self._watches) >= MAX_WATCHES:
            raise Conflict(f"At most {MAX_WATCHES} watches per connection.", code="too_many")
        async with self._lock:
            link = await self._ensure_link(start=True)
            if link is None:  # pragma: no cover - agent() answers a link or raises
                raise AgentUnavailable("The container is not running.")
            previous = self._watches.get(request.id)
            watch = _Watch(request, previous.agent_id if previous else "", cursor=request.since)
            self._watches[request.id] = watch
            try:
                answer = await self._subscribe(link, watch, request.since, request.initial)
            except BaseException:
                self._watches.pop(request.id, None)
                raise
        return {"type": "watching", "id": request.id, **answer}

    async def unwatch(self, watch_id: str) -> Message:
        watch = self._watches.pop(watch_id, None)
        if watch is None:
            raise BadRequest(f"No watch {watch_id!r}.", code="unknown_watch")
        await self._unsubscribe_quietly(watch.agent_id)
        return {"type": "unwatched", "id": watch_id}

    async def close(self) -> None:
        for watch in list(self._watches.values()):
            await self._unsubscribe_quietly(watch.agent_id)
        self._watches.clear()
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    # -- flow control ---------------------------------------------------------------------

    def sent(self, size: int) -> None:
        """The client was given an fs message of `size` (as told to `deliver`)."""
        self._pending_bytes -= size

    async def caught_up(self) -> None:
        """The client has read everything: re-subscribe lagging watches from their cursor."""
        lagging = [w for w in self._watches.values() if w.lagging]
        if not lagging:
            return
        async with self._lock:
            link = await self._ensure_link(start=False)
            if link is None:
                return
            for watch in lagging:
                watch.lagging = False
                self.metrics.watch_resumes.inc()
                # No cursor yet: the initial state report was cut short; ask for it again.
                initial = watch.cursor is None and watch.request.initial
                await self._subscribe(link, watch, watch.cursor, initial)

    async def relink(self) -> None:
        """The container is running again, perhaps with a new agent: follow it."""
        if not self._watches:
            return
        async with self._lock:
            link = await self._ensure_link(start=False)
            if link is None or link is self._subscribed_on:
                return
            for watch in self._watches.values():
                self.metrics.watch_resumes.inc()
                await self._subscribe(link, watch, watch.cursor, False)

    # -- the agent side -------------------------------------------------------------------

    async def _ensure_link(self, *, start: bool) -> AgentClient | None:
        """The container's live link, listening to it; with `start`, a stopped container is
        started (a client asking to watch wants it), else None when it is not running."""
        link: AgentClient | None
        if start:
            link = await self.containers.agent(self.owner_id, self.container_id)
        else:
            link = self.containers.live_link(self.owner_id, self.container_id)
        if link is None:
            return None
        if link is not self._link:
            if self._unlisten is not None:
                self._unlisten()
            self._link = link
            self._unlisten = link.on_event(self._on_agent_event)
        return link

    async def _subscribe(
        self, link: AgentClient, watch: _Watch, since: str | None, initial: bool
    ) -> Message:
        request = watch.request
        replaced, watch.agent_id = watch.agent_id, f"{self._token}:{next(self._generations)}"
        args: SubscribeArgs = {
            "id": watch.agent_id, "include": request.include, "exclude": request.exclude,
            "content": request.content, "initial": initial, "replaces": replaced,
        }  # fmt: skip
        if since is not None:
            args["since"] = since
        with agent_errors():
            answer = await agent_watch.subscribe(link, args)
        self._subscribed_on = link
        if not watch.lagging:  # every batch of the answer reached the client's queue
            watch.cursor = answer["cursor"]
        return {"cursor": answer["cursor"], "resync": bool(answer.get("resync"))}

    def _on_agent_event(self, name: str, event: dict[str, Any]) -> None:
        if name != "fs.watch":
            return
        data = cast(WatchBatch, event)  # the link checked it against the schema
        watch = self._by_agent_id(data["sub"])
        if watch is None or watch.lagging:
            return
        content = sum(len(event.get("buffer", "")) for event in data["events"])
        size = content + 120 * len(data["events"])
        if self._pending_bytes + size > self.max_pending_bytes and self._pending_bytes > 0:
            watch.lagging = True  # resumed from watch.cursor once the client caught up
            return
        if data.get("cursor"):  # a part of a state report has none
            watch.cursor = data["cursor"]
        self._pending_bytes += size
        self.metrics.watch_events.inc(len(data["events"]))
        self.metrics.watch_bytes.inc(content)
        message: Message = {"type": "fs", "watch": watch.request.id, "cursor": data["cursor"],
                            "events": data["events"]}  # fmt: skip
        if data.get("resync"):
            message["resync"] = True
        self.deliver(message, size)

    def _by_agent_id(self, agent_id: str) -> _Watch | None:
        for watch in self._watches.values():
            if watch.agent_id == agent_id:
                return watch
        return None

    async def _unsubscribe_quietly(self, agent_id: str) -> None:
        if self._link is None or self._link.closed.is_set():
            return
        try:
            await agent_watch.unsubscribe(self._link, agent_id)
        except (AgentUnavailable, AgentOpError, CloudContainerError, TimeoutError):
            log.debug("watch cleanup failed", container_id=self.container_id)
