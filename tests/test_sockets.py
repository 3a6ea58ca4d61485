"""The open-socket registry (auth/sockets.py) against a real database, on SQLite and PostgreSQL:
which credentials a revalidation pass finds ended, and why. The sockets themselves are
exercised end to end in test_sessions.py."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, update

from cloudcontainer.auth.credentials import Principal
from cloudcontainer.db import ApiKey, AuthSession, RefreshToken, User
from cloudcontainer.db.types import utcnow
from tests.conftest import Api, TestUser


async def principal_of(api: Api, user: TestUser) -> Principal:
    return await api.services.credentials.authenticate(user.tokens["access_token"])


async def key_principal(api: Api, user: TestUser) -> Principal:
    response = await api.client.post("/api/auth/keys", json={"name": "k"}, headers=user.headers)
    return await api.services.credentials.authenticate(response.json()["key"])


async def test_revalidation_keeps_valid_credentials(api: Api) -> None:
    user = await api.user()
    registry = api.services.sockets
    with (
        registry.track(await principal_of(api, user)) as by_session,
        registry.track(await key_principal(api, user)) as by_key,
    ):
        assert len(registry) == 2
        assert await registry.revalidate() == 0
        assert not by_session.ended.is_set()
        assert not by_key.ended.is_set()
    assert len(registry) == 0


async def test_revalidation_ends_what_ended_elsewhere_and_says_why(api: Api) -> None:
    registry = api.services.sockets
    revoked, expired, lapsed, deleted, kept = [await api.user() for _ in range(5)]
    revoked_p, lapsed_p, deleted_p, kept_p = [
        await principal_of(api, u) for u in (revoked, lapsed, deleted, kept)
    ]
    expired_p = await key_principal(api, expired)
    now = utcnow()
    with (
        registry.track(revoked_p) as s_revoked,
        registry.track(expired_p) as s_expired,
        registry.track(lapsed_p) as s_lapsed,
        registry.track(deleted_p) as s_deleted,
        registry.track(kept_p) as s_kept,
    ):
        async with api.services.database.session() as session:
            await session.execute(
                update(AuthSession)
                .where(AuthSession.id == revoked_p.session_id)
                .values(revoked_at=now, revoked_reason="logout")
            )
            await session.execute(
                update(ApiKey)
                .where(ApiKey.id == expired_p.api_key_id)
                .values(expires_at=now - timedelta(seconds=1))
            )
            # A session whose refresh tokens all expired can never be refreshed: it is over.
            await session.execute(
                update(RefreshToken)
                .where(RefreshToken.session_id == lapsed_p.session_id)
                .values(expires_at=now - timedelta(seconds=1))
            )
            await session.execute(delete(User).where(User.id == deleted.id))
        assert await registry.revalidate() == 4
        assert s_revoked.reason == "session ended: logout"
        assert s_expired.reason == "API key revoked or expired"
        assert s_lapsed.reason == "session ended"
        assert s_deleted.reason == "account deleted"
        assert not s_kept.ended.is_set()


async def test_ending_picks_sockets_by_user_session_or_key(api: Api) -> None:
    registry = api.services.sockets
    user, other = await api.user(), await api.user()
    session_p, key_p, other_p = (
        await principal_of(api, user), await key_principal(api, user),
        await principal_of(api, other),
    )  # fmt: skip
    with (
        registry.track(session_p) as by_session,
        registry.track(key_p) as by_key,
        registry.track(other_p) as others,
    ):
        assert registry.end(api_key_id=key_p.api_key_id, reason="API key revoked") == 1
        assert by_key.ended.is_set()
        assert not by_session.ended.is_set()
        assert registry.end(user_id=user.id, reason="password reset") == 2
        assert by_session.reason == "password reset"
        assert by_key.reason == "API key revoked"  # the first reason stays
        assert not others.ended.is_set()
