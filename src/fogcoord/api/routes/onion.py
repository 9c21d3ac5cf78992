"""The onion network's directory: relays register, clients fetch the signed consensus."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from fogcoord.api.security import coordinator, require
from fogcoord.auth.models import Identity, Scope
from fogcoord.contracts.privacy import HiddenServiceSpec
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
    known = {r.id for r in coord.privacy.directory.authority.relays()}
    relay = coord.privacy.directory.register(body.relay, body.signature, who.principal.principal_id)
    if relay.id not in known:
        _republish(coord)
    return relay.to_dict()


def _republish(coord: Coordinator) -> None:
    """Hidden services follow the relay set (their HSDirs and introduction points)."""
    task = asyncio.get_running_loop().create_task(coord.privacy.hidden.refresh())
    _refreshing.add(task)
    task.add_done_callback(_refreshing.discard)


_refreshing: set[asyncio.Task[int]] = set()


@router.delete("/relays/{relay_id}", status_code=204, summary="Withdraw a relay")
async def remove_relay(
    relay_id: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.DEVICES_WRITE)),
) -> None:
    coord.privacy.directory.remove(
        relay_id, who.principal.principal_id, admin=who.allows(Scope.ADMIN)
    )
    _republish(coord)


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


class ServiceCreate(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    target_host: str = Field(default="127.0.0.1", max_length=255)
    target_port: int = Field(ge=1, le=65535)
    introduction_points: int = Field(default=3, ge=1, le=10)


@router.post("/services", status_code=201, summary="Create a hidden service (address at once)")
async def create_service(
    body: ServiceCreate,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.SERVICES_READ)),
) -> dict[str, Any]:
    spec = HiddenServiceSpec(owner=who.principal.principal_id, **body.model_dump())
    address = await coord.privacy.create_hidden_service(spec)
    return coord.privacy.hidden_service_view(address)


@router.get("/services/{address}", summary="A hidden service: created, published, where")
async def get_service(
    address: str,
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.SERVICES_READ)),
) -> dict[str, Any]:
    return coord.privacy.hidden_service_view(address)


@router.post(
    "/services/{address}/tickets", status_code=201, summary="Pay the access fee: a one-use ticket"
)
async def buy_ticket(
    address: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.WALLETS_WRITE)),
) -> dict[str, str]:
    ticket = await coord.privacy.hidden.buy_ticket(address, who.principal.principal_id)
    return {"address": address, "ticket": ticket}


@router.delete("/services/{address}", status_code=204, summary="Take a hidden service down")
async def remove_service(
    address: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.SERVICES_READ)),
) -> None:
    await coord.privacy.hidden.remove(
        address, who.principal.principal_id, admin=who.allows(Scope.ADMIN)
    )
