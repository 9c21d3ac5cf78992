"""Privacy: Byzantine detection, privacy budgets, differential privacy, secure aggregation, and
onion circuits from the coordinator (hidden services and the relay directory: ``/v1/onion``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from fogcoord.api.security import coordinator, require
from fogcoord.auth.models import Identity, Scope
from fogcoord.contracts.errors import ValidationFailed
from fogcoord.contracts.privacy import ByzantineFlag, ParticipantData, RouteSpec
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
    data: list[float] = Field(min_length=1, max_length=10_000_000)
    epsilon: float = Field(gt=0)
    delta: float | None = Field(default=None, gt=0, lt=1)
    clip_norm: float = Field(default=1.0, gt=0)
    mechanism: str = Field(default="gaussian", pattern="^(gaussian|laplace)$")


class Aggregate(BaseModel):
    gradients: dict[str, list[float]] = Field(min_length=2)
    clip: float | None = Field(default=None, gt=0)


@router.post("/byzantine", response_model=list[ByzantineFlag], summary="Judge compute results")
async def byzantine(
    body: list[ComputeResult],
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.STATS_READ)),
) -> list[ByzantineFlag]:
    return await coord.privacy.explain_byzantine([ParticipantData(**r.model_dump()) for r in body])


@router.get("/budgets", summary="Every participant's privacy budget: spent and remaining")
async def budget_view(
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.STATS_READ)),
) -> list[dict[str, Any]]:
    return coord.privacy.budget_view()


@router.post("/budgets", summary="Give participants their privacy budget (once each)")
async def budgets(
    body: Budgets,
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.STUDIES_WRITE)),
) -> dict[str, float]:
    return await coord.privacy.initialize_privacy_budgets(body.participants)


@router.post("/noise", summary="Clip a vector and add noise for (epsilon, delta)")
async def noise(
    body: Noise,
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.STUDIES_WRITE)),
) -> Any:
    out = await coord.privacy.apply_differential_privacy(
        np.asarray(body.data, dtype=np.float64),
        body.epsilon,
        delta=body.delta,
        clip_norm=body.clip_norm,
        mechanism=body.mechanism,
    )
    return np.asarray(out).tolist()


@router.post("/aggregate", summary="The sum of vectors by running SecAgg+ among them")
async def aggregate(
    body: Aggregate,
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.STUDIES_WRITE)),
) -> Any:
    lengths = {len(v) for v in body.gradients.values()}
    if len(lengths) != 1:
        raise ValidationFailed("gradients", "every vector must have the same length")
    grads = {k: np.asarray(v, dtype=np.float64) for k, v in body.gradients.items()}
    return np.asarray(await coord.privacy.secure_aggregate(grads, clip=body.clip)).tolist()


@router.post("/routes", summary="Build an onion circuit from the coordinator")
async def routes(
    body: RouteSpec,
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.ADMIN)),
) -> Any:
    return await coord.privacy.setup_onion_routing(body)
