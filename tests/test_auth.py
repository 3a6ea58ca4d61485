"""Accounts: registration, e-mail verification, login, sessions, password reset, API keys."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import func, select, update

from cloudcontainer.app import create_app
from cloudcontainer.audit import AuditQuery, actions
from cloudcontainer.db import ApiKey, AuthSession, EmailToken, Project, RefreshToken, User, WsTicket
from cloudcontainer.errors import Unauthorized
from cloudcontainer.redisconn import RedisUnavailable
from tests.conftest import PASSWORD, Api, ApiFactory, make_settings
from tests.support.net import free_port
from tests.support.smtp import Mailbox

NEW_PASSWORD = "a brand new passphrase"
VERIFY = "Verify your cloudcontainer account"
RESET = "Reset your cloudcontainer password"
NOTICE = "Your cloudcontainer account"


# -- helpers ----------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(api: Api, email: str, password: str = PASSWORD) -> httpx.Response:
    return await api.client.post("/api/auth/register", json={"email": email, "password": password})


async def login(api: Api, email: str, password: str = PASSWORD) -> httpx.Response:
    return await api.client.post("/api/auth/login", json={"email": email, "password": password})


async def refresh(api: Api, refresh_token: str) -> httpx.Response:
    return await api.client.post("/api/auth/refresh", json={"refresh_token": refresh_token})


async def me(api: Api, token: str) -> httpx.Response:
    return await api.client.get("/api/auth/me", headers=bearer(token))


async def mails_to(api: Api, address: str) -> list[EmailMessage]:
    """Every mail delivered to `address` once the app's pending sends are done."""
    await api.services.tasks.drain()
    return api.mailbox.to(address)


async def mailed_token(api: Api, address: str, subject: str) -> str:
    await api.services.tasks.drain()
    return api.mailbox.token_in(address, subject)


async def users_with_email(api: Api, email: str) -> int:
    async with api.services.database.session() as session:
        count = await session.scalar(
            select(func.count()).select_from(User).where(User.email == email)
        )
    return int(count or 0)


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


def unverified_claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def forge(api: Api, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, api.services.settings.signing_key(), algorithm="HS256")


# -- registration and e-mail verification -----------------------------------------------------


async def test_register_answers_the_same_for_new_and_existing_addresses(api: Api) -> None:
    await api.user("taken@example.com")
    fresh = await register(api, "fresh@example.com")
    existing = await register(api, "taken@example.com")
    assert fresh.status_code == existing.status_code == 202
    assert fresh.json() == existing.json()
    assert fresh.json()["status"] == "accepted"


async def test_register_mails_a_verification_token(api: Api) -> None:
    assert (await register(api, "ada@example.com")).status_code == 202
    message = (await mails_to(api, "ada@example.com"))[0]
    assert VERIFY in message["Subject"]
    assert api.mailbox.token_in("ada@example.com", VERIFY)


async def test_register_with_an_existing_address_mails_a_notice_and_creates_no_user(
    api: Api,
) -> None:
    await api.user("ada@example.com")
    response = await register(api, "ADA@Example.com", NEW_PASSWORD)
    assert response.status_code == 202
    messages = await mails_to(api, "ada@example.com")
    assert [m["Subject"] for m in messages] == [NOTICE]
    assert "already has an account" in messages[0].get_content()
    assert await users_with_email(api, "ada@example.com") == 1
    # The account keeps its password: the second registration changed nothing.
    assert (await login(api, "ada@example.com", NEW_PASSWORD)).status_code == 401
    assert (await login(api, "ada@example.com")).status_code == 200


async def test_register_refuses_a_short_password_or_a_bad_address(api: Api) -> None:
    short = await register(api, "ada@example.com", "short")
    assert short.status_code == 422
    assert error_code(short) == "validation_error"
    bad = await register(api, "not-an-address")
    assert bad.status_code == 422
    assert await users_with_email(api, "ada@example.com") == 0


async def test_unverified_account_cannot_log_in(api: Api) -> None:
    await register(api, "ada@example.com")
    response = await login(api, "ada@example.com")
    assert response.status_code == 403
    assert error_code(response) == "email_not_verified"


async def test_unverified_account_with_wrong_password_gets_invalid_credentials(api: Api) -> None:
    await register(api, "ada@example.com")
    response = await login(api, "ada@example.com", "wrong password here")
    assert response.status_code == 401
    assert error_code(response) == "invalid_credentials"


async def test_verify_email_with_the_mailed_token_allows_login(api: Api) -> None:
    await register(api, "ada@example.com")
    token = await mailed_token(api, "ada@example.com", VERIFY)
    response = await api.client.post("/api/auth/verify-email", json={"token": token})
    assert response.status_code == 200
    assert response.json()["status"] == "accepted"
    logged_in = await login(api, "ada@example.com")
    assert logged_in.status_code == 200
    profile = (await me(api, logged_in.json()["access_token"])).json()
    assert profile["email"] == "ada@example.com"
    assert profile["email_verified"] is True


async def test_verify_email_token_works_only_once(api: Api) -> None:
    await register(api, "ada@example.com")
    token = await mailed_token(api, "ada@example.com", VERIFY)
    first = await api.client.post("/api/auth/verify-email", json={"token": token})
    assert first.status_code == 200
    again = await api.client.post("/api/auth/verify-email", json={"token": token})
    assert again.status_code == 400
    assert error_code(again) == "invalid_token"


async def test_verify_email_with_an_unknown_token_is_400(api: Api) -> None:
    response = await api.client.post("/api/auth/verify-email", json={"token": "garbage-token"})
    assert response.status_code == 400
    assert error_code(response) == "invalid_token"


async def test_verify_email_with_a_malformed_token_is_422(api: Api) -> None:
    response = await api.client.post("/api/auth/verify-email", json={"token": "not a token!"})
    assert response.status_code == 422
    assert error_code(response) == "validation_error"


async def test_verify_email_with_an_expired_token_is_400(api: Api) -> None:
    await register(api, "ada@example.com")
    token = await mailed_token(api, "ada@example.com", VERIFY)
    async with api.services.database.session() as session:
        await session.execute(
            update(EmailToken).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    response = await api.client.post("/api/auth/verify-email", json={"token": token})
    assert response.status_code == 400
    assert error_code(response) == "invalid_token"
    assert (await login(api, "ada@example.com")).status_code == 403


async def test_verify_email_refuses_a_password_reset_token(api: Api) -> None:
    await register(api, "ada@example.com")
    await api.client.post("/api/auth/password-reset/request", json={"email": "ada@example.com"})
    reset_token = await mailed_token(api, "ada@example.com", RESET)
    response = await api.client.post("/api/auth/verify-email", json={"token": reset_token})
    assert response.status_code == 400
    assert error_code(response) == "invalid_token"
    assert (await login(api, "ada@example.com")).status_code == 403


async def test_resend_verification_mails_a_new_working_token(api: Api) -> None:
    await register(api, "ada@example.com")
    first = await mailed_token(api, "ada@example.com", VERIFY)
    api.mailbox.clear()
    response = await api.client.post(
        "/api/auth/verify-email/resend", json={"email": "ada@example.com"}
    )
    assert response.status_code == 202
    second = await mailed_token(api, "ada@example.com", VERIFY)
    assert second != first
    verified = await api.client.post("/api/auth/verify-email", json={"token": second})
    assert verified.status_code == 200
    assert (await login(api, "ada@example.com")).status_code == 200


async def test_resend_verification_mails_nothing_to_unknown_or_verified_addresses(
    api: Api,
) -> None:
    await api.user("verified@example.com")
    answers = [
        await api.client.post("/api/auth/verify-email/resend", json={"email": email})
        for email in ("nobody@example.com", "verified@example.com")
    ]
    assert [a.status_code for a in answers] == [202, 202]
    assert answers[0].json() == answers[1].json()
    assert await mails_to(api, "nobody@example.com") == []
    assert await mails_to(api, "verified@example.com") == []


async def test_registration_closed_refuses_new_accounts(api_factory: ApiFactory) -> None:
    api = await api_factory(allow_registration=False)
    response = await register(api, "ada@example.com")
    assert response.status_code == 403
    assert error_code(response) == "registration_closed"
    assert await users_with_email(api, "ada@example.com") == 0
    assert await mails_to(api, "ada@example.com") == []


async def test_without_required_verification_a_new_account_logs_in_at_once(
    api_factory: ApiFactory,
) -> None:
    api = await api_factory(require_email_verification=False)
    assert (await register(api, "ada@example.com")).status_code == 202
    response = await login(api, "ada@example.com")
    assert response.status_code == 200
    assert (await me(api, response.json()["access_token"])).json()["email_verified"] is True
    assert await mails_to(api, "ada@example.com") == []


# -- login --------------------------------------------------------------------------------------


async def test_login_answers_a_bearer_token_pair(api: Api) -> None:
    user = await api.user()
    response = await login(api, user.email)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == api.services.settings.access_token_ttl_seconds
    assert (await me(api, body["access_token"])).json()["id"] == user.id


async def test_login_email_is_case_insensitive(api: Api) -> None:
    user = await api.user("ada@example.com")
    response = await login(api, "  Ada@EXAMPLE.com ")
    assert response.status_code == 200
    assert (await me(api, response.json()["access_token"])).json()["id"] == user.id


async def test_wrong_password_and_unknown_email_give_the_same_401(api: Api) -> None:
    await api.user("ada@example.com")
    wrong_password = await login(api, "ada@example.com", "not the password")
    unknown_email = await login(api, "nobody@example.com")
    assert wrong_password.status_code == unknown_email.status_code == 401
    assert wrong_password.json() == unknown_email.json()
    assert error_code(wrong_password) == "invalid_credentials"
    assert wrong_password.headers["WWW-Authenticate"] == "Bearer"


async def test_login_is_throttled_per_account_even_for_the_right_password(
    api_factory: ApiFactory,
) -> None:
    api = await api_factory(login_max_failures_per_account=3, login_window_seconds=120)
    user = await api.user("ada@example.com")
    other = await api.user("bob@example.com")
    for _ in range(3):
        assert (await login(api, user.email, "not the password")).status_code == 401
    throttled = await login(api, user.email)
    assert throttled.status_code == 429
    assert error_code(throttled) == "login_throttled"
    assert 1 <= int(throttled.headers["Retry-After"]) <= 120
    # Another account from the same client is not affected.
    assert (await login(api, other.email)).status_code == 200


async def test_login_throttling_treats_unknown_addresses_like_accounts(
    api_factory: ApiFactory,
) -> None:
    api = await api_factory(login_max_failures_per_account=2)
    for _ in range(2):
        assert (await login(api, "nobody@example.com")).status_code == 401
    throttled = await login(api, "nobody@example.com")
    assert throttled.status_code == 429
    assert "Retry-After" in throttled.headers


async def test_successful_login_clears_the_account_failure_count(api_factory: ApiFactory) -> None:
    api = await api_factory(login_max_failures_per_account=3)
    user = await api.user()
    for _ in range(2):
        for _ in range(2):
            assert (await login(api, user.email, "not the password")).status_code == 401
        assert (await login(api, user.email)).status_code == 200


async def test_login_is_throttled_per_client_ip(api_factory: ApiFactory) -> None:
    api = await api_factory(login_max_attempts_per_ip=4)
    for index in range(4):
        await api.services.accounts.create_user(f"user{index}@example.com", PASSWORD)
        assert (await login(api, f"user{index}@example.com")).status_code == 200
    await api.services.accounts.create_user("fresh@example.com", PASSWORD)
    throttled = await login(api, "fresh@example.com")
    assert throttled.status_code == 429
    assert error_code(throttled) == "login_throttled"
    assert int(throttled.headers["Retry-After"]) >= 1


# -- refresh --------------------------------------------------------------------------------------


async def test_refresh_rotates_the_token_pair(api: Api) -> None:
    user = await api.user()
    response = await refresh(api, user.tokens["refresh_token"])
    assert response.status_code == 200
    pair = response.json()
    assert pair["refresh_token"] != user.tokens["refresh_token"]
    assert (await me(api, pair["access_token"])).json()["id"] == user.id
    again = await refresh(api, pair["refresh_token"])
    assert again.status_code == 200


async def test_refresh_token_reuse_revokes_the_family(api: Api) -> None:
    user = await api.user()
    other_session = (await login(api, user.email)).json()
    rotated = (await refresh(api, user.tokens["refresh_token"])).json()

    reused = await refresh(api, user.tokens["refresh_token"])
    assert reused.status_code == 401
    assert error_code(reused) == "refresh_token_reused"

    # The token rotated in and every access token of that session stop working.
    descendant = await refresh(api, rotated["refresh_token"])
    assert descendant.status_code == 401
    for access_token in (rotated["access_token"], user.tokens["access_token"]):
        answer = await me(api, access_token)
        assert answer.status_code == 401
        assert error_code(answer) == "session_revoked"
    # Another login of the same user is a different family and keeps working.
    assert (await me(api, other_session["access_token"])).status_code == 200
    assert (await refresh(api, other_session["refresh_token"])).status_code == 200


async def test_refresh_with_an_unknown_token_is_401(api: Api) -> None:
    response = await refresh(api, "no-such-refresh-token")
    assert response.status_code == 401
    assert error_code(response) == "invalid_refresh_token"


async def test_expired_refresh_token_is_refused(api: Api) -> None:
    user = await api.user()
    async with api.services.database.session() as session:
        await session.execute(
            update(RefreshToken).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    response = await refresh(api, user.tokens["refresh_token"])
    assert response.status_code == 401
    assert error_code(response) == "refresh_token_expired"


# -- access tokens --------------------------------------------------------------------------------


async def test_expired_access_token_is_401_token_expired(api: Api) -> None:
    user = await api.user()
    claims = unverified_claims(user.tokens["access_token"])
    now = int(datetime.now(UTC).timestamp())
    # The same claims, freshly signed with the server's key, are accepted ...
    valid = forge(api, {**claims, "iat": now, "exp": now + 600})
    assert (await me(api, valid)).status_code == 200
    # ... and once their expiry has passed they are not.
    expired = forge(api, {**claims, "iat": now - 600, "exp": now - 60})
    response = await me(api, expired)
    assert response.status_code == 401
    assert error_code(response) == "token_expired"


def _tamper_subject(token: str, subject: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = subject
    encoded = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


async def test_tampered_access_token_is_401_invalid_token(api: Api) -> None:
    victim = await api.user()
    attacker = await api.user()
    token = attacker.tokens["access_token"]
    claims = unverified_claims(token)
    candidates = {
        "payload changed": _tamper_subject(token, victim.id),
        "signature changed": token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"),
        "other key": jwt.encode(claims, "some other key " * 4, algorithm="HS256"),
        "alg none": jwt.encode(claims, None, algorithm="none"),
        "not a jwt": "not-a-jwt",
    }
    for what, forged in candidates.items():
        response = await me(api, forged)
        assert response.status_code == 401, what
        assert error_code(response) == "invalid_token", what


async def test_access_token_must_be_of_type_access(api: Api) -> None:
    user = await api.user()
    claims = unverified_claims(user.tokens["access_token"])
    response = await me(api, forge(api, {**claims, "typ": "refresh"}))
    assert response.status_code == 401
    assert error_code(response) == "invalid_token"


# -- logout -----------------------------------------------------------------------------------


async def test_logout_with_the_access_token_ends_that_session(api: Api) -> None:
    user = await api.user()
    other_session = (await login(api, user.email)).json()
    response = await api.client.post("/api/auth/logout", headers=user.headers)
    assert response.status_code == 204
    assert response.content == b""
    after = await me(api, user.tokens["access_token"])
    assert after.status_code == 401
    assert error_code(after) == "session_revoked"
    assert (await refresh(api, user.tokens["refresh_token"])).status_code == 401
    assert (await me(api, other_session["access_token"])).status_code == 200


async def test_logout_with_only_a_refresh_token_ends_the_session(api: Api) -> None:
    user = await api.user()
    response = await api.client.post(
        "/api/auth/logout", json={"refresh_token": user.tokens["refresh_token"]}
    )
    assert response.status_code == 204
    assert (await me(api, user.tokens["access_token"])).status_code == 401
    assert (await refresh(api, user.tokens["refresh_token"])).status_code == 401


async def test_logout_without_a_valid_token_is_401(api: Api) -> None:
    nothing = await api.client.post("/api/auth/logout")
    assert nothing.status_code == 401
    assert error_code(nothing) == "not_authenticated"
    unknown = await api.client.post("/api/auth/logout", json={"refresh_token": "no-such-token"})
    assert unknown.status_code == 401
    garbage = await api.client.post("/api/auth/logout", headers=bearer("not-a-jwt"))
    assert garbage.status_code == 401


# -- password reset ---------------------------------------------------------------------------


async def test_password_reset_request_answers_the_same_for_unknown_addresses(api: Api) -> None:
    await api.user("ada@example.com")
    known = await api.client.post(
        "/api/auth/password-reset/request", json={"email": "ada@example.com"}
    )
    unknown = await api.client.post(
        "/api/auth/password-reset/request", json={"email": "nobody@example.com"}
    )
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    assert await mails_to(api, "nobody@example.com") == []
    assert [m["Subject"] for m in api.mailbox.to("ada@example.com")] == [RESET]


async def test_password_reset_sets_the_password_and_ends_every_session(api: Api) -> None:
    user = await api.user("ada@example.com")
    second = (await login(api, user.email)).json()
    await api.client.post("/api/auth/password-reset/request", json={"email": user.email})
    token = await mailed_token(api, user.email, RESET)

    response = await api.client.post(
        "/api/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
    )
    assert response.status_code == 204

    assert (await login(api, user.email)).status_code == 401
    assert (await login(api, user.email, NEW_PASSWORD)).status_code == 200
    for tokens in (user.tokens, second):
        answer = await me(api, tokens["access_token"])
        assert answer.status_code == 401
        assert error_code(answer) == "session_revoked"
        assert (await refresh(api, tokens["refresh_token"])).status_code == 401


async def test_password_reset_revokes_api_keys_and_other_reset_links(api: Api) -> None:
    user = await api.user()
    key = (
        await api.client.post("/api/auth/keys", json={"name": "ci"}, headers=user.headers)
    ).json()
    for _ in range(2):
        await api.client.post("/api/auth/password-reset/request", json={"email": user.email})
        await api.services.tasks.drain()
    first, second = [
        m.get_content().split("token=", 1)[1].split()[0]
        for m in api.mailbox.to(user.email)
        if RESET in m["Subject"]
    ]
    used = await api.client.post(
        "/api/auth/password-reset/confirm", json={"token": second, "password": NEW_PASSWORD}
    )
    assert used.status_code == 204
    assert (await me(api, key["key"])).status_code == 401
    stale = await api.client.post(
        "/api/auth/password-reset/confirm", json={"token": first, "password": "attacker's choice"}
    )
    assert stale.status_code == 400
    assert (await login(api, user.email, NEW_PASSWORD)).status_code == 200


async def test_password_reset_token_works_only_once(api: Api) -> None:
    user = await api.user()
    await api.client.post("/api/auth/password-reset/request", json={"email": user.email})
    token = await mailed_token(api, user.email, RESET)
    first = await api.client.post(
        "/api/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
    )
    assert first.status_code == 204
    again = await api.client.post(
        "/api/auth/password-reset/confirm", json={"token": token, "password": "yet another one"}
    )
    assert again.status_code == 400
    assert error_code(again) == "invalid_token"
    assert (await login(api, user.email, NEW_PASSWORD)).status_code == 200


async def test_password_reset_refuses_a_too_short_password_and_keeps_the_token(api: Api) -> None:
    user = await api.user()
    await api.client.post("/api/auth/password-reset/request", json={"email": user.email})
    token = await mailed_token(api, user.email, RESET)
    short = await api.client.post(
        "/api/auth/password-reset/confirm", json={"token": token, "password": "short"}
    )
    assert short.status_code == 422
    assert error_code(short) == "validation_error"
    assert (await login(api, user.email)).status_code == 200
    good = await api.client.post(
        "/api/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
    )
    assert good.status_code == 204


async def test_password_reset_refuses_a_verification_token(api: Api) -> None:
    await register(api, "ada@example.com")
    token = await mailed_token(api, "ada@example.com", VERIFY)
    response = await api.client.post(
        "/api/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
    )
    assert response.status_code == 400
    assert error_code(response) == "invalid_token"


async def test_password_reset_verifies_an_unverified_address(api: Api) -> None:
    await register(api, "ada@example.com")
    await api.client.post("/api/auth/password-reset/request", json={"email": "ada@example.com"})
    token = await mailed_token(api, "ada@example.com", RESET)
    await api.client.post(
        "/api/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
    )
    assert (await login(api, "ada@example.com", NEW_PASSWORD)).status_code == 200


# -- /me --------------------------------------------------------------------------------------


async def test_me_describes_the_caller(api: Api) -> None:
    user = await api.user("ada@example.com")
    admin = await api.user("root@example.com", admin=True)
    body = (await api.client.get("/api/auth/me", headers=user.headers)).json()
    assert body["id"] == user.id
    assert body["email"] == "ada@example.com"
    assert body["is_admin"] is False
    assert body["email_verified"] is True
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None
    assert "password_hash" not in body
    admin_body = (await api.client.get("/api/auth/me", headers=admin.headers)).json()
    assert admin_body["is_admin"] is True


async def test_me_without_credentials_is_401(api: Api) -> None:
    response = await api.client.get("/api/auth/me")
    assert response.status_code == 401
    assert response.json() == {
        "error": {"code": "not_authenticated", "message": response.json()["error"]["message"]}
    }
    assert response.headers["WWW-Authenticate"] == "Bearer"


# -- API keys ---------------------------------------------------------------------------------


async def create_key(api: Api, headers: dict[str, str], **body: Any) -> httpx.Response:
    return await api.client.post("/api/auth/keys", json={"name": "ci", **body}, headers=headers)


async def test_api_key_secret_is_shown_only_at_creation(api: Api) -> None:
    user = await api.user()
    response = await create_key(api, user.headers)
    assert response.status_code == 201
    created = response.json()
    secret = created["key"]
    assert secret.startswith("cc_")
    assert created["prefix"] == secret[:10]
    assert created["name"] == "ci"
    assert created["expires_at"] is None
    listing = await api.client.get("/api/auth/keys", headers=user.headers)
    assert listing.status_code == 200
    assert [key["id"] for key in listing.json()] == [created["id"]]
    assert "key" not in listing.json()[0]
    assert secret not in listing.text


async def test_api_key_authenticates_as_its_owner(api: Api) -> None:
    user = await api.user()
    secret = (await create_key(api, user.headers)).json()["key"]
    response = await me(api, secret)
    assert response.status_code == 200
    assert response.json()["id"] == user.id


async def test_api_key_use_is_recorded(api: Api) -> None:
    user = await api.user()
    created = (await create_key(api, user.headers)).json()
    assert created["last_used_at"] is None
    await me(api, created["key"])
    listed = (await api.client.get("/api/auth/keys", headers=user.headers)).json()
    assert listed[0]["last_used_at"] is not None


async def test_revoked_api_key_is_refused(api: Api) -> None:
    user = await api.user()
    created = (await create_key(api, user.headers)).json()
    response = await api.client.delete(f"/api/auth/keys/{created['id']}", headers=user.headers)
    assert response.status_code == 204
    refused = await me(api, created["key"])
    assert refused.status_code == 401
    assert error_code(refused) == "invalid_api_key"
    assert (await api.client.get("/api/auth/keys", headers=user.headers)).json() == []


async def test_revoking_another_users_api_key_is_404(api: Api) -> None:
    owner = await api.user()
    intruder = await api.user()
    created = (await create_key(api, owner.headers)).json()
    response = await api.client.delete(f"/api/auth/keys/{created['id']}", headers=intruder.headers)
    assert response.status_code == 404
    assert error_code(response) == "not_found"
    missing = await api.client.delete("/api/auth/keys/key_0000000000000000", headers=owner.headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == response.json()["error"]["message"]
    assert (await me(api, created["key"])).status_code == 200


async def test_api_keys_are_listed_only_to_their_owner(api: Api) -> None:
    owner = await api.user()
    other = await api.user()
    await create_key(api, owner.headers)
    assert (await api.client.get("/api/auth/keys", headers=other.headers)).json() == []


@pytest.mark.parametrize("days", [0, -1, 3651, "7", 1.5, None])
async def test_api_key_expiry_must_be_a_whole_number_of_days_from_1_to_3650(
    api: Api, days: object
) -> None:
    user = await api.user()
    response = await create_key(api, user.headers, expires_in_days=days)
    if days is None:
        assert response.status_code == 201
        assert response.json()["expires_at"] is None
    else:
        assert response.status_code == 422
        assert error_code(response) == "validation_error"


async def test_api_key_expiry_sets_expires_at(api: Api) -> None:
    user = await api.user()
    before = datetime.now(UTC)
    response = await create_key(api, user.headers, expires_in_days=3650)
    assert response.status_code == 201
    expires_at = datetime.fromisoformat(response.json()["expires_at"])
    assert before + timedelta(days=3650) <= expires_at <= datetime.now(UTC) + timedelta(days=3650)


async def test_expired_api_key_is_refused(api: Api) -> None:
    user = await api.user()
    created = (await create_key(api, user.headers, expires_in_days=1)).json()
    async with api.services.database.session() as session:
        await session.execute(
            update(ApiKey)
            .where(ApiKey.id == created["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    response = await me(api, created["key"])
    assert response.status_code == 401
    assert error_code(response) == "api_key_expired"


async def test_api_keys_need_authentication(api: Api) -> None:
    response = await api.client.post("/api/auth/keys", json={"name": "ci"})
    assert response.status_code == 401
    assert (await api.client.get("/api/auth/keys")).status_code == 401


# -- WebSocket tickets ------------------------------------------------------------------------

EVENTS = "/api/containers/ctr_a/events"
TERMINAL = "/api/containers/ctr_a/terminals/t-1"


async def new_ticket(api: Api, headers: dict[str, str], path: str = EVENTS) -> str:
    response = await api.client.post("/api/auth/ws-ticket", json={"path": path}, headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["ticket"])


async def test_ws_ticket_is_issued_to_an_authenticated_user(api: Api) -> None:
    user = await api.user()
    response = await api.client.post(
        "/api/auth/ws-ticket", json={"path": EVENTS}, headers=user.headers
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"ticket", "expires_in"}
    assert body["expires_in"] == api.services.settings.ws_ticket_ttl_seconds
    assert (await api.client.post("/api/auth/ws-ticket", json={"path": EVENTS})).status_code == 401


async def test_ws_ticket_names_the_socket_it_opens(api: Api) -> None:
    user = await api.user()
    for body in (None, {}, {"path": "api/containers/x/events"}, {"path": "/api/x?ticket=y"},
                 {"path": "/api/" + "x" * 200}, {"path": "/elsewhere"}):  # fmt: skip
        response = await api.client.post("/api/auth/ws-ticket", json=body, headers=user.headers)
        assert response.status_code == 422, body
    async with api.services.database.session() as session:
        assert await session.scalar(select(func.count()).select_from(WsTicket)) == 0


async def test_ws_ticket_can_be_redeemed_once(api: Api) -> None:
    user = await api.user()
    ticket = await new_ticket(api, user.headers)
    principal = await api.services.credentials.redeem_ws_ticket(ticket, EVENTS)
    assert principal.user_id == user.id
    assert principal.session_id is not None
    assert principal.api_key_id is None
    with pytest.raises(Unauthorized) as second:
        await api.services.credentials.redeem_ws_ticket(ticket, EVENTS)
    assert second.value.code == "invalid_ticket"


async def test_ws_ticket_opens_only_the_socket_it_was_made_for(api: Api) -> None:
    user = await api.user()
    ticket = await new_ticket(api, user.headers, EVENTS)
    for elsewhere in (TERMINAL, "/api/containers/ctr_b/events", EVENTS + "/", EVENTS.upper()):
        with pytest.raises(Unauthorized) as refused:
            await api.services.credentials.redeem_ws_ticket(ticket, elsewhere)
        assert refused.value.code == "invalid_ticket"
    # Refused elsewhere, it was not used up: it still opens its own socket, once.
    principal = await api.services.credentials.redeem_ws_ticket(ticket, EVENTS)
    assert principal.user_id == user.id


async def test_unknown_ws_ticket_is_refused(api: Api) -> None:
    with pytest.raises(Unauthorized):
        await api.services.credentials.redeem_ws_ticket("wst_no-such-ticket", EVENTS)


async def test_expired_ws_ticket_is_refused(api_factory: ApiFactory) -> None:
    api = await api_factory(ws_ticket_ttl_seconds=5)
    user = await api.user()
    response = await api.client.post(
        "/api/auth/ws-ticket", json={"path": EVENTS}, headers=user.headers
    )
    assert response.json()["expires_in"] == 5
    async with api.services.database.session() as session:
        await session.execute(
            update(WsTicket).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    with pytest.raises(Unauthorized):
        await api.services.credentials.redeem_ws_ticket(response.json()["ticket"], EVENTS)


async def test_ws_ticket_is_issued_for_an_api_key(api: Api) -> None:
    user = await api.user()
    created = (await create_key(api, user.headers)).json()
    ticket = await new_ticket(api, bearer(created["key"]))
    principal = await api.services.credentials.redeem_ws_ticket(ticket, EVENTS)
    assert principal.user_id == user.id
    assert principal.api_key_id == created["id"]
    assert principal.session_id is None


async def test_ws_ticket_of_an_ended_session_or_key_is_refused(api: Api) -> None:
    user = await api.user()
    of_session = await new_ticket(api, user.headers)
    key = (await create_key(api, user.headers)).json()
    of_key = await new_ticket(api, bearer(key["key"]))
    response = await api.client.delete(f"/api/auth/keys/{key['id']}", headers=user.headers)
    assert response.status_code == 204
    response = await api.client.post("/api/auth/logout", headers=user.headers)
    assert response.status_code == 204
    for ticket in (of_session, of_key):
        with pytest.raises(Unauthorized):
            await api.services.credentials.redeem_ws_ticket(ticket, EVENTS)


# -- deleting the account ---------------------------------------------------------------------


async def delete_me(api: Api, headers: dict[str, str], password: str) -> httpx.Response:
    return await api.client.request(
        "DELETE", "/api/auth/me", json={"password": password}, headers=headers
    )


async def rows_of(api: Api, user_id: str) -> dict[str, int]:
    counts = {}
    async with api.services.database.session() as session:
        for model, column in ((User, User.id), (Project, Project.owner_id),
                              (AuthSession, AuthSession.user_id), (ApiKey, ApiKey.user_id),
                              (WsTicket, WsTicket.user_id), (EmailToken, EmailToken.user_id)):  # fmt: skip
            counts[model.__name__] = await session.scalar(
                select(func.count()).select_from(model).where(column == user_id)
            )
    return counts


async def test_deleting_the_account_needs_its_password_and_removes_everything(api: Api) -> None:
    user, other = await api.user(), await api.user()
    for owner in (user, other):
        created = await api.client.post("/api/projects", json={"name": "p"}, headers=owner.headers)
        assert created.status_code == 201
    key = (await create_key(api, user.headers)).json()
    await api.client.post("/api/auth/ws-ticket", json={"path": EVENTS}, headers=user.headers)
    await api.client.post("/api/auth/password-reset/request", json={"email": user.email})
    await api.services.tasks.drain()
    before = await rows_of(api, user.id)
    assert all(before.values()), before

    for password in ("not the password", PASSWORD.upper()):
        wrong = await delete_me(api, user.headers, password)
        assert wrong.status_code == 403
        assert error_code(wrong) == "wrong_password"
    assert await rows_of(api, user.id) == before
    assert (await delete_me(api, {}, PASSWORD)).status_code == 401

    response = await delete_me(api, bearer(key["key"]), PASSWORD)  # a key may do it too
    assert response.status_code == 204
    assert not any((await rows_of(api, user.id)).values())
    assert (await me(api, user.tokens["access_token"])).status_code == 401
    assert (await login(api, user.email)).status_code == 401
    assert (await refresh(api, user.tokens["refresh_token"])).status_code == 401
    theirs = await api.client.get("/api/projects", headers=other.headers)
    assert theirs.json()["total"] == 1
    # The audit log keeps who went, by whose hand, from where.
    await api.services.audit.flush()
    gone = await api.services.audit.query(AuditQuery(action=actions.ACCOUNT_DELETED))
    assert [(e.actor_id, e.actor_email, e.target_id, e.detail) for e in gone.items] == [
        (user.id, user.email, user.id, {"by": "self"})
    ]
    assert gone.items[0].source_ip is not None
    # The address is free again.
    assert (await register(api, user.email)).status_code == 202


async def test_wrong_passwords_at_account_deletion_are_throttled(api_factory: ApiFactory) -> None:
    api = await api_factory(login_max_failures_per_account=2)
    user = await api.user()
    for _ in range(2):
        assert (await delete_me(api, user.headers, "guess")).status_code == 403
    throttled = await delete_me(api, user.headers, PASSWORD)
    assert throttled.status_code == 429
    assert error_code(throttled) == "login_throttled"
    assert (await me(api, user.tokens["access_token"])).status_code == 200


async def test_two_gateways_sharing_redis_throttle_one_account_together(
    api_factory: ApiFactory, redis_url: str
) -> None:
    """Guesses spread over two gateways (one database, one Redis) count against one limit;
    without Redis each gateway would allow the limit on its own."""
    first = await api_factory(login_max_failures_per_account=3, redis_url=redis_url)
    second = await api_factory(login_max_failures_per_account=3, redis_url=redis_url)
    user = await first.user("ada@example.com")
    for gateway in (first, second, first):
        assert (await login(gateway, user.email, "not the password")).status_code == 401
    for gateway in (first, second):
        throttled = await login(gateway, user.email)
        assert throttled.status_code == 429
        assert error_code(throttled) == "login_throttled"
        assert 1 <= int(throttled.headers["Retry-After"]) <= 900


async def test_a_gateway_whose_redis_does_not_answer_does_not_start(
    tmp_path: Path, database_url: str, smtp: tuple[Mailbox, int]
) -> None:
    settings = make_settings(tmp_path, database_url, smtp[1],
                             redis_url=f"redis://:hunter2@127.0.0.1:{free_port()}/0")  # fmt: skip
    app = create_app(settings)
    with pytest.raises(RedisUnavailable) as raised:
        async with app.router.lifespan_context(app):
            pass
    assert "Redis does not answer at redis://***@127.0.0.1:" in raised.value.message
    assert "hunter2" not in raised.value.message
