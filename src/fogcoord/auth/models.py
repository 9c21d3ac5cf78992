"""Principals, scopes and API keys."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class PrincipalKind(StrEnum):
    OPERATOR = "operator"
    REQUESTER = "requester"
    DEVICE = "device"


class Scope(StrEnum):
    ADMIN = "admin"
    SERVICES_READ = "services:read"
    WALLETS_READ = "wallets:read"
    WALLETS_WRITE = "wallets:write"
    JOBS_READ = "jobs:read"
    JOBS_WRITE = "jobs:write"
    MARKET_READ = "market:read"
    MARKET_WRITE = "market:write"
    MARKET_BID = "market:bid"
    DEVICES_WRITE = "devices:write"
    STATS_READ = "stats:read"
    STUDIES_WRITE = "studies:write"


DEFAULT_SCOPES: dict[PrincipalKind, frozenset[Scope]] = {
    PrincipalKind.OPERATOR: frozenset(Scope),
    PrincipalKind.REQUESTER: frozenset(
        {
            Scope.SERVICES_READ,
            Scope.WALLETS_READ,
            Scope.WALLETS_WRITE,
            Scope.JOBS_READ,
            Scope.JOBS_WRITE,
            Scope.MARKET_READ,
            Scope.MARKET_WRITE,
            Scope.MARKET_BID,
            Scope.STATS_READ,
            Scope.STUDIES_WRITE,
            Scope.DEVICES_WRITE,
        }
    ),
    PrincipalKind.DEVICE: frozenset(
        {
            Scope.SERVICES_READ,
            Scope.WALLETS_READ,
            Scope.WALLETS_WRITE,
            Scope.MARKET_READ,
            Scope.MARKET_BID,
            Scope.DEVICES_WRITE,
        }
    ),
}


class Principal(BaseModel):
    model_config = ConfigDict(frozen=True)

    principal_id: str
    kind: PrincipalKind
    name: str
    created_at: float


class ApiKeyInfo(BaseModel):
    """What is kept of a key: never the key itself, only its id and hash."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    principal_id: str
    scopes: tuple[Scope, ...]
    created_at: float
    revoked_at: float | None = None


class IssuedKey(BaseModel):
    """A new key: ``key`` is shown once and cannot be recovered later."""

    model_config = ConfigDict(frozen=True)

    key: str
    info: ApiKeyInfo
    principal: Principal


class Identity(BaseModel):
    """Who is calling: the authenticated principal, the key's scopes."""

    model_config = ConfigDict(frozen=True)

    principal: Principal
    key_id: str
    scopes: frozenset[Scope]

    def allows(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes
