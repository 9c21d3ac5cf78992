"""Compute jobs: submit, watch, download results, cancel. A job is visible to its requester."""

from __future__ import annotations

import io
import json
import zipfile

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from fogcoord.api.security import coordinator, require
from fogcoord.auth.models import Identity, Scope
from fogcoord.contracts.errors import NotFound
from fogcoord.contracts.jobs import JobState, JobSubmission, JobView, TaskState, TaskView
from fogcoord.coordinator import Coordinator

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _mine(coord: Coordinator, job_id: str, who: Identity) -> JobView:
    view = coord.jobs.view(job_id)
    if view.requester != who.principal.principal_id and not who.allows(Scope.ADMIN):
        raise NotFound("job", job_id)  # others' jobs do not exist for the caller
    return view


@router.post("", response_model=JobView, status_code=201, summary="Submit a compute job")
async def submit(
    body: JobSubmission,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.JOBS_WRITE)),
) -> JobView:
    return await coord.jobs.submit(who.principal.principal_id, body)


@router.get("", response_model=list[JobView], summary="The caller's jobs, newest first")
async def list_jobs(
    state: JobState | None = None,
    limit: int = Query(100, ge=1, le=1000),
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.JOBS_READ)),
) -> list[JobView]:
    mine = None if who.allows(Scope.ADMIN) else who.principal.principal_id
    jobs = coord.jobs.list_jobs(mine)
    return [j for j in jobs if state is None or j.state is state][:limit]


@router.get("/{job_id}", response_model=JobView, summary="State, progress and cost of a job")
async def get_job(
    job_id: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.JOBS_READ)),
) -> JobView:
    return _mine(coord, job_id, who)


@router.get("/{job_id}/tasks", response_model=list[TaskView], summary="Per-task progress")
async def tasks(
    job_id: str,
    offset: int = Query(0, ge=0),
    limit: int = Query(1000, ge=1, le=10_000),
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.JOBS_READ)),
) -> list[TaskView]:
    _mine(coord, job_id, who)
    return coord.jobs.task_views(job_id, offset, limit)


@router.get(
    "/{job_id}/tasks/{index}/output",
    response_class=Response,
    summary="The verified output of one task (raw bytes)",
)
async def output(
    job_id: str,
    index: int,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.JOBS_READ)),
) -> Response:
    _mine(coord, job_id, who)
    data = await coord.jobs.output(job_id, index)
    return Response(data, media_type="application/octet-stream")


@router.get(
    "/{job_id}/results",
    response_class=Response,
    summary="Every verified output as a zip archive, with a manifest",
)
async def results(
    job_id: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.JOBS_READ)),
) -> Response:
    view = _mine(coord, job_id, who)
    buffer = io.BytesIO()
    manifest = []
    outputs = await coord.jobs.outputs(job_id)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for task in coord.jobs.task_views(job_id, 0, view.tasks_total):
            entry = task.model_dump(mode="json")
            data = outputs.get(task.index)
            if task.state is TaskState.VERIFIED and data is not None:
                name = f"task-{task.index:06d}.out"
                archive.writestr(name, data)
                entry["file"] = name
            manifest.append(entry)
        archive.writestr(
            "manifest.json",
            json.dumps({"job": view.model_dump(mode="json"), "tasks": manifest}, indent=1),
        )
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{job_id}.zip"'},
    )


@router.post("/{job_id}/cancel", response_model=JobView, summary="Cancel; unearned tokens return")
async def cancel(
    job_id: str,
    coord: Coordinator = Depends(coordinator),
    who: Identity = Depends(require(Scope.JOBS_WRITE)),
) -> JobView:
    _mine(coord, job_id, who)
    return await coord.jobs.cancel(job_id, who.principal.principal_id)
