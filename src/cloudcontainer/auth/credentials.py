"""Who is calling: access tokens, API keys and WebSocket tickets resolved to a `Principal`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Select, delete, false, or_, select, update

from cloudcontainer.auth.tokens import API_KEY_PREFIX, AccessTokenSigner, digest, new_secret
from cloudcontainer.db import ApiKey, AuthSession, Database, User, WsTicket
from cloudcontainer.db.types import new_id, utcnow
from cloudcontainer.errors import Forbidden, NotFound, Unauthorized

if TYPE_CHECKING:  # it imports this module
    from cloudcontainer.auth.revocations import Revocations

__all__ = ["CredentialService", "Principal", "PrincipalCache"]

# Refresh `api_keys.last_used_at` at most this often, so using a key is not a write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. `session_id` is set for access tokens, `api_key_id` for keys;
    a page token has the one it was minted under, and `page` set (it may not manage
    credentials or the account: api/deps.py `NotPagePrincipal`)."""

    user: User
    session_id: str | None = None
    api_key_id: str | None = None
    page: bool = False

    @property
    def user_id(self) -> str:
        return self.user.id


class PrincipalCache:
    """Credentials checked against the database in the last `ttl` seconds, so a burst of API
    calls (an editor saving, bolt writing a project) is not one query each. Revocations apply
    at once (`forget`, through auth/revocations.py: on every gateway when they share Redis;
    without it, one made by another gateway takes effect here within `ttl`). A cached token
    is the very string whose signature was verified; its expiry is checked every time.
    `clock` is injectable so a test can let entries expire without waiting."""

    def __init__(
        self, ttl_seconds: float, max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, Principal, datetime | None]] = {}

    def get(self, key: str) -> tuple[Principal, datetime | None] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < self._clock():
            del self._entries[key]
            return None
        return entry[1], entry[2]

    def put(self, key: str, principal: Principal, expires_at: datetime | None = None) -> None:
        if self._ttl <= 0:
            return
        if len(self._entries) >= self._max:
            now = self._clock()
            self._entries = {k: v for k, v in self._entries.items() if v[0] >= now}
            while len(self._entries) >= self._max:
                del self._entries[next(iter(self._entries))]  # the oldest
        self._entries[key] = (self._clock() + self._ttl, principal, expires_at)

    def forget(
        self, *, user_id: str | None = None, session_id: str | None = None,
        api_key_id: str | None = None,
    ) -> None:  # fmt: skip
        """Drop what a revocation ended: a session, an API key, or everything of a user."""
        for key, (_, principal, _) in list(self._entries.items()):
            if (
                (user_id is not None and principal.user_id == user_id)
                or (session_id is not None and principal.session_id == session_id)
                or (api_key_id is not None and principal.api_key_id == api_key_id)
            ):
                del self._entries[key]


class CredentialService:
    def __init__(
        self, *, database: Database, signer: AccessTokenSigner, ticket_ttl_seconds: int,
        cache: PrincipalCache, revocations: Revocations, page_token_ttl_seconds: int = 600,
    ) -> None:  # fmt: skip
        self._db = database
        self._revocations = revocations
        self._signer = signer
        self._ticket_ttl = timedelta(seconds=ticket_ttl_seconds)
        self._page_ttl = page_token_ttl_seconds
        self.cache = cache

    async def authenticate(self, bearer: str) -> Principal:
        """Resolve a bearer credential (an access token or an API key) to its principal."""
        if bearer.startswith(API_KEY_PREFIX):
            return await self._authenticate_api_key(bearer)
        # Keyed by the whole token: a hit is a token whose signature was verified, so only
        # its expiry is checked again (exactly; past it, decode below answers token_expired).
        key = "token:" + bearer
        cached = self.cache.get(key)
        if cached is not None and cached[1] is not None and cached[1] > utcnow():
            return cached[0]
        claims = self._signer.decode(bearer)
        async with self._db.session() as session:
            user = await session.scalar(
                _live_user(claims.user_id, claims.session_id, claims.api_key_id, utcnow())
            )
        if user is None and claims.api_key_id is not None:
            raise Unauthorized(
                "The API key this token was made with is revoked or expired.",
                code="api_key_revoked",
            )
        if user is None:
            raise Unauthorized("This session has ended.", code="session_revoked")
        principal = Principal(
            user=user, session_id=claims.session_id, api_key_id=claims.api_key_id,
            page=claims.page,
        )  # fmt: skip
        self.cache.put(key, principal, claims.expires_at)
        return principal

    async def _authenticate_api_key(self, key: str) -> Principal:
        now = utcnow()
        cache_key = "key:" + digest(key)
        cached = self.cache.get(cache_key)
        if cached is not None:
            principal, expires_at = cached
            if expires_at is None or expires_at > now:
                return principal
        async with self._db.session() as session:
            row = (
                await session.execute(
                    select(ApiKey, User)
                    .join(User, ApiKey.user_id == User.id)
                    .where(ApiKey.key_hash == digest(key), ApiKey.revoked_at.is_(None))
                )
            ).first()
            if row is None:
                raise Unauthorized("The API key is not valid.", code="invalid_api_key")
            api_key, user = row
            if api_key.expires_at is not None and api_key.expires_at <= now:
                raise Unauthorized("The API key has expired.", code="api_key_expired")
            if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
                api_key.last_used_at = now
        principal = Principal(user=user, api_key_id=api_key.id)
        self.cache.put(cache_key, principal, api_key.expires_at)
        return principal

    # -- API keys -------------------------------------------------------------------------

    async def create_api_key(
        self, user_id: str, name: str, expires_in_days: int | None
    ) -> tuple[ApiKey, str]:
        """Make a key; the secret is returned once and only its hash is kept."""
        secret = new_secret(API_KEY_PREFIX)
        expires_at = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
        key = ApiKey(
            id=new_id("key"), user_id=user_id, name=name, prefix=secret[:10],
            key_hash=digest(secret), expires_at=expires_at, created_at=utcnow(),
        )  # fmt: skip
        async with self._db.session() as session:
            session.add(key)
        return key, secret

    async def list_api_keys(self, user_id: str) -> list[ApiKey]:
        async with self._db.session() as session:
            rows = await session.scalars(
                select(ApiKey)
                .where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
                .order_by(ApiKey.created_at, ApiKey.id)
            )
            return list(rows)

    async def revoke_api_key(self, user_id: str, key_id: str) -> None:
        """Revoke one of the caller's keys; another user's key is `NotFound`, like a missing one."""
        async with self._db.session() as session:
            found = await session.scalar(
                select(ApiKey.id).where(ApiKey.id == key_id, ApiKey.user_id == user_id)
            )
            if found is None:
                raise NotFound("No such API key.")
            await session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        await self._revocations.end(api_key_id=key_id, reason="API key revoked")

    # -- page tokens ----------------------------------------------------------------------

    def issue_page_token(self, principal: Principal) -> tuple[str, int]:
        """A short-lived token for a browser page, bound to the caller's session or API key
        (revoking that ends it); and its lifetime in seconds. A page token cannot mint
        another: a page could otherwise keep itself signed in for ever."""
        if principal.page:
            raise Forbidden(
                "A page token cannot make another; ask the server that gave it.",
                code="page_token_not_allowed",
            )
        token = self._signer.issue_page(
            principal.user_id, session_id=principal.session_id,
            api_key_id=principal.api_key_id, ttl_seconds=self._page_ttl,
        )  # fmt: skip
        return token, self._page_ttl

    # -- WebSocket tickets ----------------------------------------------------------------

    async def issue_ws_ticket(self, principal: Principal, scope: str) -> tuple[str, int]:
        """A single-use ticket for `?ticket=` on the WebSocket whose path is `scope`, bound to
        the session or API key of `principal`; and its lifetime in seconds."""
        ticket = new_secret("wst_")
        now = utcnow()
        async with self._db.session() as session:
            await session.execute(delete(WsTicket).where(WsTicket.expires_at <= now))
            session.add(
                WsTicket(
                    id=new_id("wst"), user_id=principal.user_id, ticket_hash=digest(ticket),
                    expires_at=now + self._ticket_ttl, scope=scope,
                    session_id=principal.session_id, api_key_id=principal.api_key_id,
                )
            )  # fmt: skip
        return ticket, int(self._ticket_ttl.total_seconds())

    async def redeem_ws_ticket(self, ticket: str, scope: str) -> Principal:
        """Consume a ticket made for the socket `scope` (atomically: a second use fails) and
        return its principal, if the session or key it was issued under is still valid.

        A ticket presented on another socket is refused and left as it was: it still opens
        the one it was made for (issue 9)."""
        now = utcnow()
        async with self._db.session() as session:
            row = (
                await session.execute(
                    delete(WsTicket)
                    .where(
                        WsTicket.ticket_hash == digest(ticket),
                        WsTicket.scope == scope,
                        WsTicket.expires_at > now,
                    )
                    .returning(WsTicket.user_id, WsTicket.session_id, WsTicket.api_key_id)
                )
            ).first()
            user = None
            if row is not None:
                user = await session.scalar(_live_user(row.user_id, row.session_id,
                                                       row.api_key_id, now))  # fmt: skip
        if row is None or user is None:
            raise Unauthorized("The ticket is invalid, used or expired.", code="invalid_ticket")
        return Principal(user=user, session_id=row.session_id, api_key_id=row.api_key_id)


def _live_user(
    user_id: str, session_id: str | None, api_key_id: str | None, now: datetime
) -> Select[User]:
    """The user, if the session or API key named is still valid (of a ticket or a token)."""
    query = select(User).where(User.id == user_id)
    if session_id is not None:
        return query.join(AuthSession, AuthSession.user_id == User.id).where(
            AuthSession.id == session_id, AuthSession.revoked_at.is_(None)
        )
    if api_key_id is not None:
        return query.join(ApiKey, ApiKey.user_id == User.id).where(
            ApiKey.id == api_key_id,
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
        )
    return query.where(false())  # every ticket and token names the credential it came from
