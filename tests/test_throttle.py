"""Login throttling's sliding window: in process on a fake clock (when it closes and opens,
computed), and in a real Redis shared by several clients, as several gateways share it."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from cloudcontainer.auth.throttle import RedisWindow, SlidingWindow
from cloudcontainer.errors import Unavailable
from tests.support.clock import FakeClock
from tests.support.net import free_port


async def test_the_limit_closes_the_window_until_the_oldest_event_leaves_it() -> None:
    clock = FakeClock()
    window = SlidingWindow(2, 60, clock=clock)
    await window.hit("a")
    clock.advance(10)
    await window.hit("a")
    assert await window.retry_after("a") == 50
    clock.advance(49.5)
    assert await window.retry_after("a") == 1  # rounded up: never "retry after 0 s"
    clock.advance(0.5)
    assert await window.retry_after("a") is None  # the first hit has left the window


async def test_keys_are_counted_apart_and_reset_forgets_one() -> None:
    window = SlidingWindow(1, 60, clock=FakeClock())
    await window.hit("a")
    assert await window.retry_after("a") == 60
    assert await window.retry_after("b") is None
    await window.reset("a")
    assert await window.retry_after("a") is None


async def test_the_oldest_keys_are_evicted_past_max_keys() -> None:
    window = SlidingWindow(1, 60, max_keys=2, clock=FakeClock())
    for key in ("a", "b", "c"):
        await window.hit(key)
    assert [await window.retry_after(key) is not None for key in ("a", "b", "c")] == [
        False,
        True,
        True,
    ]


async def test_a_redis_window_is_one_count_for_every_gateway(redis_url: str) -> None:
    first, second = Redis.from_url(redis_url), Redis.from_url(redis_url)
    try:
        # Two clients, as two gateways: hits through either count against one limit.
        windows = [RedisWindow(client, "account", 3, 120) for client in (first, second)]
        for window in (windows[0], windows[1], windows[0]):
            assert await window.retry_after("ada@example.com") is None
            await window.hit("ada@example.com")
        for window in windows:
            assert 119 <= (await window.retry_after("ada@example.com") or 0) <= 120
        assert await windows[1].retry_after("bob@example.com") is None
        await windows[1].reset("ada@example.com")
        assert await windows[0].retry_after("ada@example.com") is None
        # Nothing outlives its window: every key carries an expiry.
        await windows[0].hit("bob@example.com")
        keys = await first.keys("cc:throttle:*")
        expiries = [await first.pttl(key) for key in keys]
        assert expiries
        assert all(0 < ttl <= 120_000 for ttl in expiries)
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_redis_window_lets_a_key_try_again_once_its_hits_age_out(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        window = RedisWindow(client, "ip", 1, 0.3)
        await window.hit("127.0.0.1")
        assert await window.retry_after("127.0.0.1") == 1  # rounded up to a whole second
        for _ in range(100):  # ~the window's 0.3 s; Redis's clock decides
            if await window.retry_after("127.0.0.1") is None:
                break
            await asyncio.sleep(0.02)
        assert await window.retry_after("127.0.0.1") is None
    finally:
        await client.aclose()


async def test_redis_away_fails_closed_with_a_clear_error() -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        window = RedisWindow(client, "account", 3, 60)
        with pytest.raises(Unavailable) as raised:
            await window.retry_after("ada@example.com")
        assert raised.value.code == "redis_unavailable"
        with pytest.raises(Unavailable):
            await window.hit("ada@example.com")
    finally:
        await client.aclose()
