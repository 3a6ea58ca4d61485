"""Bad input to the auth and projects endpoints: a clear 4xx in the error shape, nothing written.

Every error answers `{"error": {"code", "message"}}` as JSON; no input yields a 500 or a
traceback, and a refused write leaves every table exactly as it was.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from cloudcontainer.audit import actions
from cloudcontainer.db import AuditEvent, Base
from cloudcontainer.db.models import User
from tests.conftest import PASSWORD, Api, ApiFactory, TestUser, make_settings, running_api
from tests.support.smtp import Mailbox

JSON = {"Content-Type": "application/json"}
MATH_U = "\U0001d518"  # MATHEMATICAL FRAKTUR CAPITAL U: four bytes in UTF-8

# -- helpers ----------------------------------------------------------------------------------


def error_of(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """Assert `response` is the error shape with `status` (and `code`); return its error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert list(body) == ["error"], body
    error: dict[str, Any] = body["error"]
    assert isinstance(error.get("code"), str), body
    assert isinstance(error.get("message"), str), body
    assert error["code"], body
    assert error["message"], body
    assert "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code, body
    return error


def locations(error: dict[str, Any]) -> list[list[Any]]:
    return [detail["loc"] for detail in error.get("details") or []]


async def database_rows(api: Api) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, to compare before and after a request (audit events
    included, once the audit log's writer has written what was queued)."""
    await api.services.audit.flush()
    rows: dict[str, list[tuple[Any, ...]]] = {}
    async with api.services.database.session() as session:
        for table in Base.metadata.sorted_tables:
            result = await session.execute(select(table))
            rows[table.name] = sorted((tuple(row) for row in result), key=repr)
    return rows


@asynccontextmanager
async def writes_nothing(api: Api, *, but_audit: str | None = None) -> AsyncIterator[None]:
    """No row changes; with `but_audit`, except one new audit event of that action (a failed
    login is on record, issue 9)."""
    before = await database_rows(api)
    yield
    after = await database_rows(api)
    if but_audit is not None:
        new = [row for row in after.pop("audit_events") if row not in before["audit_events"]]
        assert [row[AuditEvent.__table__.columns.keys().index("action")] for row in new] == [
            but_audit
        ]
        before.pop("audit_events")
    assert after == before


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    body: dict[str, Any]  # a valid body
    authenticated: bool = False


ENDPOINTS = {
    "register": Endpoint(
        "POST", "/api/auth/register", {"email": "new@example.com", "password": PASSWORD}
    ),
    "login": Endpoint("POST", "/api/auth/login", {"email": "user0@example.com", "password": "x"}),
    "refresh": Endpoint("POST", "/api/auth/refresh", {"refresh_token": "abc"}),
    "logout": Endpoint("POST", "/api/auth/logout", {"refresh_token": "abc"}),
    "verify-email": Endpoint("POST", "/api/auth/verify-email", {"token": "abc"}),
    "resend-verification": Endpoint(
        "POST", "/api/auth/verify-email/resend", {"email": "user0@example.com"}
    ),
    "reset-request": Endpoint(
        "POST", "/api/auth/password-reset/request", {"email": "user0@example.com"}
    ),
    "reset-confirm": Endpoint(
        "POST", "/api/auth/password-reset/confirm", {"token": "abc", "password": PASSWORD}
    ),
    "create-key": Endpoint("POST", "/api/auth/keys", {"name": "ci"}, authenticated=True),
    "create-project": Endpoint("POST", "/api/projects", {"name": "demo"}, authenticated=True),
    "update-project": Endpoint(
        "PATCH", "/api/projects/{project_id}", {"name": "renamed"}, authenticated=True
    ),
}
# Endpoints whose body is required: `logout` takes an optional one.
REQUIRED_BODY = [name for name in ENDPOINTS if name != "logout"]
NAMED = ["create-project", "update-project", "create-key"]


@dataclass
class World:
    """A running app with one logged-in user who owns one project."""

    api: Api
    user: TestUser
    project: dict[str, Any]

    def url(self, endpoint: Endpoint) -> str:
        return endpoint.path.format(project_id=self.project["id"])

    async def send(self, name: str, **kwargs: Any) -> httpx.Response:
        endpoint = ENDPOINTS[name]
        headers = {**(self.user.headers if endpoint.authenticated else {})}
        headers.update(kwargs.pop("headers", {}))
        return await self.api.client.request(
            endpoint.method, self.url(endpoint), headers=headers, **kwargs
        )


@pytest.fixture
async def world(api: Api) -> World:
    user = await api.user()
    assert user.email == "user0@example.com"
    response = await api.client.post(
        "/api/projects",
        json={"name": "existing", "description": "as it was"},
        headers=user.headers,
    )
    assert response.status_code == 201, response.text
    return World(api=api, user=user, project=response.json())


# -- malformed and non-object JSON ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b'{"name": "x",}',
        b"{'name': 'x'}",
        b'{"name": "x"} trailing',
        b'{"name": "x"}{"name": "y"}',
        b'{"name": undefined}',
    ],
    ids=[
        "unclosed",
        "trailing-comma",
        "single-quotes",
        "trailing-text",
        "two-objects",
        "js-literal",
    ],
)
async def test_malformed_json_is_400_invalid_json_and_writes_nothing(
    world: World, body: bytes
) -> None:
    for name in ENDPOINTS:
        async with writes_nothing(world.api):
            response = await world.send(name, content=body, headers=JSON)
        error_of(response, 400, "invalid_json")


@pytest.mark.parametrize(
    "body",
    [b'{"name": "\xff\xfe"}', b"[" * 100_000 + b"]" * 100_000],
    ids=["not-utf8", "nested-100000-deep"],
)
async def test_a_body_that_cannot_be_parsed_is_400(world: World, body: bytes) -> None:
    for name in ENDPOINTS:
        async with writes_nothing(world.api):
            response = await world.send(name, content=body, headers=JSON)
        error_of(response, 400)


@pytest.mark.parametrize(
    "body",
    [b"[]", b'[{"name": "x"}]', b'"name"', b"42", b"true", b"null"],
    ids=["empty-array", "array-of-object", "string", "number", "boolean", "null"],
)
async def test_json_that_is_not_an_object_is_422(world: World, body: bytes) -> None:
    for name in REQUIRED_BODY:
        async with writes_nothing(world.api):
            response = await world.send(name, content=body, headers=JSON)
        error = error_of(response, 422, "validation_error")
        assert ["body"] in locations(error), (name, error)


async def test_a_missing_body_is_422(world: World) -> None:
    for name in REQUIRED_BODY:
        async with writes_nothing(world.api):
            response = await world.send(name)
        error = error_of(response, 422, "validation_error")
        assert ["body"] in locations(error), (name, error)


# -- wrong types, missing and unknown fields --------------------------------------------------


WRONG_TYPES: dict[str, list[tuple[str, str, Any]]] = {
    "accounts": [
        ("register", "email", []), ("register", "email", 123), ("register", "email", None),
        ("register", "password", True), ("register", "password", 123456789),
        ("login", "email", {}), ("login", "password", True),
        ("refresh", "refresh_token", 123), ("logout", "refresh_token", ["abc"]),
        ("verify-email", "token", True), ("resend-verification", "email", 1.5),
        ("reset-request", "email", ["user0@example.com"]),
        ("reset-confirm", "token", {}), ("reset-confirm", "password", 123456789),
    ],
    "keys-and-projects": [
        ("create-key", "name", 123), ("create-key", "expires_in_days", "7"),
        ("create-key", "expires_in_days", True), ("create-key", "expires_in_days", 1.5),
        ("create-project", "name", 123), ("create-project", "name", True),
        ("create-project", "name", None), ("create-project", "name", ["x"]),
        ("create-project", "name", {"x": 1}), ("create-project", "description", 5),
        ("create-project", "description", ["a"]),
        ("update-project", "name", 123), ("update-project", "description", False),
    ],
}  # fmt: skip


@pytest.mark.parametrize("cases", list(WRONG_TYPES.values()), ids=list(WRONG_TYPES))
async def test_a_field_of_the_wrong_type_is_422_naming_the_field(
    world: World, cases: list[tuple[str, str, Any]]
) -> None:
    for endpoint, field, value in cases:
        body = {**ENDPOINTS[endpoint].body, field: value}
        async with writes_nothing(world.api):
            response = await world.send(endpoint, json=body)
        error = error_of(response, 422, "validation_error")
        assert ["body", field] in locations(error), (endpoint, field, value, error)


async def test_a_whole_number_written_as_a_float_is_an_integer(world: World) -> None:
    # JSON has one number type, and JSON Schema's `integer` takes 7.0; 7.5 is still refused above.
    response = await world.send("create-key", json={"name": "ci", "expires_in_days": 7.0})
    assert response.status_code == 201, response.text
    assert response.json()["expires_at"] is not None


MISSING_FIELDS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("register", {}, ["email", "password"]),
    ("register", {"email": "new@example.com"}, ["password"]),
    ("login", {"password": PASSWORD}, ["email"]),
    ("refresh", {}, ["refresh_token"]),
    ("verify-email", {}, ["token"]),
    ("resend-verification", {}, ["email"]),
    ("reset-request", {}, ["email"]),
    ("reset-confirm", {"token": "abc"}, ["password"]),
    ("create-key", {"expires_in_days": 7}, ["name"]),
    ("create-project", {"description": "no name"}, ["name"]),
]


async def test_a_missing_required_field_is_422_naming_it(world: World) -> None:
    for endpoint, body, missing in MISSING_FIELDS:
        async with writes_nothing(world.api):
            response = await world.send(endpoint, json=body)
        error = error_of(response, 422, "validation_error")
        for name in missing:
            assert ["body", name] in locations(error), (endpoint, error)


async def test_an_unknown_field_is_422_naming_it(world: World) -> None:
    for endpoint in ENDPOINTS:
        body = {**ENDPOINTS[endpoint].body, "is_admin": True}
        async with writes_nothing(world.api):
            response = await world.send(endpoint, json=body)
        error = error_of(response, 422, "validation_error")
        assert ["body", "is_admin"] in locations(error), (endpoint, error)


async def test_a_project_body_cannot_set_server_owned_fields(world: World) -> None:
    for endpoint, extra in itertools.product(
        ("create-project", "update-project"), ("id", "owner_id", "created_at")
    ):
        body = {**ENDPOINTS[endpoint].body, extra: "usr_someone_else"}
        async with writes_nothing(world.api):
            response = await world.send(endpoint, json=body)
        error = error_of(response, 422, "validation_error")
        assert ["body", extra] in locations(error), error


# -- content type -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
        None,
    ],
    ids=["text", "form", "multipart", "xml", "none"],
)
async def test_a_json_body_under_another_content_type_is_refused(
    world: World, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    for name in ("register", "create-project", "update-project", "create-key"):
        content = json.dumps(ENDPOINTS[name].body).encode()
        async with writes_nothing(world.api):
            response = await world.send(name, content=content, headers=headers)
        error = error_of(response, 422, "validation_error")
        assert ["body"] in locations(error), (name, error)


async def test_json_with_a_charset_parameter_is_accepted(world: World) -> None:
    response = await world.send(
        "create-project",
        content=json.dumps({"name": "charset"}).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 201, response.text


# -- body size --------------------------------------------------------------------------------

LIMIT = 1024


def project_body_of_size(size: int) -> bytes:
    head, tail = b'{"name": "sized", "description": "', b'"}'
    body = head + b"x" * (size - len(head) - len(tail)) + tail
    assert len(body) == size
    return body


@pytest.fixture
async def small_world(api_factory: ApiFactory) -> World:
    """Like `world`, on an app that takes bodies of at most LIMIT bytes."""
    api = await api_factory(max_body_bytes=LIMIT)
    user = await api.user()
    return World(api=api, user=user, project={"id": "prj_none"})


async def test_a_body_of_exactly_the_limit_is_accepted(small_world: World) -> None:
    response = await small_world.send(
        "create-project", content=project_body_of_size(LIMIT), headers=JSON
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("size", [LIMIT + 1, 100 * LIMIT], ids=["one-byte-over", "100x"])
async def test_a_declared_length_over_the_limit_is_413(small_world: World, size: int) -> None:
    for name in ("create-project", "register", "login"):
        async with writes_nothing(small_world.api):
            response = await small_world.send(
                name, content=project_body_of_size(size), headers=JSON
            )
        assert response.request.headers["content-length"] == str(size)
        error_of(response, 413, "payload_too_large")


async def test_a_content_length_header_over_the_limit_is_413_whatever_the_body(
    small_world: World,
) -> None:
    async with writes_nothing(small_world.api):
        response = await small_world.send(
            "create-project",
            content=b'{"name": "small"}',
            headers={**JSON, "Content-Length": str(10**12)},
        )
    error_of(response, 413, "payload_too_large")


async def chunked(payload: bytes, chunk: int = 100) -> AsyncIterator[bytes]:
    for start in range(0, len(payload), chunk):
        yield payload[start : start + chunk]


async def test_a_chunked_body_over_the_limit_is_413(small_world: World) -> None:
    async with writes_nothing(small_world.api):
        response = await small_world.send(
            "create-project", content=chunked(project_body_of_size(3 * LIMIT)), headers=JSON
        )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    error_of(response, 413, "payload_too_large")


async def test_a_chunked_body_within_the_limit_is_accepted(small_world: World) -> None:
    response = await small_world.send(
        "create-project", content=chunked(project_body_of_size(LIMIT)), headers=JSON
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 201, response.text


async def test_a_content_length_that_is_not_a_number_is_400(world: World) -> None:
    for length in ("abc", "-1", "1.5", "0x10", "+5", "1e3", ""):
        async with writes_nothing(world.api):
            response = await world.send(
                "create-project",
                content=b'{"name": "x"}',
                headers={**JSON, "Content-Length": length},
            )
        error_of(response, 400, "bad_request")


# -- text that looks like SQL -----------------------------------------------------------------

SQL_LOOKING = [
    "'; DROP TABLE users; --",
    '" OR 1=1 --',
    "Robert'); DROP TABLE projects;--",
    "1' UNION SELECT password_hash FROM users --",
    "%' OR name LIKE '%",
    "\\'; --",
    "$1::text",
    ":name",
]


async def test_sql_looking_text_is_stored_and_read_back_verbatim(world: World) -> None:
    api, user = world.api, world.user
    for text in SQL_LOOKING:
        created = await api.client.post(
            "/api/projects", json={"name": text, "description": text}, headers=user.headers
        )
        assert created.status_code == 201, created.text
        assert (created.json()["name"], created.json()["description"]) == (text, text)
        project_url = f"/api/projects/{created.json()['id']}"
        fetched = await api.client.get(project_url, headers=user.headers)
        assert (fetched.json()["name"], fetched.json()["description"]) == (text, text)
        updated = await api.client.patch(
            project_url, json={"name": text + " 2"}, headers=user.headers
        )
        assert updated.json()["name"] == text + " 2"

    listed = await api.client.get("/api/projects", headers=user.headers)
    names = sorted(item["name"] for item in listed.json()["items"])
    assert names == sorted([text + " 2" for text in SQL_LOOKING] + ["existing"])
    # The tables the strings name are still there and still work.
    me = await api.client.get("/api/auth/me", headers=user.headers)
    assert me.status_code == 200
    login = await api.client.post(
        "/api/auth/login", json={"email": user.email, "password": PASSWORD}
    )
    assert login.status_code == 200


SQL_LOOKING_EMAILS = ["admin'--@example.com", "x'OR'1'='1@example.com", "%'--@example.com"]


async def test_sql_looking_email_is_just_an_address(world: World) -> None:
    api = world.api
    for email in SQL_LOOKING_EMAILS:
        async with writes_nothing(api, but_audit=actions.LOGIN_FAILED):
            response = await api.client.post(
                "/api/auth/login", json={"email": email, "password": PASSWORD}
            )
        error_of(response, 401, "invalid_credentials")
        registered = await api.client.post(
            "/api/auth/register", json={"email": email, "password": PASSWORD}
        )
        assert registered.status_code == 202, registered.text

    async with api.services.database.session() as session:
        stored = list(await session.scalars(select(User.email)))
    assert sorted(stored) == sorted(
        [*(email.lower() for email in SQL_LOOKING_EMAILS), world.user.email]
    )


# -- unicode ----------------------------------------------------------------------------------


GOOD_NAMES = {
    "emoji": "🚀 launch 👩‍👩‍👧‍👦",
    "arabic": "مشروع تجريبي",
    "hebrew-mixed": "פרויקט demo 2",
    "combining": "Cafe\u0301 nai\u0308ve",
    "cjk": "项目 プロジェクト 프로젝트",
    "zalgo": "Z\u0338\u0322a\u0335l\u0336g\u0337o\u0334",
    "100-four-byte": MATH_U * 100,
    "100-emoji": "😀" * 100,
}


async def test_unicode_names_are_stored_verbatim(world: World) -> None:
    api, user = world.api, world.user
    for label, name in GOOD_NAMES.items():
        created = await api.client.post(
            "/api/projects", json={"name": name, "description": name * 3}, headers=user.headers
        )
        assert created.status_code == 201, (label, created.text)
        project_url = f"/api/projects/{created.json()['id']}"
        fetched = await api.client.get(project_url, headers=user.headers)
        assert fetched.json()["name"] == name, label
        assert fetched.json()["description"] == name * 3, label

        key = await api.client.post("/api/auth/keys", json={"name": name}, headers=user.headers)
        assert key.status_code == 201, (label, key.text)
        assert key.json()["name"] == name, label


async def test_an_escaped_surrogate_pair_is_one_character(world: World) -> None:
    response = await world.send(
        "create-project", content=b'{"name": "\\ud83d\\ude80 go"}', headers=JSON
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "🚀 go"


async def test_a_name_is_trimmed_and_a_description_kept_as_sent(world: World) -> None:
    description = "  line one\r\n\tline two\n\n"
    response = await world.send(
        "create-project", json={"name": "  padded  ", "description": description}
    )
    assert response.status_code == 201, response.text
    assert (response.json()["name"], response.json()["description"]) == ("padded", description)


# Raw JSON string contents, so that escapes reach the server exactly as written.
BAD_NAMES = {
    "nul": [rb"\u0000", rb"a\u0000b"],
    "lone-surrogates": [rb"\ud800", rb"\udfff", rb"\ude80\ud83d", rb"a\ud83dx"],
    "controls": [rb"\u0007ring", rb"\u001b[31mred", rb"a\tb", rb"a\nb", rb"a\rb", rb"a\u007f"],
    "blank": [b"", b" ", b"     ", rb"\u00a0", rb"\u3000", rb"\u2003\u2009", rb"\u2028"],
    "too-long": [b"a" * 101, MATH_U.encode() * 101, b" " * 50 + b"a" * 51],
}


@pytest.mark.parametrize("raws", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
async def test_a_name_that_cannot_be_stored_is_422(world: World, raws: list[bytes]) -> None:
    for raw, endpoint in itertools.product(raws, NAMED):
        async with writes_nothing(world.api):
            response = await world.send(endpoint, content=b'{"name": "' + raw + b'"}', headers=JSON)
        error = error_of(response, 422, "validation_error")
        assert ["body", "name"] in locations(error), (raw, endpoint, error)


async def test_the_documented_name_schema_tells_good_names_from_bad_ones(world: World) -> None:
    spec = (await world.api.client.get("/openapi.json")).json()
    schema = spec["components"]["schemas"]["ProjectCreate"]["properties"]["name"]
    pattern = re.compile(schema["pattern"])

    def documented_valid(name: str) -> bool:
        return schema["minLength"] <= len(name) <= schema["maxLength"] and bool(
            pattern.search(name)
        )

    for label, name in GOOD_NAMES.items():
        assert documented_valid(name), label
    # A lone surrogate is not Unicode text at all, so no JSON Schema pattern speaks of it.
    for group, raws in BAD_NAMES.items():
        for raw in raws if group != "lone-surrogates" else []:
            assert not documented_valid(json.loads(b'"' + raw + b'"')), raw


BAD_DESCRIPTIONS = {
    "nul": rb"a\u0000b",
    "lone-surrogate": rb"\ud800",
    "ansi-escape": rb"\u001b[0m",
    "bell": rb"\u0007",
    "2001-chars": b"d" * 2001,
}


@pytest.mark.parametrize("raw", list(BAD_DESCRIPTIONS.values()), ids=list(BAD_DESCRIPTIONS))
async def test_a_description_that_cannot_be_stored_is_422(world: World, raw: bytes) -> None:
    for endpoint in ("create-project", "update-project"):
        body = b'{"name": "fine", "description": "' + raw + b'"}'
        async with writes_nothing(world.api):
            response = await world.send(endpoint, content=body, headers=JSON)
        error = error_of(response, 422, "validation_error")
        assert ["body", "description"] in locations(error), (endpoint, error)


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("password", rb"pass\u0000word1"),
        ("password", rb"\ud800password"),
        ("email", rb"a\u0000b@example.com"),
        ("email", rb"a@exa\u0007mple.com"),
        ("email", rb"\udfff@example.com"),
    ],
    ids=["password-nul", "password-surrogate", "email-nul", "email-bell", "email-surrogate"],
)
async def test_credentials_that_cannot_be_stored_are_422(
    world: World, field: str, raw: bytes
) -> None:
    body = {"email": "fresh@example.com", "password": PASSWORD}
    text = json.dumps({key: value for key, value in body.items() if key != field})
    content = text[:-1].encode() + b', "' + field.encode() + b'": "' + raw + b'"}'
    async with writes_nothing(world.api):
        response = await world.send("register", content=content, headers=JSON)
    error = error_of(response, 422, "validation_error")
    assert ["body", field] in locations(error), error


# -- credentials ------------------------------------------------------------------------------


def forged_token(world: World, key: str | None, algorithm: str) -> str:
    """The user's own claims, signed with another key (or with none)."""
    claims = jwt.decode(world.user.tokens["access_token"], options={"verify_signature": False})
    claims["exp"] = int((datetime.now(UTC) + timedelta(minutes=10)).timestamp())
    return jwt.encode(claims, key, algorithm=algorithm)


Authorization = Callable[[World], str | bytes | None]  # the header's value, or None for none
AUTHORIZATIONS: dict[str, dict[str, Authorization]] = {
    "missing-or-empty": {
        "missing": lambda world: None,
        "empty": lambda world: "",
        "scheme-only": lambda world: "Bearer",
        "empty-token": lambda world: "Bearer ",
    },
    "garbage": {
        "word": lambda world: "Bearer garbage",
        "three-dots": lambda world: "Bearer a.b.c",
        "10k-token": lambda world: "Bearer " + "a" * 10_000,
        "not-ascii": lambda world: b"Bearer \xff\xfe",
    },
    "wrong-scheme": {
        "basic": lambda world: "Basic dXNlcjpwYXNz",
        "token": lambda world: f"Token {world.user.tokens['access_token']}",
        "none": lambda world: world.user.tokens["access_token"],
    },
    "wrong-credential": {
        "refresh-token": lambda world: f"Bearer {world.user.tokens['refresh_token']}",
        "unknown-api-key": lambda world: "Bearer cc_" + "A" * 43,
        "signed-with-another-key": lambda world: "Bearer " + forged_token(world, "k" * 64, "HS256"),
        "unsigned": lambda world: "Bearer " + forged_token(world, None, "none"),
    },
}
PROTECTED = [
    ("GET", "/api/auth/me", None),
    ("GET", "/api/auth/keys", None),
    ("POST", "/api/auth/keys", {"name": "ci"}),
    ("POST", "/api/auth/ws-ticket", None),
    ("GET", "/api/projects", None),
    ("POST", "/api/projects", {"name": "sneaky"}),
    ("GET", "/api/projects/{project_id}", None),
    ("PATCH", "/api/projects/{project_id}", {"name": "sneaky"}),
    ("DELETE", "/api/projects/{project_id}", None),
]


@pytest.mark.parametrize("authorizations", list(AUTHORIZATIONS.values()), ids=list(AUTHORIZATIONS))
async def test_bad_credentials_are_401_with_a_bearer_challenge(
    world: World, authorizations: dict[str, Authorization]
) -> None:
    for (label, authorization), (method, path, body) in itertools.product(
        authorizations.items(), PROTECTED
    ):
        value = authorization(world)
        headers = {} if value is None else {"Authorization": value}
        url = path.format(project_id=world.project["id"])
        async with writes_nothing(world.api):
            response = await world.api.client.request(method, url, json=body, headers=headers)
        error_of(response, 401)
        assert response.headers["www-authenticate"] == "Bearer", (label, method, path)


async def test_the_bearer_scheme_is_case_insensitive(world: World) -> None:
    token = world.user.tokens["access_token"]
    for scheme in ("bearer", "BEARER"):
        response = await world.api.client.get(
            "/api/auth/me", headers={"Authorization": f"{scheme} {token}"}
        )
        assert response.status_code == 200, response.text


# -- routes -----------------------------------------------------------------------------------

UNKNOWN_ROUTES = [
    ("GET", "/api/nope"),
    ("GET", "/api/auth/nope"),
    ("POST", "/api/projects/abc/def"),
    ("GET", "/nope.php"),
    ("DELETE", "/api/auth"),
]


async def test_an_unknown_route_is_404_json(world: World) -> None:
    for method, path in UNKNOWN_ROUTES:
        async with writes_nothing(world.api):
            response = await world.api.client.request(method, path, headers=world.user.headers)
        error_of(response, 404, "not_found")


WRONG_METHODS = [
    ("PUT", "/api/projects", {"GET", "POST"}),
    ("DELETE", "/api/projects", {"GET", "POST"}),
    ("POST", "/api/projects/{project_id}", {"GET", "PATCH", "DELETE"}),
    ("GET", "/api/auth/login", {"POST"}),
    ("PUT", "/api/auth/me", {"GET", "DELETE"}),
    ("PATCH", "/api/auth/keys", {"GET", "POST"}),
]


async def test_a_wrong_method_is_405_json_listing_every_allowed_one(world: World) -> None:
    for method, path, allowed in WRONG_METHODS:
        url = path.format(project_id=world.project["id"])
        async with writes_nothing(world.api):
            response = await world.api.client.request(
                method, url, json={"name": "x"}, headers=world.user.headers
            )
        error_of(response, 405, "method_not_allowed")
        assert set(response.headers["allow"].split(", ")) == allowed, (method, path)


NUL_URLS = [
    ("GET", "/api/projects/%00"),
    ("GET", "/api/projects/prj%00x"),
    ("PATCH", "/api/projects/%00"),
    ("DELETE", "/api/projects/%00"),
    ("DELETE", "/api/auth/keys/%00"),
    ("GET", "/api/projects?limit=%00"),
]


async def test_a_nul_in_the_url_is_400(world: World) -> None:
    # PostgreSQL refuses text with a NUL: this once reached it as a project id and gave a 500.
    for method, path in NUL_URLS:
        async with writes_nothing(world.api):
            response = await world.api.client.request(
                method, path, json={"name": "x"}, headers=world.user.headers
            )
        error_of(response, 400, "bad_request")


async def test_a_nul_in_a_container_project_id_is_422(world: World) -> None:
    # Found by fuzzing on PostgreSQL, which refuses text holding a NUL: this was a 500 there.
    async with writes_nothing(world.api):
        response = await world.api.client.post(
            "/api/containers",
            content=b'{"project_id": "prj\\u0000", "template": "node"}',
            headers={**JSON, **world.user.headers},
        )
    error = error_of(response, 422, "validation_error")
    assert ["body", "project_id"] in locations(error), error


ODD_PROJECT_IDS = [
    "%F0%9F%9A%80",  # an emoji
    "%FF%FE",  # not UTF-8
    "%ED%A0%80",  # an encoded lone surrogate
    "x" * 5000,
    "%27%3B%20DROP%20TABLE%20projects",
]


async def test_an_odd_project_id_is_just_not_found(world: World) -> None:
    for project_id, method in itertools.product(ODD_PROJECT_IDS, ("GET", "PATCH", "DELETE")):
        async with writes_nothing(world.api):
            response = await world.api.client.request(
                method,
                f"/api/projects/{project_id}",
                json={"name": "x"} if method == "PATCH" else None,
                headers=world.user.headers,
            )
        error_of(response, 404, "project_not_found")


# -- arbitrary JSON ---------------------------------------------------------------------------

# Text of any code point, with lone surrogates (json.dumps writes them as \udXXX), controls and
# blanks drawn often.
ANY_TEXT = st.text(
    st.characters(exclude_categories=())
    | st.characters(categories=["Cs"])
    | st.sampled_from("\x00\x07\x1b\x7f \t\n\u00a0\u2028\u3000"),
    max_size=30,
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | ANY_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(ANY_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)
PROJECT_BODIES = JSON_VALUES | st.fixed_dictionaries(
    {}, optional={"name": ANY_TEXT | JSON_VALUES, "description": ANY_TEXT | JSON_VALUES}
)
REGISTER_BODIES = JSON_VALUES | st.fixed_dictionaries(
    {},
    optional={
        "email": st.emails() | ANY_TEXT | JSON_VALUES,
        "password": st.text(min_size=6, max_size=12) | JSON_VALUES,
    },
)


@pytest.mark.parametrize(
    ("path", "bodies", "success"),
    [("/api/projects", PROJECT_BODIES, 201), ("/api/auth/register", REGISTER_BODIES, 202)],
    ids=["projects", "register"],
)
def test_arbitrary_json_never_gives_a_server_error(
    tmp_path: Path,
    database_url: str,
    smtp: tuple[Mailbox, int],
    mailbox: Mailbox,
    path: str,
    bodies: st.SearchStrategy[Any],
    success: int,
) -> None:
    # A sync test with its own event loop, so that hypothesis drives the examples itself.
    app_settings = make_settings(tmp_path, database_url, smtp[1])
    with asyncio.Runner() as runner:
        stack = AsyncExitStack()
        api = runner.run(stack.enter_async_context(running_api(app_settings, mailbox)))
        try:
            headers = {**runner.run(api.user()).headers, **JSON}

            @settings(
                max_examples=50,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(body=bodies)
            def post(body: Any) -> None:
                before = runner.run(database_rows(api))
                response = runner.run(
                    api.client.post(path, content=json.dumps(body), headers=headers)
                )
                if response.status_code == success:
                    if path == "/api/projects":
                        assert response.json()["name"] == body["name"].strip()
                        assert response.json()["description"] == body.get("description", "")
                    return
                error_of(response, response.status_code)
                assert 400 <= response.status_code < 500, response.text
                assert runner.run(database_rows(api)) == before

            post()
        finally:
            runner.run(stack.aclose())
