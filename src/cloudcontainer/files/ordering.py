"""Per-client FIFO for file calls: requests of one client reach the agent in the order issued.

bolt fires fs calls without awaiting them (mkdirs, then writes) and relies on them running in
order; over HTTP they travel on different connections and can arrive in any order. A client
that sends `X-Client-Id` and `X-Client-Seq` (1, 2, 3, … per client) gets them applied in seq
order per container: a request waits until its predecessor has been handed to the agent
(which then runs one session's requests in order). A seq already passed goes at once. A gap
(a predecessor that never arrives) is skipped after `wait_seconds`, so a lost request cannot
block its client forever; a predecessor that is present but not yet handed over (still being
authorized, its body still uploading) is waited for, so requests never overtake each other.

Memory is bounded: at most `max_clients` sequences are remembered, the least recently used
forgotten first. A forgotten client's next request waits for its predecessor as a new client's
would (up to `wait_seconds`), then goes.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from cloudcontainer.agentlink.client import REQUEST_SENT

__all__ = ["ClientOrder", "Sequencer"]


@dataclass(slots=True)
class _Sequence:
    """One client's progress in one container."""

    passed: int = 0  # every seq <= passed has been handed over (or skipped)
    handed: set[int] = field(default_factory=set)  # handed over beyond `passed`
    waiting: dict[int, asyncio.Event] = field(default_factory=dict)
    holding: set[int] = field(default_factory=set)  # its turn came, not yet handed over

    def advance(self) -> None:
        while self.passed + 1 in self.handed:
            self.passed += 1
            self.handed.discard(self.passed)
        for seq, event in self.waiting.items():
            if seq <= self.passed + 1:
                event.set()

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.holding)


@dataclass(frozen=True, slots=True)
class ClientOrder:
    """What a request said about its place: a client id and its seq (both or neither)."""

    client_id: str
    seq: int


class Sequencer:
    def __init__(self, wait_seconds: float, max_clients: int = 10_000) -> None:
        self.wait_seconds = wait_seconds
        self.max_clients = max_clients
        self._sequences: OrderedDict[tuple[str, str], _Sequence] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sequences)

    def _sequence(self, key: tuple[str, str]) -> _Sequence:
        sequence = self._sequences.get(key)
        if sequence is None:
            sequence = self._sequences[key] = _Sequence()
            self._forget_idle()
        self._sequences.move_to_end(key)
        return sequence

    def _forget_idle(self) -> None:
        excess = len(self._sequences) - self.max_clients
        for key in list(self._sequences):
            if excess <= 0:
                break
            if not self._sequences[key].busy:
                del self._sequences[key]
                excess -= 1

    def waiting(self, container_id: str, client_id: str) -> int:
        """How many of this client's requests wait for a predecessor (what arrived early)."""
        sequence = self._sequences.get((container_id, client_id))
        return 0 if sequence is None else len(sequence.waiting)

    @asynccontextmanager
    async def turn(self, container_id: str, order: ClientOrder | None) -> AsyncIterator[None]:
        """Wait for this request's turn; its successor may go once the body of the `with`
        hands a request to the agent, or leaves."""
        if order is None:
            yield
            return
        sequence = self._sequence((container_id, order.client_id))
        await self._wait(sequence, order.seq)
        sequence.holding.add(order.seq)
        task = asyncio.current_task()
        done = False

        def hand_over() -> None:
            nonlocal done
            # Tasks started inside the request (a container's bring-up) inherit this context;
            # only the request's own call to the agent counts.
            if done or asyncio.current_task() is not task:
                return
            done = True
            sequence.holding.discard(order.seq)
            if order.seq > sequence.passed:
                sequence.handed.add(order.seq)
                sequence.advance()

        token = REQUEST_SENT.set(hand_over)
        try:
            yield
        finally:
            REQUEST_SENT.reset(token)
            hand_over()

    async def _wait(self, sequence: _Sequence, seq: int) -> None:
        if seq <= sequence.passed + 1:
            return
        event = sequence.waiting.setdefault(seq, asyncio.Event())
        try:
            while not event.is_set():
                try:
                    await asyncio.wait_for(event.wait(), self.wait_seconds)
                except TimeoutError:
                    self._skip_gap(sequence, seq)
        finally:
            sequence.waiting.pop(seq, None)

    @staticmethod
    def _skip_gap(sequence: _Sequence, seq: int) -> None:
        """After a wait in vain: if no earlier request of this client is present, the ones
        before `seq` count as lost and `seq` goes; otherwise keep waiting for them."""
        present = [s for s in (*sequence.waiting, *sequence.holding) if s > sequence.passed]
        if min(present, default=seq) >= seq:
            sequence.passed = max(sequence.passed, seq - 1)
            sequence.advance()


CLIENT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
CLIENT_SEQ_PATTERN = r"^[1-9][0-9]{0,15}$"


def parse_order(
    client_id: str | None, seq: str | None, invalid: Callable[[str], Exception]
) -> ClientOrder | None:
    """The order headers of a request; `invalid(message)` is raised for malformed ones."""
    import re

    if client_id is None and seq is None:
        return None
    if client_id is None or seq is None:
        raise invalid("X-Client-Id and X-Client-Seq go together.")
    if not re.fullmatch(CLIENT_ID_PATTERN, client_id):
        raise invalid("X-Client-Id must be 1 to 64 of A-Z a-z 0-9 . _ : -")
    if not re.fullmatch(CLIENT_SEQ_PATTERN, seq):
        raise invalid("X-Client-Seq must be a whole number from 1.")
    return ClientOrder(client_id, int(seq))
