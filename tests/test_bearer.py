"""`Authorization: Bearer` parsed once, for FastAPI's dependencies and the hand-parsed routes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudcontainer.app import create_app
from cloudcontainer.auth.tokens import bearer_token
from cloudcontainer.config import Settings


@pytest.mark.parametrize(
    ("header", "token"),
    [
        pytest.param("Bearer abc.def", "abc.def", id="plain"),
        pytest.param("bearer abc", "abc", id="lower-case-scheme"),
        pytest.param("BEARER abc", "abc", id="upper-case-scheme"),
        pytest.param("Bearer    abc  ", "abc", id="extra-spaces-around-the-token"),
        pytest.param("Bearer a b", "a b", id="inner-space-kept"),
        pytest.param("Bearer cc_ключ", "cc_ключ", id="non-ascii-token-verbatim"),
        pytest.param("Bearer caf\xe9", "caf\xe9", id="latin-1-header-bytes-verbatim"),
    ],
)
def test_a_bearer_header_yields_its_token(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="no-header"),
        pytest.param("", id="empty"),
        pytest.param("Bearer", id="missing-token"),
        pytest.param("Bearer ", id="missing-token-one-space"),
        pytest.param("Bearer    ", id="missing-token-spaces"),
        pytest.param(" Bearer abc", id="leading-space"),
        pytest.param("Bearer\tabc", id="tab-not-a-separator"),
        pytest.param("Basic dXNlcjpwYXNz", id="other-scheme"),
        pytest.param("Bearerabc", id="no-separator"),
        pytest.param("\u0412earer abc", id="non-ascii-scheme"),  # a Cyrillic Ve
    ],
)
def test_a_header_without_a_bearer_token_yields_none(header: str | None) -> None:
    assert bearer_token(header) is None


def test_openapi_documents_the_bearer_scheme_on_protected_routes(tmp_path: Path) -> None:
    schema = create_app(Settings(data_dir=tmp_path)).openapi()
    assert schema["components"]["securitySchemes"] == {
        "HTTPBearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An access token from /api/auth/login, or an API key (`cc_...`).",
        }
    }
    for path, method in (("/api/projects", "get"), ("/api/auth/logout", "post")):
        assert schema["paths"][path][method]["security"] == [{"HTTPBearer": []}], path
