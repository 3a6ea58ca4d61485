"""Login throttling's sliding window on a fake clock: when it closes and opens, computed."""

from __future__ import annotations

from cloudcontainer.auth.throttle import SlidingWindow
from tests.support.clock import FakeClock


def test_the_limit_closes_the_window_until_the_oldest_event_leaves_it() -> None:
    clock = FakeClock()
    window = SlidingWindow(2, 60, clock=clock)
    window.hit("a")
    clock.advance(10)
    window.hit("a")
    assert window.retry_after("a") == 50
    clock.advance(49.5)
    assert window.retry_after("a") == 1  # rounded up: never "retry after 0 s"
    clock.advance(0.5)
    assert window.retry_after("a") is None  # the first hit has left the window


def test_keys_are_counted_apart_and_reset_forgets_one() -> None:
    window = SlidingWindow(1, 60, clock=FakeClock())
    window.hit("a")
    assert window.retry_after("a") == 60
    assert window.retry_after("b") is None
    window.reset("a")
    assert window.retry_after("a") is None


def test_the_oldest_keys_are_evicted_past_max_keys() -> None:
    window = SlidingWindow(1, 60, max_keys=2, clock=FakeClock())
    for key in ("a", "b", "c"):
        window.hit(key)
    assert [window.retry_after(key) is not None for key in ("a", "b", "c")] == [False, True, True]
