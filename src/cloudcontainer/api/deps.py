"""FastAPI dependencies: the running services and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase

from cloudcontainer.auth.credentials import Principal
from cloudcontainer.auth.tokens import bearer_token
from cloudcontainer.errors import Forbidden, Unauthorized
from cloudcontainer.state import Services

__all__ = [
    "AdminPrincipal", "BearerDep", "CurrentPrincipal", "NotPagePrincipal", "ServicesDep",
    "caller", "client_ip",
]  # fmt: skip


class BearerToken(SecurityBase):
    """The bearer token of a request, or None; documented in OpenAPI as FastAPI's `HTTPBearer`
    documents itself (the same scheme name and model), read by `bearer_token`."""

    def __init__(self, description: str) -> None:
        self.model = HTTPBearerModel(description=description)
        self.scheme_name = "HTTPBearer"

    async def __call__(self, request: Request) -> str | None:
        return bearer_token(request.headers.get("authorization"))


_bearer = BearerToken("An access token from /api/auth/login, or an API key (`cc_...`).")
BearerDep = Annotated[str | None, Depends(_bearer)]


async def get_services(request: Request) -> Services:
    """`async` although it awaits nothing: FastAPI runs a plain `def` dependency in its thread
    pool, a thread hand-off on every request (a third of the gateway's time in a profile)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def current_principal(services: ServicesDep, token: BearerDep) -> Principal:
    return await _authenticate(services, token)


async def _authenticate(services: Services, token: str | None) -> Principal:
    if token is None:
        raise Unauthorized("Authentication required.", code="not_authenticated")
    return await services.credentials.authenticate(token)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def caller(request: Request) -> tuple[Services, Principal]:
    """What ServicesDep and CurrentPrincipal give, for routes that parse by hand."""
    services: Services = request.app.state.services
    token = bearer_token(request.headers.get("authorization"))
    return services, await _authenticate(services, token)


async def not_page_principal(principal: CurrentPrincipal) -> Principal:
    """The caller, unless it holds a page token: a page works with containers, never with
    the account's credentials, the account itself or administration."""
    if principal.page:
        raise Forbidden(
            "A page token cannot do this; use a login or an API key.",
            code="page_token_not_allowed",
        )
    return principal


NotPagePrincipal = Annotated[Principal, Depends(not_page_principal)]


async def admin_principal(principal: NotPagePrincipal) -> Principal:
    if not principal.user.is_admin:
        raise Forbidden("This needs an administrator.", code="admin_required")
    return principal


AdminPrincipal = Annotated[Principal, Depends(admin_principal)]


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"
