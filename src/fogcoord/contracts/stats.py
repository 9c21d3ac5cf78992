"""System-stats contract: metrics, events, windows, health reports, alerts, exports."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from fogcoord.contracts.events import ServiceEvent
from fogcoord.contracts.lifecycle import HealthState, HealthStatus


class SystemMetrics(BaseModel):
    model_config = ConfigDict(frozen=True)

    timestamp: float
    values: dict[str, float] = Field(default_factory=dict, description="series name -> value")


class MetricEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    value: float = 1.0
    timestamp: float = 0.0
    service: str = ""
    labels: dict[str, str] = Field(default_factory=dict)


class TimeWindow(BaseModel):
    model_config = ConfigDict(frozen=True)

    start: float
    end: float
    series: tuple[str, ...] = ()


class SeriesStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    count: int
    rate: float
    mean: float
    p50: float
    p95: float
    p99: float
    min: float
    max: float


class PerformanceStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    window: TimeWindow
    series: dict[str, SeriesStats] = Field(default_factory=dict)


class HealthReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    state: HealthState
    services: dict[str, HealthStatus] = Field(default_factory=dict)
    reasons: tuple[str, ...] = ()


class Comparison(StrEnum):
    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="


class AlertConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    series: str
    comparison: Comparison
    threshold: float
    for_seconds: float = Field(default=0.0, ge=0)
    group: str = "default"
    labels: dict[str, str] = Field(
        default_factory=dict, description="extension: carried into notifications (e.g. severity)"
    )
    summary: str = Field(default="", description="extension: one line for people reading alerts")


class AlertState(StrEnum):
    """Prometheus's alert states, plus ``resolved`` for the one evaluation after firing."""

    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class AlertTransition(ServiceEvent):
    """An alert rule changed state; ``at`` is the evaluation time that saw the change."""

    rule: str
    group: str
    state_from: AlertState
    state_to: AlertState
    value: float
    threshold: float
    series: str
    at: float


class ExportFormat(StrEnum):
    JSON = "json"
    CSV = "csv"
    PROMETHEUS = "prometheus"


class StatsProtocol(Protocol):
    async def collect_metrics(self) -> SystemMetrics: ...

    async def record_event(self, event: MetricEvent) -> None: ...

    async def get_performance_stats(self, time_window: TimeWindow) -> PerformanceStats: ...

    async def generate_health_report(self) -> HealthReport: ...

    async def setup_alerts(self, alert_config: AlertConfig) -> None: ...

    async def export_analytics(self, format: ExportFormat) -> bytes: ...
