"""Sliding-window counters for login throttling (per account and per client IP)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

__all__ = ["SlidingWindow"]


class SlidingWindow:
    """Counts events per key over the last `window` seconds, in bounded memory.

    Keys are evicted oldest-first past `max_keys`, so a flood of distinct keys (a spray of
    e-mail addresses) cannot grow memory without bound.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self._max_keys = max_keys
        self._clock = clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def _live(self, key: str) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        horizon = self._clock() - self.window
        while events and events[0] <= horizon:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def retry_after(self, key: str) -> int | None:
        """Seconds until `key` may try again, or None when it is under its limit."""
        events = self._live(key)
        if events is None or len(events) < self.limit:
            return None
        return max(1, math.ceil(events[0] + self.window - self._clock()))

    def hit(self, key: str) -> None:
        events = self._live(key)
        if events is None:
            events = self._events[key] = deque()
        events.append(self._clock())
        self._events.move_to_end(key)
        while len(self._events) > self._max_keys:
            self._events.popitem(last=False)

    def reset(self, key: str) -> None:
        self._events.pop(key, None)
