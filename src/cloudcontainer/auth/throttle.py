"""Sliding-window counters for login throttling (per account and per client IP).

`SlidingWindow` counts in this process (the embedded default: one gateway). With `redis_url`
set, `RedisWindow` counts in Redis instead, so several gateways behind one balancer share one
count: otherwise an attacker spreading guesses over N gateways would get N times the tries.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cloudcontainer.errors import Unavailable

__all__ = ["RedisWindow", "SlidingWindow", "Window"]


class Window(Protocol):
    limit: int
    window: float

    async def retry_after(self, key: str) -> int | None:
        """Seconds until `key` may try again, or None when it is under its limit."""

    async def hit(self, key: str) -> None: ...

    async def reset(self, key: str) -> None: ...


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

    async def retry_after(self, key: str) -> int | None:
        events = self._live(key)
        if events is None or len(events) < self.limit:
            return None
        return max(1, math.ceil(events[0] + self.window - self._clock()))

    async def hit(self, key: str) -> None:
        events = self._live(key)
        if events is None:
            events = self._events[key] = deque()
        events.append(self._clock())
        self._events.move_to_end(key)
        while len(self._events) > self._max_keys:
            self._events.popitem(last=False)

    async def reset(self, key: str) -> None:
        self._events.pop(key, None)


# Both scripts read the time from Redis, so gateways whose clocks differ count alike. A key
# is a sorted set of hit times (milliseconds) that expires with its newest hit's window:
# memory is bounded by the keys hit in the last window.
_HIT = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - ARGV[1])
redis.call('ZADD', KEYS[1], ms, redis.call('INCR', KEYS[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
"""
_RETRY_AFTER = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then return -1 end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, math.ceil((oldest[2] + ARGV[1] - ms) / 1000))
"""


class RedisWindow:
    """The same window, counted in Redis under `cc:throttle:<name>:<key>`.

    Redis being down fails closed, with 503 `redis_unavailable`: a throttle that let every
    try through while its store is away would be the attacker's window."""

    def __init__(self, redis: Redis, name: str, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._redis = redis
        self._prefix = f"cc:throttle:{name}:"
        self._window_ms = max(1, math.ceil(window * 1000))
        self._hit = redis.register_script(_HIT)
        self._retry_after = redis.register_script(_RETRY_AFTER)

    async def retry_after(self, key: str) -> int | None:
        try:
            seconds = await self._retry_after(
                keys=[self._prefix + key], args=[self._window_ms, self.limit]
            )
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return None if int(seconds) < 0 else int(seconds)

    async def hit(self, key: str) -> None:
        try:
            await self._hit(keys=[self._prefix + key, self._prefix + key + ":n"],
                            args=[self._window_ms])  # fmt: skip
        except RedisError as exc:
            raise _unavailable(exc) from exc

    async def reset(self, key: str) -> None:
        try:
            await self._redis.delete(self._prefix + key, self._prefix + key + ":n")
        except RedisError as exc:
            raise _unavailable(exc) from exc


def _unavailable(exc: RedisError) -> Unavailable:
    return Unavailable(
        f"Login is unavailable: Redis does not answer ({type(exc).__name__}).",
        code="redis_unavailable",
    )
