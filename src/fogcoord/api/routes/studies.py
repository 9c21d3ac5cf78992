"""Federated studies: create one, follow its rounds, fetch the model, cancel."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from fogcoord.api.security import coordinator, require
from fogcoord.auth.models import Identity, Scope
from fogcoord.contracts.errors import NotFound
from fogcoord.contracts.studies import EncodedArray, StudySpec, StudyView
from fogcoord.coordinator import Coordinator

router = APIRouter(prefix="/v1/studies", tags=["studies"])


def _mine(coord: Coordinator, study_id: str, who: Identity) -> StudyView:
    view = coord.studies.view(study_id)
    if view.requester != who.principal.principal_id and not who.allows(Scope.ADMIN):
        raise NotFound("study", study_id)
    return view


@router.post("", response_model=StudyView, status_code=201, summary="Create a federated study")
async def create(
    body: StudySpec,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.STUDIES_WRITE)),
) -> StudyView:
    return await coord.studies.create(who.principal.principal_id, body)


@router.get("", response_model=list[StudyView], summary="The caller's studies")
async def list_studies(
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.JOBS_READ)),
) -> list[StudyView]:
    mine = None if who.allows(Scope.ADMIN) else who.principal.principal_id
    return coord.studies.list_studies(mine)


@router.get("/{study_id}", response_model=StudyView, summary="Rounds, accuracy, privacy spent")
async def get_study(
    study_id: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.JOBS_READ)),
) -> StudyView:
    return _mine(coord, study_id, who)


@router.get(
    "/{study_id}/model", response_model=dict[str, EncodedArray], summary="The current model"
)
async def model(
    study_id: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.JOBS_READ)),
) -> dict[str, EncodedArray]:
    _mine(coord, study_id, who)
    return coord.studies.model(study_id)


@router.post("/{study_id}/cancel", response_model=StudyView, summary="Stop after this round")
async def cancel(
    study_id: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.STUDIES_WRITE)),
) -> StudyView:
    _mine(coord, study_id, who)
    return await coord.studies.cancel(study_id, who.principal.principal_id)
