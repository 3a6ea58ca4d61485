"""What an operator may restrict about commands and typing: a deny list for the commands the
server runs on a caller's behalf (exec, and the AI runner's), and a rate for terminal input."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence

from cloudcontainer.errors import Forbidden
from cloudcontainer.terminals.commands import command_line

__all__ = ["CommandPolicy", "InputRate", "ReportBudget"]


class CommandPolicy:
    """Deny patterns (regular expressions, searched in the command line as a shell would show
    it: `npm 'run' 'dev'` is `npm run dev`). None by default: the sandbox is the boundary; the
    policy is for operators who want some commands not run by automation at all."""

    def __init__(self, deny_patterns: Sequence[str]) -> None:
        self._deny = [(pattern, re.compile(pattern)) for pattern in deny_patterns]

    def check(self, command: str, args: Sequence[str] = ()) -> None:
        line = command_line(command, args)
        for pattern, compiled in self._deny:
            if compiled.search(line):
                raise Forbidden(
                    f"This server's command policy does not allow this command (it matches "
                    f"{pattern!r}).",
                    code="command_denied",
                )


class InputRate:
    """A token bucket over the bytes typed into one terminal: bursts up to `burst` bytes go at
    once, beyond that input waits (the client's WebSocket is simply read more slowly), so a
    runaway client cannot flood a shell and nothing typed is lost."""

    def __init__(
        self, bytes_per_second: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = bytes_per_second
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated: float | None = None

    async def take(self, count: int) -> None:
        self._refill()
        self._tokens -= count
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.rate)

    def _refill(self) -> None:
        now = self._clock()
        if self._updated is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now


class ReportBudget:
    """How many records a sandbox may report: `per_minute` on average, as many at once, per
    key (a project). Past it a report is dropped, not queued: a process in the sandbox that
    forges records as fast as it can costs the gateway a counter, not a database row each."""

    def __init__(
        self,
        per_minute: int,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(per_minute)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, updated)
        self.dropped = 0

    def allow(self, key: str) -> bool:
        now = self._clock()
        tokens, updated = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - updated) * self.rate)
        allowed = tokens >= 1
        self._buckets[key] = (tokens - 1 if allowed else tokens, now)  # newest last
        if len(self._buckets) > self._max_keys:
            del self._buckets[next(iter(self._buckets))]
        if not allowed:
            self.dropped += 1
        return allowed
