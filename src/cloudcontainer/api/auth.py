"""`/api/auth`: accounts, login sessions, API keys and WebSocket tickets."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, Field

from cloudcontainer.api.audit import record
from cloudcontainer.api.deps import (
    BearerDep,
    CurrentPrincipal,
    NotPagePrincipal,
    ServicesDep,
    client_ip,
)
from cloudcontainer.api.schemas import Email, Name, Password, RequestModel, Token, WholeNumber
from cloudcontainer.audit import actions
from cloudcontainer.auth.service import TokenPair
from cloudcontainer.db import ApiKey, User
from cloudcontainer.errors import Forbidden, Unauthorized

router = APIRouter(prefix="/api/auth", tags=["auth"])


# -- bodies -----------------------------------------------------------------------------------


class Credentials(RequestModel):
    email: Email
    password: Password


class LoginRequest(RequestModel):
    email: Email
    # Any length is accepted at login so that a policy change never locks old accounts out.
    password: Annotated[str, Field(min_length=1, max_length=256)]


class EmailRequest(RequestModel):
    email: Email


class TokenRequest(RequestModel):
    token: Token


class RefreshRequest(RequestModel):
    refresh_token: Token


class LogoutRequest(RequestModel):
    refresh_token: Token | None = None


class ResetConfirmRequest(RequestModel):
    token: Token
    password: Password


class TicketRequest(RequestModel):
    path: Annotated[
        str,
        Field(
            min_length=5,
            max_length=160,
            pattern=r"^/api/[^?#\x00]*$",
            description="The path of the one WebSocket the ticket opens, without host or query: "
            "`/api/containers/{id}/events` or `/api/containers/{id}/terminals/{terminal_id}`. "
            "Presented on any other socket the ticket is refused (and stays valid for this one).",
            examples=["/api/containers/ctr_0123456789abcdef/events"],
        ),
    ]


class DeleteAccountRequest(RequestModel):
    # Any length, as at login: the password the account has now, whatever the policy was.
    password: Annotated[str, Field(min_length=1, max_length=256)]


class ApiKeyRequest(RequestModel):
    name: Name
    expires_in_days: Annotated[int | None, Field(ge=1, le=3650), WholeNumber] = None


# -- answers ----------------------------------------------------------------------------------


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    message: str


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the scheme name, not a secret)
    expires_in: int = Field(description="Lifetime of the access token, in seconds.")

    @classmethod
    def of(cls, pair: TokenPair) -> TokenResponse:
        return cls(
            access_token=pair.access_token, refresh_token=pair.refresh_token,
            expires_in=pair.expires_in,
        )  # fmt: skip


class UserOut(BaseModel):
    id: str
    email: str
    is_admin: bool
    email_verified: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            id=user.id, email=user.email, is_admin=user.is_admin,
            email_verified=user.email_verified_at is not None, created_at=user.created_at,
        )  # fmt: skip


class ApiKeyOut(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The first characters of the key, to recognise it.")
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> ApiKeyOut:
        return cls(
            id=key.id, name=key.name, prefix=key.prefix, created_at=key.created_at,
            last_used_at=key.last_used_at, expires_at=key.expires_at,
        )  # fmt: skip


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret. Shown only in this answer; store it now.")


class PageTokenOut(BaseModel):
    token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the scheme name, not a secret)
    expires_in: int = Field(description="Seconds the token stays valid.")


class TicketOut(BaseModel):
    ticket: str
    expires_in: int = Field(description="Seconds the ticket stays valid; it works once.")


SENT = "If the address can receive it, a mail is on its way."


# -- routes -----------------------------------------------------------------------------------


@router.post("/register", status_code=status.HTTP_202_ACCEPTED)
async def register(body: Credentials, services: ServicesDep) -> Accepted:
    """Create an account. The answer is the same whether or not the address is registered."""
    await services.accounts.register(body.email, body.password)
    return Accepted(message=SENT)


@router.post("/verify-email")
async def verify_email(body: TokenRequest, services: ServicesDep) -> Accepted:
    await services.accounts.verify_email(body.token)
    return Accepted(message="The e-mail address is verified.")


@router.post("/verify-email/resend", status_code=status.HTTP_202_ACCEPTED)
async def resend_verification(body: EmailRequest, services: ServicesDep) -> Accepted:
    await services.accounts.resend_verification(body.email)
    return Accepted(message=SENT)


@router.post("/login")
async def login(body: LoginRequest, request: Request, services: ServicesDep) -> TokenResponse:
    try:
        pair = await services.accounts.login(
            body.email, body.password, ip=client_ip(request),
            user_agent=request.headers.get("user-agent", ""),
        )  # fmt: skip
    except (Unauthorized, Forbidden) as exc:  # not a throttled one: those cost nothing to send
        # The address tried, never the password.
        await record(request, actions.LOGIN_FAILED, actor_email=body.email,
                     detail={"reason": exc.code})  # fmt: skip
        raise
    await record(
        request, actions.LOGIN, actor_id=pair.user_id, actor_email=body.email,
        target_type="session", target_id=pair.session_id,
    )  # fmt: skip
    return TokenResponse.of(pair)


@router.post("/refresh")
async def refresh(body: RefreshRequest, services: ServicesDep) -> TokenResponse:
    """Trade a refresh token for a new pair. Each refresh token works once."""
    return TokenResponse.of(await services.accounts.refresh(body.refresh_token))


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(
    request: Request,
    services: ServicesDep,
    token: BearerDep,
    body: LogoutRequest | None = None,
) -> Response:
    """End the session named by the access token, the refresh token, or both."""
    sessions: set[str] = set()
    principal = None
    if body is not None and body.refresh_token:
        session_id = await services.accounts.session_of_refresh_token(body.refresh_token)
        if session_id:
            sessions.add(session_id)
    if token is not None:
        try:
            principal = await services.credentials.authenticate(token)
        except Unauthorized:
            principal = None
        if principal is not None and principal.session_id:
            sessions.add(principal.session_id)
    if not sessions:
        raise Unauthorized("Nothing to log out: no valid token given.", code="not_authenticated")
    for session_id in sessions:
        await services.accounts.revoke_session(session_id, reason="logout")
        await record(request, actions.LOGOUT, principal, target_type="session",
                     target_id=session_id)  # fmt: skip
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/password-reset/request", status_code=status.HTTP_202_ACCEPTED)
async def request_password_reset(body: EmailRequest, services: ServicesDep) -> Accepted:
    await services.accounts.request_password_reset(body.email)
    return Accepted(message=SENT)


@router.post("/password-reset/confirm", status_code=status.HTTP_204_NO_CONTENT)
async def confirm_password_reset(
    body: ResetConfirmRequest, request: Request, services: ServicesDep
) -> Response:
    """Set a new password and end every session of the account."""
    user_id = await services.accounts.confirm_password_reset(body.token, body.password)
    await record(request, actions.PASSWORD_RESET, actor_id=user_id, target_type="user",
                 target_id=user_id)  # fmt: skip
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me")
async def me(principal: CurrentPrincipal) -> UserOut:
    return UserOut.of(principal.user)


@router.delete("/me", status_code=status.HTTP_204_NO_CONTENT)
async def delete_account(
    body: DeleteAccountRequest, request: Request, principal: NotPagePrincipal,
    services: ServicesDep,
) -> Response:  # fmt: skip
    """Delete the account and everything it owns, for good: its containers (sandboxes
    stopped and destroyed), projects, snapshots, sessions and API keys. Needs the account's
    password (403 `wrong_password` otherwise, and nothing is deleted). Its open WebSockets
    are closed (1008 `account deleted`)."""
    await services.accounts.check_password(principal.user, body.password)
    await services.removal.delete_account(
        principal.user, actor="self", source_ip=client_ip(request)
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/keys", status_code=status.HTTP_201_CREATED)
async def create_api_key(
    body: ApiKeyRequest, request: Request, principal: NotPagePrincipal, services: ServicesDep
) -> ApiKeyCreated:
    key, secret = await services.credentials.create_api_key(
        principal.user_id, body.name, body.expires_in_days
    )
    await record(request, actions.API_KEY_CREATED, principal, target_type="api_key",
                 target_id=key.id, detail={"name": key.name, "prefix": key.prefix})  # fmt: skip
    return ApiKeyCreated(**ApiKeyOut.of(key).model_dump(), key=secret)


@router.get("/keys")
async def list_api_keys(principal: NotPagePrincipal, services: ServicesDep) -> list[ApiKeyOut]:
    return [
        ApiKeyOut.of(key) for key in await services.credentials.list_api_keys(principal.user_id)
    ]


@router.delete("/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_api_key(
    key_id: str, request: Request, principal: NotPagePrincipal, services: ServicesDep
) -> Response:
    """Revoke a key. Revoking a revoked key is a no-op; another user's key is 404."""
    await services.credentials.revoke_api_key(principal.user_id, key_id)
    await record(request, actions.API_KEY_REVOKED, principal, target_type="api_key",
                 target_id=key_id)  # fmt: skip
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/page-tokens", status_code=status.HTTP_201_CREATED)
async def create_page_token(principal: CurrentPrincipal, services: ServicesDep) -> PageTokenOut:
    """A short-lived bearer token for a browser page, e.g. bolt.diy's: its server keeps an
    API key and asks for one of these whenever its page needs a token, so no long-lived
    secret reaches the browser. The token works for projects, containers, files, terminals
    and previews; not for API keys, page tokens, the account or administration (403
    `page_token_not_allowed`). Revoking the key (or ending the session) that made it ends it
    and the sockets opened with it."""
    token, ttl = services.credentials.issue_page_token(principal)
    return PageTokenOut(token=token, expires_in=ttl)


@router.post("/ws-ticket")
async def ws_ticket(
    body: TicketRequest, principal: CurrentPrincipal, services: ServicesDep
) -> TicketOut:
    """A short-lived, single-use ticket to open the WebSocket at `path` as `?ticket=...`.
    The socket lasts as long as the session or API key that asked for the ticket: logging
    out, revoking the key, a password reset or deleting the account closes it (1008)."""
    ticket, ttl = await services.credentials.issue_ws_ticket(principal, body.path)
    return TicketOut(ticket=ticket, expires_in=ttl)
