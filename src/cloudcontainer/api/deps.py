"""FastAPI dependencies: the running services and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from cloudcontainer.auth.credentials import Principal
from cloudcontainer.errors import Forbidden, Unauthorized
from cloudcontainer.state import Services

__all__ = ["AdminPrincipal", "CurrentPrincipal", "ServicesDep", "caller", "client_ip"]

_bearer = HTTPBearer(
    auto_error=False,
    description="An access token from /api/auth/login, or an API key (`cc_...`).",
)


async def get_services(request: Request) -> Services:
    """`async` although it awaits nothing: FastAPI runs a plain `def` dependency in its thread
    pool, a thread hand-off on every request (a third of the gateway's time in a profile)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def current_principal(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    return await _authenticate(services, credentials.credentials if credentials else None)


async def _authenticate(services: Services, token: str | None) -> Principal:
    if token is None:
        raise Unauthorized("Authentication required.", code="not_authenticated")
    return await services.credentials.authenticate(token)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def caller(request: Request) -> tuple[Services, Principal]:
    """What ServicesDep and CurrentPrincipal give, for routes that parse by hand: the bearer
    token read as HTTPBearer reads it, without building its credentials model."""
    services: Services = request.app.state.services
    scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
    bearer = token if scheme.lower() == "bearer" and token else None
    return services, await _authenticate(services, bearer)


async def admin_principal(principal: CurrentPrincipal) -> Principal:
    if not principal.user.is_admin:
        raise Forbidden("This needs an administrator.", code="admin_required")
    return principal


AdminPrincipal = Annotated[Principal, Depends(admin_principal)]


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"
