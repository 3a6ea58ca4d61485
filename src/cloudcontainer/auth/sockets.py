"""Open WebSockets, by the credential they were opened under: ending a credential ends its
sockets (issue 9).

Every authenticated WebSocket is `track`ed for its lifetime with the session or API key its
ticket was issued under. Logging out ends the session's sockets, revoking a key the key's, a
password reset or an account deletion all of the user's: their `OpenSocket.ended` is set, and
the route closes the socket with 1008 and the reason. A credential ended through another
gateway process (or a session whose refresh tokens ran out) is found by `revalidate`, which
`run` repeats every `revalidate_seconds`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import Select, exists, or_, select
from sqlalchemy.exc import SQLAlchemyError

from cloudcontainer.db import ApiKey, AuthSession, Database, RefreshToken, User
from cloudcontainer.db.types import utcnow

if TYPE_CHECKING:
    from cloudcontainer.auth.credentials import Principal

__all__ = ["OpenSocket", "SocketRegistry"]

log = structlog.get_logger(__name__)

WS_POLICY_VIOLATION = 1008
SESSION_ENDED = "session ended"
CHUNK = 500  # ids per IN (...) when revalidating
_Query = Callable[[Iterable[str], datetime], Select[str]]


@dataclass(eq=False)
class OpenSocket:
    """One tracked WebSocket; `ended` is set (once) when its credential ends."""

    user_id: str
    session_id: str | None
    api_key_id: str | None
    reason: str = ""
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.reason = reason
            self.ended.set()

    async def wait(self) -> str:
        """Until the credential ends; answers why (a WebSocket close reason)."""
        await self.ended.wait()
        return self.reason


class SocketRegistry:
    def __init__(self, database: Database, *, revalidate_seconds: float) -> None:
        self._db = database
        self.revalidate_seconds = revalidate_seconds
        self._open: set[OpenSocket] = set()

    def __len__(self) -> int:
        return len(self._open)

    @contextmanager
    def track(self, principal: Principal) -> Iterator[OpenSocket]:
        """Hold a socket opened by `principal` in the registry for the `with` block."""
        socket = OpenSocket(principal.user_id, principal.session_id, principal.api_key_id)
        self._open.add(socket)
        try:
            yield socket
        finally:
            self._open.discard(socket)

    def end(
        self, *, reason: str, user_id: str | None = None, session_id: str | None = None,
        api_key_id: str | None = None,
    ) -> int:  # fmt: skip
        """End the sockets of a user, a session or an API key; answers how many."""
        ended = 0
        for socket in list(self._open):
            if (
                (user_id is not None and socket.user_id == user_id)
                or (session_id is not None and socket.session_id == session_id)
                or (api_key_id is not None and socket.api_key_id == api_key_id)
            ):
                socket.end(reason)
                ended += 1
        if ended:
            log.info("websockets closed", count=ended, reason=reason)
        return ended

    async def revalidate(self) -> int:
        """One pass: end the sockets whose session, key or user is no longer valid in the
        database (ended through another gateway, or expired). Answers how many ended."""
        sockets = list(self._open)
        if not sockets:
            return 0
        now = utcnow()
        live_sessions = await self._live(
            {s.session_id for s in sockets if s.session_id}, _live_sessions, now
        )
        live_keys = await self._live(
            {s.api_key_id for s in sockets if s.api_key_id}, _live_keys, now
        )
        live_users = await self._live({s.user_id for s in sockets}, _live_users, now)
        dead = [
            (socket, reason)
            for socket in sockets
            if (reason := _why_dead(socket, live_sessions, live_keys, live_users))
        ]
        why = await self._revoked_reasons({s.session_id for s, _ in dead if s.session_id})
        for socket, reason in dead:
            if socket.session_id in why and reason == SESSION_ENDED:
                reason = f"{SESSION_ENDED}: {why[socket.session_id]}"
            socket.end(reason)
        ended = len(dead)
        if ended:
            log.info("websockets of ended credentials closed", count=ended)
        return ended

    async def _live(self, ids: set[str], query: _Query, now: datetime) -> set[str]:
        live: set[str] = set()
        chunked = sorted(ids)
        async with self._db.session() as session:
            for start in range(0, len(chunked), CHUNK):
                live.update(await session.scalars(query(chunked[start : start + CHUNK], now)))
        return live

    async def _revoked_reasons(self, session_ids: set[str]) -> dict[str, str]:
        if not session_ids:
            return {}
        async with self._db.session() as session:
            rows = await session.execute(
                select(AuthSession.id, AuthSession.revoked_reason).where(
                    AuthSession.id.in_(sorted(session_ids)[:CHUNK]),
                    AuthSession.revoked_reason.is_not(None),
                )
            )
            return {session_id: reason for session_id, reason in rows if reason}

    async def run(self) -> None:
        """`revalidate` every `revalidate_seconds`, until cancelled."""
        while True:
            await asyncio.sleep(self.revalidate_seconds)
            try:
                await self.revalidate()
            except SQLAlchemyError:  # the database is away: try again on the next pass
                log.exception("revalidating websockets failed")


def _why_dead(
    socket: OpenSocket, sessions: set[str], keys: set[str], users: set[str]
) -> str | None:
    if socket.user_id not in users:
        return "account deleted"
    if socket.session_id is not None and socket.session_id not in sessions:
        return SESSION_ENDED
    if socket.api_key_id is not None and socket.api_key_id not in keys:
        return "API key revoked or expired"
    if socket.session_id is None and socket.api_key_id is None:
        return "no credential"
    return None


def _live_sessions(ids: Iterable[str], now: datetime) -> Select[str]:
    """Sessions not revoked that can still be refreshed (a session has no other expiry)."""
    refreshable = exists().where(
        RefreshToken.session_id == AuthSession.id,
        RefreshToken.used_at.is_(None),
        RefreshToken.expires_at > now,
    )
    return select(AuthSession.id).where(
        AuthSession.id.in_(ids), AuthSession.revoked_at.is_(None), refreshable
    )


def _live_keys(ids: Iterable[str], now: datetime) -> Select[str]:
    return select(ApiKey.id).where(
        ApiKey.id.in_(ids),
        ApiKey.revoked_at.is_(None),
        or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
    )


def _live_users(ids: Iterable[str], now: datetime) -> Select[str]:
    return select(User.id).where(User.id.in_(ids))
