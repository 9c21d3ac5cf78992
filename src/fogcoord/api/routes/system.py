"""Liveness, readiness and the service registry."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from fogcoord import __version__
from fogcoord.api.schemas import Liveness, Readiness, ServicesView
from fogcoord.api.security import coordinator, require
from fogcoord.auth.models import Identity, Scope
from fogcoord.contracts.lifecycle import HealthState
from fogcoord.coordinator import Coordinator

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=Liveness, summary="Liveness: the process answers")
async def healthz() -> Liveness:
    return Liveness(status="ok", version=__version__)


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: every service passes its health check",
    responses={503: {"model": Readiness}},
)
async def readyz(coord: Coordinator = Depends(coordinator)) -> JSONResponse:
    results = await coord.orchestration.health_check_all_services()
    ready = bool(results) and all(s.state is HealthState.PASSING for s in results.values())
    body = Readiness(ready=ready, services=results)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


@router.get("/v1/services", response_model=ServicesView, summary="Registry with health/breakers")
async def services(
    coord: Coordinator = Depends(coordinator),
    _who: Identity = Depends(require(Scope.SERVICES_READ)),
) -> ServicesView:
    await coord.orchestration.health_check_all_services()
    registry = coord.orchestration.registry()
    return ServicesView(
        orchestration=await coord.orchestration.health(),
        startup_seconds=registry.startup_seconds,
        start_levels=[list(level) for level in registry.start_levels],
        services=list(registry.services),
    )
