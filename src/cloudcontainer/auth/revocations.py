"""Ending credentials everywhere they are in use: this process's principal cache and open
WebSockets, and, with Redis, every other gateway's.

Without Redis, a credential ended through another gateway sharing the database reaches this
one late: its cached principal within `auth_cache_seconds`, its sockets at the next
`ws_revalidate_seconds` pass. With `redis_url`, each revocation is also published on
`cc:auth:revoked` and applied by every gateway as it arrives. The slower paths stay as the
safety net for a message lost while Redis was away.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from cloudcontainer.auth.credentials import PrincipalCache
from cloudcontainer.auth.sockets import SocketRegistry

__all__ = ["CHANNEL", "Revocations"]

log = structlog.get_logger(__name__)

CHANNEL = "cc:auth:revoked"
RETRY_SECONDS = 1.0
_SCOPES = ("user_id", "session_id", "api_key_id")


class Revocations:
    def __init__(
        self, principals: PrincipalCache, sockets: SocketRegistry, redis: Redis | None = None
    ) -> None:
        self._principals = principals
        self._sockets = sockets
        self._redis = redis
        # Messages from this process come back from Redis too; they were applied already.
        self._origin = secrets.token_hex(8)

    async def end(
        self, *, reason: str, user_id: str | None = None, session_id: str | None = None,
        api_key_id: str | None = None,
    ) -> None:  # fmt: skip
        """Forget the cached principals and end the sockets of a user, a session or an API
        key, here and (with Redis) on every gateway."""
        scope = {"user_id": user_id, "session_id": session_id, "api_key_id": api_key_id}
        self._apply(reason, scope)
        if self._redis is None:
            return
        message = json.dumps({"origin": self._origin, "reason": reason, **scope})
        try:
            await self._redis.publish(CHANNEL, message)
        except RedisError as exc:  # the others catch up through their TTL and revalidation
            log.warning("revocation not published to other gateways", error=str(exc))

    def _apply(self, reason: str, scope: dict[str, str | None]) -> None:
        self._principals.forget(**scope)
        self._sockets.end(reason=reason, **scope)

    async def listen(self) -> None:
        """Apply other gateways' revocations until cancelled; reconnects when Redis drops."""
        if self._redis is None:
            return
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    async for message in pubsub.listen():
                        self._received(message.get("data"))
            except RedisError as exc:
                log.warning("listening for revocations failed; retrying", error=str(exc))
                await asyncio.sleep(RETRY_SECONDS)

    def _received(self, data: Any) -> None:
        try:
            message = json.loads(data)
            reason = message["reason"]
            scope = {name: message.get(name) for name in _SCOPES}
            well_formed = isinstance(reason, str) and all(
                value is None or isinstance(value, str) for value in scope.values()
            )
        except (TypeError, ValueError, KeyError):
            well_formed = False
        if not well_formed or not any(scope.values()):
            log.warning("ignored a malformed revocation message", data=repr(data)[:200])
            return
        if message.get("origin") != self._origin:
            self._apply(reason, scope)
