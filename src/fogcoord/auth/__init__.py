"""Authentication: principals (operator, requester, device), scoped API keys."""

from fogcoord.auth.models import (
    DEFAULT_SCOPES,
    ApiKeyInfo,
    Identity,
    IssuedKey,
    Principal,
    PrincipalKind,
    Scope,
)
from fogcoord.auth.service import AuthService
from fogcoord.auth.store import KeyStore

__all__ = [
    "DEFAULT_SCOPES",
    "ApiKeyInfo",
    "AuthService",
    "Identity",
    "IssuedKey",
    "KeyStore",
    "Principal",
    "PrincipalKind",
    "Scope",
]
