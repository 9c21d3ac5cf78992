"""System stats over HTTP: Prometheus ``/metrics``, windows, series, health, alerts, exports."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from pydantic import BaseModel, ConfigDict, Field

from fogcoord.api.security import coordinator, require
from fogcoord.auth.models import Identity, Scope
from fogcoord.contracts.errors import ValidationFailed
from fogcoord.contracts.stats import (
    AlertConfig,
    ExportFormat,
    HealthReport,
    PerformanceStats,
    TimeWindow,
)
from fogcoord.coordinator import Coordinator
from fogcoord.stats.service import FogSystemStatsService, prometheus_name

router = APIRouter(tags=["stats"])
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
MEDIA = {
    ExportFormat.JSON: "application/json",
    ExportFormat.CSV: "text/csv",
    ExportFormat.PROMETHEUS: PROMETHEUS_TEXT,
}


class _Latest:
    """A prometheus-client collector over the figures of the last collection."""

    def __init__(self, stats: FogSystemStatsService) -> None:
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        for name, value in sorted(self.stats.latest.items()):
            family = GaugeMetricFamily(prometheus_name(name), f"fogcoord series {name}")
            family.add_metric([], value)
            yield family
        for event_type, count in sorted(self.stats.event_counts.items()):
            family = GaugeMetricFamily(
                prometheus_name(f"events.{event_type}"), f"events of type {event_type} seen"
            )
            family.add_metric([], float(count))
            yield family


@router.get("/metrics", response_class=Response, summary="Prometheus exposition of the figures")
async def metrics(
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.STATS_READ)),
) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Latest(coord.stats))
    return Response(generate_latest(registry), media_type=PROMETHEUS_TEXT)


class StatsOverview(BaseModel):
    model_config = ConfigDict(frozen=True)

    time: float
    latest: dict[str, float]
    health: HealthReport
    alerts: list[dict[str, Any]]
    event_counts: dict[str, int]
    collect_ms: float


@router.get("/v1/stats", response_model=StatsOverview, summary="Latest figures, health, alerts")
async def overview(
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.STATS_READ)),
) -> StatsOverview:
    s = coord.stats
    return StatsOverview(
        time=s.latest_at,
        latest=s.latest,
        health=await s.generate_health_report(),
        alerts=[a.model_dump(mode="json") for a in s.alerts.state()],
        event_counts=s.event_counts,
        collect_ms=s.collect_seconds * 1000,
    )


def _window(
    coord: Coordinator, start: float | None, end: float | None, seconds: float
) -> tuple[float, float]:
    now = coord.clock.time()
    end = now if end is None else end
    start = end - seconds if start is None else start
    if end < start:
        raise ValidationFailed("end", "before start")
    return start, end


@router.get("/v1/stats/windows", response_model=PerformanceStats, summary="Stats over a window")
async def windows(
    start: float | None = None,
    end: float | None = None,
    seconds: float = Query(3600.0, gt=0, description="the window's length when start is omitted"),
    series: list[str] = Query(default_factory=list),
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.STATS_READ)),
) -> PerformanceStats:
    a, b = _window(coord, start, end, seconds)
    return await coord.stats.get_performance_stats(TimeWindow(start=a, end=b, series=tuple(series)))


@router.get("/v1/stats/series", response_model=list[str], summary="Names of stored series")
async def series_names(
    prefix: str = "",
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.STATS_READ)),
) -> list[str]:
    names: list[str] = await coord.stats.series_names(prefix)
    return names


@router.get(
    "/v1/stats/series/{name}",
    response_model=list[tuple[float, float]],
    summary="Points of one series",
)
async def series(
    name: str,
    start: float | None = None,
    end: float | None = None,
    seconds: float = Query(3600.0, gt=0),
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.STATS_READ)),
) -> list[tuple[float, float]]:
    a, b = _window(coord, start, end, seconds)
    return await coord.stats.series(name, a, b)


@router.get("/v1/stats/health", response_model=HealthReport, summary="Health report")
async def health(
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.STATS_READ)),
) -> HealthReport:
    return await coord.stats.generate_health_report()


@router.get("/v1/stats/alerts", summary="Alert rules and their states")
async def alerts(
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.STATS_READ)),
) -> dict[str, Any]:
    engine = coord.stats.alerts
    return {
        "rules": [r.model_dump(mode="json") for r in engine.rules()],
        "alerts": [a.model_dump(mode="json") for a in engine.state()],
    }


@router.post("/v1/stats/alerts", status_code=201, summary="Add or replace an alert rule")
async def add_alert(
    body: AlertConfig,
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.ADMIN)),
) -> AlertConfig:
    await coord.stats.setup_alerts(body)
    return body


@router.delete("/v1/stats/alerts/{name}", status_code=204, summary="Remove an alert rule")
async def remove_alert(
    name: str,
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.ADMIN)),
) -> None:
    await coord.stats.remove_alert(name)


class SilenceBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = None
    group: str | None = None
    seconds: float = Field(gt=0, le=30 * 86_400)
    comment: str = Field(default="", max_length=500)


@router.post("/v1/stats/silences", status_code=201, summary="Silence matching alerts for a while")
async def silence(
    body: SilenceBody,
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.ADMIN)),
) -> dict[str, str]:
    matcher = {k: v for k, v in (("name", body.name), ("group", body.group)) if v}
    if not matcher:
        raise ValidationFailed("name", "give a name or a group to match")
    until = coord.clock.time() + body.seconds
    return {"silence_id": coord.stats.alerts.silence(matcher, until, body.comment)}


@router.get("/v1/stats/export", summary="Every point of a window as JSON, CSV or Prometheus text")
async def export(
    format: ExportFormat = ExportFormat.JSON,
    start: float | None = None,
    end: float | None = None,
    seconds: float = Query(3600.0, gt=0),
    series: list[str] = Query(default_factory=list),
    compression: str | None = Query(None, pattern="^(gzip|zstd)$"),
    coord: Coordinator = Depends(coordinator),
    _: Identity = Depends(require(Scope.STATS_READ)),
) -> StreamingResponse:
    a, b = _window(coord, start, end, seconds)
    stream = coord.stats.export_stream(
        format, TimeWindow(start=a, end=b, series=tuple(series)), compression
    )
    headers = {"Content-Encoding": compression} if compression else {}
    suffix = {"json": "json", "csv": "csv", "prometheus": "txt"}[format.value]
    headers["Content-Disposition"] = f'attachment; filename="fogcoord-stats.{suffix}"'
    return StreamingResponse(stream, media_type=MEDIA[format], headers=headers)
