"""Privacy: Byzantine detection of compute results; the other methods answer 501 until built."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from fogcoord.api.security import coordinator, require
from fogcoord.auth.models import Identity, Scope
from fogcoord.contracts.privacy import ByzantineFlag, HiddenServiceSpec, ParticipantData, RouteSpec
from fogcoord.coordinator import Coordinator

router = APIRouter(prefix="/v1/privacy", tags=["privacy"])


class ComputeResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    participant_id: str
    task_id: str
    output_hash: str
    fuel_used: int = Field(ge=0)


class Budgets(BaseModel):
    participants: list[str] = Field(min_length=1)


class Noise(BaseModel):
    data: list[float] = Field(min_length=1)
    epsilon: float = Field(gt=0)


class Aggregate(BaseModel):
    gradients: dict[str, list[float]] = Field(min_length=1)


@router.post("/byzantine", response_model=list[ByzantineFlag], summary="Judge compute results")
async def byzantine(
    body: list[ComputeResult],
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.STATS_READ)),
) -> list[ByzantineFlag]:
    return await coord.privacy.explain_byzantine([ParticipantData(**r.model_dump()) for r in body])


@router.post("/budgets", summary="Give participants their privacy budget (501 for now)")
async def budgets(
    body: Budgets,
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.STUDIES_WRITE)),
) -> dict[str, float]:
    return await coord.privacy.initialize_privacy_budgets(body.participants)


@router.post("/noise", summary="Differential privacy on a vector (501 for now)")
async def noise(
    body: Noise,
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.STUDIES_WRITE)),
) -> Any:
    out = await coord.privacy.apply_differential_privacy(np.asarray(body.data), body.epsilon)
    return np.asarray(out).tolist()


@router.post("/aggregate", summary="Secure aggregation (501 for now)")
async def aggregate(
    body: Aggregate,
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.STUDIES_WRITE)),
) -> Any:
    grads = {k: np.asarray(v) for k, v in body.gradients.items()}
    return np.asarray(await coord.privacy.secure_aggregate(grads)).tolist()


@router.post("/routes", summary="Build an onion route (501 for now)")
async def routes(
    body: RouteSpec,
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.SERVICES_READ)),
) -> Any:
    return await coord.privacy.setup_onion_routing(body)


@router.post("/hidden-services", summary="Create a hidden service (501 for now)")
async def hidden_services(
    body: HiddenServiceSpec,
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.SERVICES_READ)),
) -> Any:
    return await coord.privacy.create_hidden_service(body)
