"""The per-client FIFO in isolation: seq order, lost requests skipped, bounded memory."""

from __future__ import annotations

import asyncio
import random

from cloudcontainer.agentlink.client import REQUEST_SENT
from cloudcontainer.files.ordering import ClientOrder, Sequencer

WAIT = 0.05  # the sequencer's patience in these tests; no timing is asserted


async def enter(
    sequencer: Sequencer, seq: int, log: list[int], after: asyncio.Event | None = None
) -> None:
    if after is not None:
        await after.wait()
    async with sequencer.turn("ctr", ClientOrder("client", seq)):
        log.append(seq)
        await asyncio.sleep(0)  # let others try to overtake


async def test_requests_arriving_shuffled_run_in_seq_order() -> None:
    sequencer = Sequencer(wait_seconds=10)
    log: list[int] = []
    seqs = list(range(1, 31))
    random.Random(7).shuffle(seqs)
    others_waiting = asyncio.Event()

    async def release_the_first_five() -> None:
        while sequencer.waiting("ctr", "client") < 25:
            await asyncio.sleep(0)
        others_waiting.set()

    # The first five arrive last of all: once the 25 others wait for them.
    await asyncio.gather(
        release_the_first_five(),
        *(enter(sequencer, s, log, others_waiting if s <= 5 else None) for s in seqs),
    )
    assert log == list(range(1, 31))


async def test_clients_and_containers_are_ordered_separately() -> None:
    sequencer = Sequencer(wait_seconds=10)
    log: list[str] = []

    async def one(container: str, client: str, seq: int) -> None:
        async with sequencer.turn(container, ClientOrder(client, seq)):
            log.append(f"{container}/{client}/{seq}")

    # Seq 1 of each pair goes at once although another client's seq 2 is waiting.
    await asyncio.gather(one("c1", "a", 2), one("c1", "a", 1), one("c2", "a", 1), one("c1", "b", 1))
    assert log.index("c1/a/1") < log.index("c1/a/2")
    assert set(log) == {"c1/a/1", "c1/a/2", "c2/a/1", "c1/b/1"}


async def test_a_lost_request_is_skipped_and_a_late_one_goes_at_once() -> None:
    sequencer = Sequencer(wait_seconds=WAIT)
    log: list[int] = []
    await enter(sequencer, 1, log)
    await asyncio.gather(enter(sequencer, 4, log), enter(sequencer, 3, log))  # 2 is lost
    await enter(sequencer, 2, log)  # arrives after its successors went: no wait, no block
    assert log == [1, 3, 4, 2]


async def test_a_present_predecessor_is_never_overtaken() -> None:
    """Seq 1 has its turn but is slow to reach the agent: seq 2 waits past the patience."""
    sequencer = Sequencer(wait_seconds=WAIT)
    release = asyncio.Event()
    log: list[str] = []

    async def slow_first() -> None:
        async with sequencer.turn("ctr", ClientOrder("client", 1)):
            log.append("1 in")
            await release.wait()
            log.append("1 out")

    first = asyncio.create_task(slow_first())
    await asyncio.sleep(0)
    second = asyncio.create_task(enter(sequencer, 2, []))
    await asyncio.sleep(WAIT * 5)
    assert not second.done()
    release.set()
    await asyncio.gather(first, second)
    assert log == ["1 in", "1 out"]


async def test_the_successor_goes_once_the_request_is_handed_to_the_agent() -> None:
    sequencer = Sequencer(wait_seconds=10)
    handed = asyncio.Event()
    finish = asyncio.Event()

    async def first() -> None:
        async with sequencer.turn("ctr", ClientOrder("client", 1)):
            # A task started inside the request inherits its context but does not count.
            callback = REQUEST_SENT.get()
            assert callback is not None
            await asyncio.get_running_loop().create_task(_call(callback))
            await asyncio.sleep(WAIT)
            assert not second.done()
            callback()  # what AgentClient.call does after sending
            handed.set()
            await finish.wait()

    async def _call(callback: object) -> None:
        assert callable(callback)
        callback()

    one = asyncio.create_task(first())
    second = asyncio.create_task(enter(sequencer, 2, []))
    await handed.wait()
    await asyncio.wait_for(second, 5)  # went while the first still waits for its answer
    finish.set()
    await one


async def test_memory_is_bounded_by_forgetting_idle_clients() -> None:
    sequencer = Sequencer(wait_seconds=10, max_clients=10)
    for client in range(100):
        async with sequencer.turn("ctr", ClientOrder(f"client-{client}", 1)):
            pass
    assert len(sequencer) == 10
