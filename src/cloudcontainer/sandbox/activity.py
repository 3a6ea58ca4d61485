"""When each container was last used, and which have clients connected: what the idle stop
(sandbox/supervisor.py) reads."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Activity"]


class Activity:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        # Idle time is read from `clock` (here and in the supervisor's idle pass alike): a test
        # moves a fake one instead of waiting out an idle timeout.
        self.clock = clock
        self.last_active: dict[str, float] = {}
        self._held: Counter[str] = Counter()  # container id → client connections open

    def touch(self, container_id: str) -> None:
        self.last_active[container_id] = self.clock()

    @contextmanager
    def hold(self, container_id: str) -> Iterator[None]:
        """A client connection (a terminal or event WebSocket): while one is open the
        container is never idle-stopped, and its idle time counts from the last one's end."""
        self._held[container_id] += 1
        self.touch(container_id)
        try:
            yield
        finally:
            self._held[container_id] -= 1
            if self._held[container_id] <= 0:
                del self._held[container_id]
            if container_id in self.last_active:  # not for a container deleted meanwhile
                self.touch(container_id)

    def held(self, container_id: str) -> bool:
        return self._held[container_id] > 0

    def forget(self, container_id: str) -> None:
        self.last_active.pop(container_id, None)
