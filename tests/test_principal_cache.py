"""The short-lived cache of checked credentials: bounded, expiring, and forgetting revocations."""

from __future__ import annotations

from cloudcontainer.auth.credentials import Principal, PrincipalCache
from cloudcontainer.db import User
from tests.support.clock import FakeClock


def principal(user_id: str, session_id: str | None = None, key: str | None = None) -> Principal:
    return Principal(user=User(id=user_id), session_id=session_id, api_key_id=key)


def test_entries_expire_and_zero_ttl_caches_nothing() -> None:
    clock = FakeClock()
    cache = PrincipalCache(2, clock=clock)
    cache.put("a", principal("u1", "s1"))
    clock.advance(2)
    assert cache.get("a") is not None  # still within its ttl
    clock.advance(0.001)
    assert cache.get("a") is None
    off = PrincipalCache(0)
    off.put("a", principal("u1", "s1"))
    assert off.get("a") is None


def test_the_cache_is_bounded() -> None:
    cache = PrincipalCache(60, max_entries=3)
    for n in range(10):
        cache.put(f"k{n}", principal(f"u{n}", f"s{n}"))
    assert [cache.get(f"k{n}") is not None for n in range(10)] == [False] * 7 + [True] * 3


def test_forget_drops_what_a_revocation_ended() -> None:
    cache = PrincipalCache(60)
    cache.put("s1", principal("u1", "s1"))
    cache.put("s2", principal("u1", "s2"))
    cache.put("k1", principal("u1", key="key1"))
    cache.put("other", principal("u2", "s3"))
    cache.forget(session_id="s1")
    assert cache.get("s1") is None
    assert cache.get("s2") is not None
    cache.forget(api_key_id="key1")
    assert cache.get("k1") is None
    cache.forget(user_id="u1")
    assert cache.get("s2") is None
    assert cache.get("other") is not None
