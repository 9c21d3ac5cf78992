"""Principals and API keys: create (shown once), list, revoke, and who am I."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from fogcoord.api.schemas import KeyCreate, WhoAmI
from fogcoord.api.security import coordinator, identity, require
from fogcoord.auth.models import ApiKeyInfo, Identity, IssuedKey, Scope
from fogcoord.contracts.errors import NotFound, ValidationFailed
from fogcoord.coordinator import Coordinator

router = APIRouter(prefix="/v1", tags=["keys"])


@router.post("/keys", response_model=IssuedKey, status_code=201, summary="Create a key")
async def create_key(
    body: KeyCreate,
    coord: Coordinator = Depends(coordinator),
    _who: Identity = Depends(require(Scope.ADMIN)),
) -> IssuedKey:
    store = coord.auth.store
    if (body.principal_id is None) == (body.kind is None):
        raise ValidationFailed("kind", "give either kind and name, or principal_id")
    if body.principal_id is not None:
        principal_id = body.principal_id
        await asyncio.to_thread(store.principal, principal_id)
    elif body.kind is not None:
        principal = await asyncio.to_thread(
            store.create_principal, body.kind, body.name or body.kind.value
        )
        principal_id = principal.principal_id
    return await asyncio.to_thread(store.issue_key, principal_id, body.scopes)


@router.get("/keys", response_model=list[ApiKeyInfo], summary="List keys (never the secrets)")
async def list_keys(
    principal_id: str | None = None,
    coord: Coordinator = Depends(coordinator),
    _who: Identity = Depends(require(Scope.ADMIN)),
) -> list[ApiKeyInfo]:
    return await asyncio.to_thread(coord.auth.store.list_keys, principal_id)


@router.delete("/keys/{key_id}", response_model=ApiKeyInfo, summary="Revoke a key")
async def revoke_key(
    key_id: str,
    coord: Coordinator = Depends(coordinator),
    _who: Identity = Depends(require(Scope.ADMIN)),
) -> ApiKeyInfo:
    if len(key_id) != 16:
        raise NotFound("api key", key_id)
    return await asyncio.to_thread(coord.auth.store.revoke, key_id)


@router.get("/whoami", response_model=WhoAmI, summary="The principal behind this key")
async def whoami(who: Identity = Depends(identity)) -> WhoAmI:
    return WhoAmI(principal=who.principal, key_id=who.key_id, scopes=sorted(who.scopes))
