"""Stand-ins for the five services the orchestrator manages, with the seed's dependency graph.

With ``FogOrchestrationService`` itself these are the six services: harvesting, privacy and
tokenomics have no dependencies, marketplace needs tokenomics and harvesting, and stats needs
all the others. Each does trivial start work (and stats subscribes to the lifecycle events, as
the real one does), so the figures measure the orchestrator, not the services.
"""

from __future__ import annotations

import asyncio

from fogcoord.config import OrchestrationConfig
from fogcoord.contracts.events import HealthChanged, ServiceEvent, ServiceStateChanged
from fogcoord.contracts.lifecycle import HealthStatus
from fogcoord.lifecycle import ServiceBase
from fogcoord.orchestration.bus.inprocess import InProcessEventBus
from fogcoord.orchestration.bus.protocol import EventBus, Subscription
from fogcoord.orchestration.service import FogOrchestrationService


class _StandIn(ServiceBase):
    DEPENDS: tuple[str, ...] = ()

    def __init__(self, bus: EventBus) -> None:
        super().__init__(self.service_type, dependencies=self.DEPENDS)
        self.bus = bus
        self.state: dict[str, float] = {}
        self.subscriptions: list[Subscription] = []

    async def on_start(self) -> None:
        self.state = {"started_at": self.clock.time()}
        await asyncio.sleep(0)

    async def on_stop(self) -> None:
        for sub in self.subscriptions:
            await sub.unsubscribe()
        self.subscriptions.clear()
        self.state.clear()

    async def check_health(self) -> HealthStatus:
        return HealthStatus.passing(f"{len(self.state)} state entries")


class HarvestingStandIn(_StandIn):
    service_type = "harvesting"


class MarketplaceStandIn(_StandIn):
    service_type = "marketplace"
    DEPENDS = ("tokenomics", "harvesting")


class PrivacyStandIn(_StandIn):
    service_type = "privacy"


class TokenomicsStandIn(_StandIn):
    service_type = "tokenomics"


class StatsStandIn(_StandIn):
    service_type = "stats"
    DEPENDS = ("harvesting", "marketplace", "privacy", "tokenomics")

    async def on_start(self) -> None:
        await super().on_start()
        for event_type in (ServiceStateChanged, HealthChanged):
            self.subscriptions.append(
                await self.bus.subscribe(
                    event_type, self._count, name=f"stats:{event_type.event_type}"
                )
            )

    async def _count(self, event: ServiceEvent) -> None:
        self.state[event.event_type] = self.state.get(event.event_type, 0.0) + 1.0


STAND_INS: tuple[type[_StandIn], ...] = (
    HarvestingStandIn,
    MarketplaceStandIn,
    PrivacyStandIn,
    TokenomicsStandIn,
    StatsStandIn,
)


def new_bus(config: OrchestrationConfig) -> InProcessEventBus:
    """The in-process bus as the application builds it from ``orchestration.messaging``."""
    messaging = config.messaging
    return InProcessEventBus(
        max_queue_size=messaging.max_queue_size,
        retry_backoff_ms=messaging.retry_backoff_ms,
        max_delivery_attempts=messaging.max_delivery_attempts,
    )


async def build_orchestrator(
    config: OrchestrationConfig | None = None,
) -> FogOrchestrationService:
    """An orchestrator on an in-process bus with the five stand-ins registered (not started)."""
    config = config or OrchestrationConfig()
    bus = new_bus(config)
    orchestrator = FogOrchestrationService(config, bus)
    for cls in STAND_INS:
        if not await orchestrator.register_service(cls.service_type, cls(bus)):
            raise RuntimeError(f"{cls.service_type} was already registered")
    return orchestrator
