"""What every service shares: health, stats and the start/stop lifecycle."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict


class HealthState(StrEnum):
    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {HealthState.PASSING: 0, HealthState.WARNING: 1, HealthState.CRITICAL: 2}


class HealthStatus(BaseModel):
    """One health verdict, Consul-style: passing, warning or critical, with the reason."""

    model_config = ConfigDict(frozen=True)

    state: HealthState
    reason: str = ""
    checked_at: float = 0.0
    latency_ms: float = 0.0

    @classmethod
    def passing(cls, reason: str = "ok") -> HealthStatus:
        return cls(state=HealthState.PASSING, reason=reason)

    @classmethod
    def warning(cls, reason: str) -> HealthStatus:
        return cls(state=HealthState.WARNING, reason=reason)

    @classmethod
    def critical(cls, reason: str) -> HealthStatus:
        return cls(state=HealthState.CRITICAL, reason=reason)


class ServiceStats(BaseModel):
    """Request counters in the shape of the NATS micro-service STATS reply."""

    model_config = ConfigDict(frozen=True)

    name: str
    requests: int = 0
    errors: int = 0
    processing_time_s: float = 0.0
    average_processing_time_s: float = 0.0
    last_error: str = ""
    started_at: float | None = None


@runtime_checkable
class Lifecycle(Protocol):
    """The lifecycle every service implements (``fogcoord.lifecycle.ServiceBase`` does it once)."""

    @property
    def name(self) -> str: ...

    @property
    def dependencies(self) -> tuple[str, ...]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def health(self) -> HealthStatus: ...

    def stats(self) -> ServiceStats: ...
