"""The onion network's directory: relays register, clients fetch the signed consensus."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from fogcoord.api.security import coordinator, require
from fogcoord.auth.models import Identity, Scope
from fogcoord.coordinator import Coordinator

router = APIRouter(prefix="/v1/onion", tags=["onion"])


class RelayRegistration(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    relay: dict[str, Any] = Field(description="the relay's descriptor (RelayInfo as a dict)")
    signature: str = Field(description="Ed25519 signature of the descriptor by the relay")


@router.post("/relays", status_code=201, summary="Register (or refresh) a relay")
async def register_relay(
    body: RelayRegistration,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.DEVICES_WRITE)),
) -> dict[str, Any]:
    relay = coord.privacy.directory.register(body.relay, body.signature, who.principal.principal_id)
    return relay.to_dict()


@router.delete("/relays/{relay_id}", status_code=204, summary="Withdraw a relay")
async def remove_relay(
    relay_id: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.DEVICES_WRITE)),
) -> None:
    coord.privacy.directory.remove(
        relay_id, who.principal.principal_id, admin=who.allows(Scope.ADMIN)
    )


@router.get("/consensus", summary="Every relay, signed by the directory's Ed25519 key")
async def consensus(
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.SERVICES_READ)),
) -> Response:
    return Response(coord.privacy.directory.consensus().to_json(), media_type="application/json")


@router.get("/authority", summary="The directory's public key (pin it)")
async def authority(
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.SERVICES_READ)),
) -> dict[str, str]:
    return {"ed25519": coord.privacy.directory.public_key_hex}
