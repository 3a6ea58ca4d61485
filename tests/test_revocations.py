"""Revocations reach every gateway through Redis (auth/revocations.py): two apps on one
database and one Redis, as two gateways behind a balancer. Each keeps principals cached for a
minute and revalidates sockets every five, so only the broadcast can explain a
revocation that takes effect on the other gateway at once."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis

from cloudcontainer.auth.revocations import CHANNEL
from tests.conftest import Api, ApiFactory, TestUser

SLOW = {"auth_cache_seconds": 60, "ws_revalidate_seconds": 300}


async def two_gateways(api_factory: ApiFactory, redis_url: str) -> tuple[Api, Api]:
    first = await api_factory(redis_url=redis_url, **SLOW)
    second = await api_factory(redis_url=redis_url, **SLOW)
    for gateway in (first, second):  # each has subscribed before the test revokes anything
        await until(lambda g=gateway: _subscribed(g))
    return first, second


async def _subscribed(gateway: Api) -> bool:
    redis = Redis.from_url(gateway.services.settings.redis_url)
    try:
        counts = await redis.pubsub_numsub(CHANNEL)
        return bool(counts and counts[0][1] >= 1)
    finally:
        await redis.aclose()


async def until(check, seconds: float = 10) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(seconds):
        while not await check():
            await asyncio.sleep(0.02)


async def status(gateway: Api, headers: dict[str, str]) -> int:
    return (await gateway.client.get("/api/auth/me", headers=headers)).status_code


async def test_a_key_revoked_on_one_gateway_is_refused_by_the_other_at_once(
    api_factory: ApiFactory, redis_url: str
) -> None:
    first, second = await two_gateways(api_factory, redis_url)
    user = await first.user()
    key = (await first.client.post("/api/auth/keys", json={"name": "k"},
                                   headers=user.headers)).json()  # fmt: skip
    by_key = {"Authorization": f"Bearer {key['key']}"}
    assert await status(second, by_key) == 200  # now cached on the second gateway
    revoked = await first.client.delete(f"/api/auth/keys/{key['id']}", headers=user.headers)
    assert revoked.status_code == 204

    async def refused() -> bool:
        return await status(second, by_key) == 401

    await until(refused)


async def test_a_logout_on_one_gateway_ends_the_sessions_sockets_on_the_other(
    api_factory: ApiFactory, redis_url: str
) -> None:
    first, second = await two_gateways(api_factory, redis_url)
    user = await first.user()
    principal = await second.services.credentials.authenticate(user.tokens["access_token"])
    assert await status(second, user.headers) == 200
    with second.services.sockets.track(principal) as socket:
        out = await first.client.post("/api/auth/logout", headers=user.headers,
                                      json={"refresh_token": user.tokens["refresh_token"]})  # fmt: skip
        assert out.status_code == 204
        async with asyncio.timeout(10):
            reason = await socket.wait()
    assert reason.startswith("session ended")
    assert await status(second, user.headers) == 401


async def test_malformed_messages_on_the_channel_are_ignored(
    api_factory: ApiFactory, redis_url: str
) -> None:
    first, second = await two_gateways(api_factory, redis_url)
    user: TestUser = await first.user()
    assert await status(second, user.headers) == 200
    redis = Redis.from_url(redis_url)
    try:
        for junk in ("not json", "[]", json.dumps({"reason": 3, "user_id": user.id}),
                     json.dumps({"reason": "x"}), json.dumps({"reason": "x", "user_id": 7})):  # fmt: skip
            await redis.publish(CHANNEL, junk)
        # Then one well-formed message: once it is applied, the junk before it was read.
        await redis.publish(CHANNEL, json.dumps({"reason": "test", "user_id": "someone-else"}))
    finally:
        await redis.aclose()
    await asyncio.sleep(0.2)
    assert await status(second, user.headers) == 200
    assert await status(first, user.headers) == 200
