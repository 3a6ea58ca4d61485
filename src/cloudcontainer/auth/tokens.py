"""Access tokens (JWT) and opaque secrets (refresh tokens, API keys, tickets, mailed tokens).

Opaque secrets are random and only their SHA-256 is stored, so a leaked database does not
leak a usable credential.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from cloudcontainer.errors import Unauthorized

__all__ = ["AccessClaims", "AccessTokenSigner", "bearer_token", "digest", "new_secret"]

API_KEY_PREFIX = "cc_"


def bearer_token(authorization: str | None) -> str | None:
    """The credential of an `Authorization: Bearer <token>` header, or None without one.

    Read as FastAPI's `HTTPBearer` reads it, the one parser of every route (the hand-parsed
    hot routes too): the scheme is what precedes the first space, in any case; the token is
    the rest with surrounding whitespace stripped, taken verbatim (a token that is not
    ASCII is refused by the credential check, not here)."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if token and scheme.lower() == "bearer" else None


def new_secret(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """An access token's claims. A login's token names its session; a page token names the
    session or the API key that minted it, one of the two, and `page` is set."""

    user_id: str
    session_id: str | None
    expires_at: datetime
    api_key_id: str | None = None
    page: bool = False


class AccessTokenSigner:
    """Issues and checks short-lived HS256 access tokens: a login's, bound to its session,
    and page tokens (`issue_page`), bound to the credential that minted them."""

    algorithm = "HS256"
    issuer = "cloudcontainer"

    def __init__(self, key: str, ttl_seconds: int) -> None:
        self._key = key
        self.ttl_seconds = ttl_seconds

    def issue(self, user_id: str, session_id: str, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        claims = {
            "sub": user_id,
            "sid": session_id,
            "iss": self.issuer,
            "typ": "access",
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(seconds=self.ttl_seconds)).timestamp()),
        }
        return jwt.encode(claims, self._key, algorithm=self.algorithm)

    def issue_page(
        self, user_id: str, *, session_id: str | None, api_key_id: str | None,
        ttl_seconds: int, now: datetime | None = None,
    ) -> str:  # fmt: skip
        """A token for a browser page: short-lived, and ended with the session or API key that
        minted it (exactly one of the two), so no long-lived secret need reach the page."""
        if (session_id is None) == (api_key_id is None):
            raise ValueError("a page token is bound to a session or to an API key")
        now = now or datetime.now(UTC)
        bound = {"sid": session_id} if session_id is not None else {"key": api_key_id}
        claims = {
            "sub": user_id, **bound, "iss": self.issuer, "typ": "page",
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(seconds=ttl_seconds)).timestamp()),
        }  # fmt: skip
        return jwt.encode(claims, self._key, algorithm=self.algorithm)

    def decode(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self.algorithm],
                issuer=self.issuer,
                options={"require": ["sub", "exp", "iat"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("The access token has expired.", code="token_expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("The access token is not valid.", code="invalid_token") from exc
        kind = claims.get("typ")
        binding = (claims.get("sid"), claims.get("key"))
        if (
            kind not in ("access", "page")
            or not isinstance(claims["sub"], str)
            or [isinstance(value, str) for value in binding].count(True) != 1
            or any(value is not None and not isinstance(value, str) for value in binding)
            or (kind == "access" and binding[0] is None)
        ):
            raise Unauthorized("The access token is not valid.", code="invalid_token")
        return AccessClaims(
            user_id=claims["sub"],
            session_id=binding[0],
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            api_key_id=binding[1],
            page=kind == "page",
        )
