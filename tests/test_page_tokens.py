"""Page tokens (`POST /api/auth/page-tokens`): what a browser page (bolt.diy's) holds instead of
an API key. Minted by its server with a key or a login, short-lived, ended with what minted
it, and unable to touch credentials, the account or administration."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import jwt

from tests.conftest import Api, TestUser


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def api_key(api: Api, user: TestUser) -> dict[str, Any]:
    made = await api.client.post("/api/auth/keys", json={"name": "bolt"}, headers=user.headers)
    assert made.status_code == 201, made.text
    return dict(made.json())


async def page_token(api: Api, credential: str) -> str:
    minted = await api.client.post("/api/auth/page-tokens", headers=bearer(credential))
    assert minted.status_code == 201, minted.text
    body = minted.json()
    assert body["expires_in"] == api.services.settings.page_token_ttl_seconds
    assert body["token_type"] == "bearer"
    return str(body["token"])


def code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


async def test_a_key_mints_a_page_token_that_works_with_projects(api: Api) -> None:
    user = await api.user()
    key = await api_key(api, user)
    token = await page_token(api, key["key"])
    made = await api.client.post(
        "/api/projects", json={"name": "from a page"}, headers=bearer(token)
    )
    assert made.status_code == 201, made.text
    listed = await api.client.get("/api/projects", headers=bearer(token))
    assert [p["name"] for p in listed.json()["items"]] == ["from a page"]
    ticket = await api.client.post(
        "/api/auth/ws-ticket", json={"path": "/api/events"}, headers=bearer(token)
    )
    assert ticket.status_code == 200, ticket.text
    assert (await api.client.get("/api/auth/me", headers=bearer(token))).json()["id"] == user.id


async def test_a_page_token_cannot_touch_credentials_the_account_or_administration(
    api: Api,
) -> None:
    admin = await api.user("root@example.com", admin=True)
    key = await api_key(api, admin)
    token = await page_token(api, key["key"])
    attempts = [
        ("POST", "/api/auth/keys", {"name": "escalate"}),
        ("GET", "/api/auth/keys", None),
        ("DELETE", f"/api/auth/keys/{key['id']}", None),
        ("POST", "/api/auth/page-tokens", None),
        ("DELETE", "/api/auth/me", {"password": "x"}),
        ("GET", "/api/admin/audit", None),
    ]
    for method, path, body in attempts:
        response = await api.client.request(method, path, json=body, headers=bearer(token))
        assert response.status_code == 403, (method, path, response.text)
        assert code(response) == "page_token_not_allowed", (method, path)
    # The key it came from still works: nothing was revoked or deleted.
    assert (await api.client.get("/api/auth/keys", headers=bearer(key["key"]))).status_code == 200


async def test_revoking_the_key_ends_its_page_tokens(api: Api) -> None:
    user = await api.user()
    key = await api_key(api, user)
    token = await page_token(api, key["key"])
    assert (await api.client.get("/api/projects", headers=bearer(token))).status_code == 200
    revoked = await api.client.delete(f"/api/auth/keys/{key['id']}", headers=user.headers)
    assert revoked.status_code == 204
    after = await api.client.get("/api/projects", headers=bearer(token))
    assert after.status_code == 401
    assert code(after) == "api_key_revoked"


async def test_a_login_mints_one_bound_to_its_session(api: Api) -> None:
    user = await api.user()
    token = await page_token(api, user.tokens["access_token"])
    assert (await api.client.get("/api/projects", headers=bearer(token))).status_code == 200
    out = await api.client.post("/api/auth/logout", headers=user.headers)
    assert out.status_code == 204
    after = await api.client.get("/api/projects", headers=bearer(token))
    assert after.status_code == 401
    assert code(after) == "session_revoked"


async def test_expired_and_malformed_page_tokens_are_refused(api: Api) -> None:
    user = await api.user()
    key = await api_key(api, user)
    claims = jwt.decode(await page_token(api, key["key"]), options={"verify_signature": False})
    assert claims["typ"] == "page"
    assert claims["exp"] - claims["iat"] == api.services.settings.page_token_ttl_seconds
    now = int(datetime.now(UTC).timestamp())

    def signed(changes: dict[str, Any]) -> str:
        values = {k: v for k, v in {**claims, **changes}.items() if v is not None}
        return jwt.encode(values, api.services.settings.signing_key(), algorithm="HS256")

    expired = await api.client.get(
        "/api/projects", headers=bearer(signed({"iat": now - 900, "exp": now - 60}))
    )
    assert (expired.status_code, code(expired)) == (401, "token_expired")
    session = user.tokens["access_token"]
    sid = jwt.decode(session, options={"verify_signature": False})["sid"]
    for changes in (
        {"sid": sid},  # bound to two credentials
        {"key": None},  # bound to none
        {"key": 7},  # not an id
        {"typ": "refresh"},
        {"typ": "access", "key": None},  # an access token names its session
    ):
        response = await api.client.get("/api/projects", headers=bearer(signed(changes)))
        assert (response.status_code, code(response)) == (401, "invalid_token"), changes
