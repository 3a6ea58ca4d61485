"""In-process publish/subscribe by topic (a container id), for the event WebSockets.

Subscribers get a bounded queue; a subscriber that falls behind loses its oldest events and
is told so with one `{"type": "overflow"}` event, instead of growing memory without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

__all__ = ["EventBus"]

Event = dict[str, Any]


class EventBus:
    def __init__(self, queue_size: int = 1024) -> None:
        self._queue_size = queue_size
        self._subscribers: dict[str, set[asyncio.Queue[Event]]] = {}

    def publish(self, topic: str, event: Event) -> None:
        for queue in self._subscribers.get(topic, ()):
            if queue.full():
                # Make room for the marker and the new event by dropping the two oldest.
                queue.get_nowait()
                if not queue.empty():
                    queue.get_nowait()
                queue.put_nowait({"type": "overflow"})
            queue.put_nowait(event)

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        self._subscribers.setdefault(topic, set()).add(queue)
        try:
            yield queue
        finally:
            subscribers = self._subscribers.get(topic, set())
            subscribers.discard(queue)
            if not subscribers:
                self._subscribers.pop(topic, None)

    def subscriber_count(self, topic: str) -> int:
        return len(self._subscribers.get(topic, ()))
