"""The composition root: builds every service from configuration and wires them together.

Only this module (and the CLI/API above it) knows concrete classes; services see each other only
through the orchestrator's discovery and the event bus.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from fogcoord.auth.service import AuthService
from fogcoord.channels import DeviceChannels
from fogcoord.clock import Clock, SystemClock
from fogcoord.config import FogConfig
from fogcoord.contracts.events import ServiceEvent
from fogcoord.contracts.harvesting import (
    DeviceDiscoveredEvent,
    DeviceResultVerified,
    DeviceStateChangedEvent,
)
from fogcoord.figures import gather
from fogcoord.harvesting.service import FogHarvestingService
from fogcoord.jobs.executor import SandboxExecutor
from fogcoord.jobs.runner import JobRunner
from fogcoord.marketplace.service import FogMarketplaceService
from fogcoord.orchestration.bus.inprocess import InProcessEventBus
from fogcoord.orchestration.bus.protocol import EventBus
from fogcoord.orchestration.service import FogOrchestrationService
from fogcoord.privacy.service import FogPrivacyService
from fogcoord.stats.service import FogSystemStatsService
from fogcoord.storage.service import StorageService
from fogcoord.studies.runner import StudyRunner
from fogcoord.tokenomics.service import FogTokenomicsService


def make_bus(config: FogConfig, clock: Clock) -> EventBus:
    messaging = config.orchestration.messaging
    if config.bus.url == "inprocess":
        return InProcessEventBus(
            max_queue_size=messaging.max_queue_size,
            retry_backoff_ms=messaging.retry_backoff_ms,
            max_delivery_attempts=messaging.max_delivery_attempts,
            clock=clock,
        )
    from fogcoord.orchestration.bus.nats import NatsEventBus

    return NatsEventBus(
        url=config.bus.url,
        subject_prefix=config.bus.subject_prefix,
        encoding=messaging.encoding,
        max_queue_size=messaging.max_queue_size,
        retry_backoff_ms=messaging.retry_backoff_ms,
        max_delivery_attempts=messaging.max_delivery_attempts,
        clock=clock,
    )


class Coordinator:
    """Every service of one coordinator process, started in dependency order."""

    def __init__(
        self,
        config: FogConfig,
        *,
        clock: Clock | None = None,
        db_schema: str | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.bus = make_bus(config, self.clock)
        self.orchestration = FogOrchestrationService(
            config.orchestration, self.bus, clock=self.clock
        )
        self.storage = StorageService(config.database_url(), schema=db_schema, clock=self.clock)
        self.auth = AuthService(
            self.storage, operator_key=config.server.operator_key, clock=self.clock
        )
        self.tokenomics = FogTokenomicsService(
            config.tokenomics,
            lambda: self.storage.engine,
            clock=self.clock,
            publish=self.orchestration.broadcast_event,
        )
        self.harvesting = FogHarvestingService(
            config.harvesting,
            lambda: self.storage.engine,
            clock=self.clock,
            publish=self.orchestration.broadcast_event,
        )
        self.marketplace = FogMarketplaceService(
            config.marketplace,
            lambda: self.storage.engine,
            resolve=self.orchestration.discover_service,
            clock=self.clock,
            publish=self.orchestration.broadcast_event,
        )
        self.privacy = FogPrivacyService(
            config.privacy,
            lambda: self.storage.engine,
            resolve=self.orchestration.discover_service,
            clock=self.clock,
            publish=self.orchestration.broadcast_event,
        )
        self.channels = DeviceChannels()
        self.studies = StudyRunner(
            lambda: self.storage.engine,
            resolve=self.orchestration.discover_service,
            send=self.channels.push,
            connected=self.channels.is_connected,
            default_delta=config.privacy.differential_privacy.default_delta,
            clock=self.clock,
            publish=self.orchestration.broadcast_event,
        )
        self.stats = FogSystemStatsService(
            config.system_stats,
            lambda: self.storage.engine,
            probe=lambda: gather(self),
            health=self.orchestration.health_check_all_services,
            clock=self.clock,
            publish=self.orchestration.broadcast_event,
        )
        self.executor = SandboxExecutor()
        self.jobs = JobRunner(
            config.jobs,
            lambda: self.storage.engine,
            resolve=self.orchestration.discover_service,
            send=self.channels.push,
            connected=self.channels.is_connected,
            executor=self.executor,
            clock=self.clock,
            publish=self.orchestration.broadcast_event,
        )
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        self.config.server.data_dir.mkdir(parents=True, exist_ok=True)
        for service in (
            self.storage,
            self.auth,
            self.tokenomics,
            self.harvesting,
            self.marketplace,
            self.privacy,
            self.jobs,
            self.studies,
            self.stats,
        ):
            await self.orchestration.register_service(service.name, service)
        await self.orchestration.initialize_services()
        await self.orchestration.subscribe(
            DeviceResultVerified,
            self.harvesting.on_result_verified,
            name="harvesting.trust",
            group="harvesting",
        )
        await self.orchestration.subscribe(
            DeviceDiscoveredEvent,
            self._budget_for_new_device,
            name="privacy.budgets",
            group="privacy",
        )
        for event_type in (DeviceDiscoveredEvent, DeviceStateChangedEvent):
            await self.orchestration.subscribe(
                event_type,
                self.marketplace.on_device_event,
                name=f"marketplace.supply.{event_type.event_type}",
                group="marketplace",
            )
        await self.orchestration.subscribe(
            ServiceEvent, self.stats.on_bus_event, name="stats.events", group="stats"
        )
        # a first collection now: the dashboard and /metrics have figures from the start
        await self.stats.collect_metrics()
        self._started = True

    async def _budget_for_new_device(self, event: DeviceDiscoveredEvent) -> None:
        """A newly discovered device gets its privacy budget at once."""
        await self.privacy.initialize_privacy_budgets([event.device_id])

    async def stop(self, graceful: bool = True) -> bool:
        if not self._started:
            return True
        self._started = False
        try:
            return await self.orchestration.shutdown_services(graceful=graceful)
        finally:
            self.executor.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
