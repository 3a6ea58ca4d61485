"""The connection to Redis (`redis_url`): what several gateways share that is not a record.

Optional while one gateway serves a deployment (the embedded default needs no Redis). Today
it holds the login throttles (auth/throttle.py) and carries revocations between gateways
(auth/revocations.py); docs/design/several-gateways.md lists what moves here next.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cloudcontainer.errors import CloudContainerError

__all__ = ["RedisUnavailable", "open_redis"]

CONNECT_SECONDS = 5.0


class RedisUnavailable(CloudContainerError):
    """`redis_url` is set and Redis does not answer at start: the server does not start."""


async def open_redis(url: str) -> Redis:
    """A client for `url`, checked with a PING, so a wrong URL fails the start with a
    clear message instead of every login later."""
    redis = Redis.from_url(
        url, socket_connect_timeout=CONNECT_SECONDS, socket_timeout=CONNECT_SECONDS,
        health_check_interval=30,
    )  # fmt: skip
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        await redis.aclose()
        raise RedisUnavailable(
            f"redis_url is set but Redis does not answer at {_without_password(url)}: {exc}"
        ) from exc
    return redis


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
