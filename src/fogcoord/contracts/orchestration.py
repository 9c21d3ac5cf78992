"""Orchestration contract: the service registry, discovery and event routing."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from fogcoord.contracts.events import ServiceEvent
from fogcoord.contracts.lifecycle import HealthStatus, ServiceStats


class ServiceState(StrEnum):
    REGISTERED = "registered"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class ServiceEntry(BaseModel):
    """One registered service as the registry sees it."""

    model_config = ConfigDict(frozen=True)

    service_id: str
    service_type: str
    dependencies: tuple[str, ...] = ()
    state: ServiceState = ServiceState.REGISTERED
    health: HealthStatus | None = None
    breaker: BreakerState = BreakerState.CLOSED
    stats: ServiceStats | None = None
    started_at: float | None = None
    start_order: int | None = None


class ServiceRegistry(BaseModel):
    """A snapshot of the registry: every service, in start order once started."""

    model_config = ConfigDict(frozen=True)

    services: tuple[ServiceEntry, ...] = ()
    start_levels: tuple[tuple[str, ...], ...] = ()
    startup_seconds: float = 0.0

    def get(self, service_id: str) -> ServiceEntry | None:
        return next((s for s in self.services if s.service_id == service_id), None)


@runtime_checkable
class ServiceInstance(Protocol):
    """What discovery returns: the service's methods, each call guarded by its circuit breaker.

    Attribute access forwards to the service; async methods go through the breaker. Use
    ``FogOrchestrationService.discover_as(name, Protocol)`` for a statically typed view.
    """

    @property
    def service_id(self) -> str: ...

    @property
    def breaker_state(self) -> BreakerState: ...

    def __getattr__(self, name: str) -> Any: ...


class OrchestrationProtocol(Protocol):
    async def initialize_services(self) -> ServiceRegistry: ...

    async def register_service(self, service_id: str, service_instance: Any) -> bool: ...

    async def discover_service(self, service_type: str) -> ServiceInstance | None: ...

    async def health_check_all_services(self) -> dict[str, HealthStatus]: ...

    async def shutdown_services(self, graceful: bool = True) -> bool: ...

    async def route_event(self, event: ServiceEvent) -> None: ...

    async def broadcast_event(self, event: ServiceEvent) -> None: ...
