"""Request authentication and per-route scope checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from fogcoord.auth.models import Identity, Scope
from fogcoord.contracts.errors import Forbidden, Unauthenticated
from fogcoord.coordinator import Coordinator

_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")


def coordinator(request: Request) -> Coordinator:
    coord: Coordinator = request.app.state.coordinator
    return coord


async def identity(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
    header_key: str | None = Depends(_header),
) -> Identity:
    key = bearer.credentials if bearer is not None else header_key
    if not key:
        raise Unauthenticated()
    return coordinator(request).auth.authenticate(key)


def require(scope: Scope) -> Callable[..., Awaitable[Identity]]:
    """A dependency that authenticates and checks ``scope``."""

    async def check(who: Identity = Depends(identity)) -> Identity:
        if not who.allows(scope):
            raise Forbidden(f"this key lacks the {scope.value!r} scope", scope=scope.value)
        return who

    check.__name__ = f"require_{scope.value.replace(':', '_')}"
    return check
