"""FogOrchestrationService: registry, dependency-ordered lifecycle, discovery, health, events."""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar, cast

from fogcoord.clock import Clock, SystemClock
from fogcoord.config import OrchestrationConfig
from fogcoord.contracts.errors import DependencyError, ValidationFailed
from fogcoord.contracts.events import (
    CircuitStateChanged,
    HealthChanged,
    ServiceEvent,
    ServiceStateChanged,
)
from fogcoord.contracts.lifecycle import HealthStatus, Lifecycle
from fogcoord.contracts.orchestration import (
    BreakerState,
    ServiceEntry,
    ServiceInstance,
    ServiceRegistry,
    ServiceState,
)
from fogcoord.lifecycle import ServiceBase
from fogcoord.orchestration.breaker import CircuitBreaker
from fogcoord.orchestration.bus.protocol import E, EventBus, Handler, Subscription
from fogcoord.orchestration.graph import start_levels
from fogcoord.orchestration.health import check_all
from fogcoord.orchestration.proxy import ServiceProxy

P = TypeVar("P")
NAME = "orchestration"


class _Slot:
    def __init__(self, service_id: str, instance: Lifecycle, breaker: CircuitBreaker) -> None:
        self.service_id = service_id
        self.instance = instance
        self.breaker = breaker
        self.proxy = ServiceProxy(service_id, instance, breaker)
        self.state = ServiceState.REGISTERED
        self.health: HealthStatus | None = None
        self.started_at: float | None = None
        self.order: int | None = None

    @property
    def service_type(self) -> str:
        return str(getattr(self.instance, "service_type", self.service_id))


class FogOrchestrationService(ServiceBase):
    service_type = NAME

    def __init__(
        self, config: OrchestrationConfig, bus: EventBus, *, clock: Clock | None = None
    ) -> None:
        super().__init__(NAME, clock=clock or SystemClock())
        self.config = config
        self.bus = bus
        self._slots: dict[str, _Slot] = {}
        self._levels: list[list[str]] = []
        self._startup_s = 0.0
        self._health_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # --- seed contract -------------------------------------------------------------------------

    async def initialize_services(self) -> ServiceRegistry:
        started = time.perf_counter()
        self._levels = start_levels(
            {s.service_id: s.instance.dependencies for s in self._slots.values()}
        )
        await self.start()
        done: list[_Slot] = []
        for order, level in enumerate(self._levels):
            slots = [self._slots[name] for name in level]
            results = await asyncio.gather(
                *(self._start_slot(s) for s in slots), return_exceptions=True
            )
            failures = [(s, r) for s, r in zip(slots, results, strict=True) if r is not None]
            for slot, result in zip(slots, results, strict=True):
                if result is None:
                    slot.order = order
                    done.append(slot)
            if failures:
                for slot in reversed(done):
                    await self._stop_slot(slot)
                slot, exc = failures[0]
                raise DependencyError(
                    f"service {slot.service_id!r} failed to start: {exc}",
                    service=slot.service_id,
                ) from exc
        self._startup_s = time.perf_counter() - started
        if self._health_task is None:
            self._health_task = asyncio.get_running_loop().create_task(self._health_loop())
        return self.registry()

    async def register_service(self, service_id: str, service_instance: Any) -> bool:
        if not service_id or not service_id.replace("_", "").replace("-", "").isalnum():
            raise ValidationFailed(
                "service_id", "must be a non-empty name of letters, digits, _ or -"
            )
        if not isinstance(service_instance, Lifecycle):
            raise ValidationFailed(
                "service_instance", "must implement start, stop, health, stats and dependencies"
            )
        if service_id in self._slots:
            return False
        hc = self.config.health_checks
        breaker = CircuitBreaker(
            service_id,
            failure_threshold=hc.circuit_breaker_threshold,
            reset_timeout=hc.breaker_reset_seconds,
            half_open_max_calls=hc.half_open_max_calls,
            call_timeout=self.config.service_discovery.timeout_seconds,
            clock=self.clock,
        )
        breaker.add_listener(self._breaker_listener(service_id))
        self._slots[service_id] = _Slot(service_id, service_instance, breaker)
        self._emit(ServiceStateChanged(source=NAME, service_id=service_id, state="registered"))
        return True

    async def discover_service(self, service_type: str) -> ServiceInstance | None:
        backoff = self.config.messaging.retry_backoff_ms / 1000.0
        for attempt in range(self.config.service_discovery.retry_attempts + 1):
            slot = self._find(service_type)
            if slot is None:
                return None
            if slot.state is ServiceState.RUNNING:
                return cast(ServiceInstance, slot.proxy)
            if slot.state not in (ServiceState.STARTING, ServiceState.REGISTERED):
                return None
            if attempt < self.config.service_discovery.retry_attempts:
                await self.clock.sleep(backoff * (2**attempt))
        return None

    async def health_check_all_services(self) -> dict[str, HealthStatus]:
        services = {sid: s.instance for sid, s in self._slots.items()}
        results = await check_all(
            services, self.config.health_checks.check_timeout_seconds, self.clock
        )
        for sid, status in results.items():
            slot = self._slots[sid]
            previous = slot.health
            slot.health = status
            if previous is None or previous.state is not status.state:
                self._emit(
                    HealthChanged(
                        source=NAME,
                        service_id=sid,
                        previous=previous.state.value if previous else "unknown",
                        state=status.state.value,
                        reason=status.reason,
                    )
                )
        return results

    async def shutdown_services(self, graceful: bool = True) -> bool:
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
            self._health_task = None
        clean = True
        grace = self.config.shutdown_grace_seconds
        deadline = self.clock.monotonic() + grace
        if graceful:
            clean = await self.bus.drain(grace)
        for level in reversed(self._levels):
            slots = [self._slots[n] for n in level if n in self._slots]
            results = await asyncio.gather(*(self._stop_slot(s) for s in slots))
            clean = clean and all(results)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if graceful and clean:
            # The services' "stopped" events were published after the first drain; closing the
            # bus now would cancel their delivery.
            clean = await self.bus.drain(max(0.0, deadline - self.clock.monotonic()))
        await self.stop()
        return clean

    async def route_event(self, event: ServiceEvent) -> None:
        await self.bus.route(event)

    async def broadcast_event(self, event: ServiceEvent) -> None:
        await self.bus.broadcast(event)

    # --- beyond the seed -----------------------------------------------------------------------

    async def discover_as(self, service_type: str, protocol: type[P]) -> P | None:
        """``discover_service`` typed by the service's Protocol."""
        return cast(P | None, await self.discover_service(service_type))

    async def subscribe(
        self, event_type: type[E], handler: Handler[E], *, name: str, group: str | None = None
    ) -> Subscription:
        return await self.bus.subscribe(event_type, handler, name=name, group=group)

    def registry(self) -> ServiceRegistry:
        entries = [
            ServiceEntry(
                service_id=s.service_id,
                service_type=s.service_type,
                dependencies=s.instance.dependencies,
                state=s.state,
                health=s.health,
                breaker=s.breaker.state,
                stats=s.instance.stats(),
                started_at=s.started_at,
                start_order=s.order,
            )
            for s in sorted(
                self._slots.values(), key=lambda s: (s.order is None, s.order, s.service_id)
            )
        ]
        return ServiceRegistry(
            services=tuple(entries),
            start_levels=tuple(tuple(level) for level in self._levels),
            startup_seconds=self._startup_s,
        )

    def breaker(self, service_id: str) -> CircuitBreaker:
        return self._slots[service_id].breaker

    async def on_stop(self) -> None:
        await self.bus.close()

    async def on_start(self) -> None:
        await self.bus.start()

    async def check_health(self) -> HealthStatus:
        open_breakers = [
            s.service_id for s in self._slots.values() if s.breaker.state is BreakerState.OPEN
        ]
        if open_breakers:
            return HealthStatus.warning("open circuit: " + ", ".join(open_breakers))
        return HealthStatus.passing(f"{len(self._slots)} services registered")

    # --- internals -----------------------------------------------------------------------------

    def _find(self, service_type: str) -> _Slot | None:
        slot = self._slots.get(service_type)
        if slot is not None:
            return slot
        return next((s for s in self._slots.values() if s.service_type == service_type), None)

    async def _start_slot(self, slot: _Slot) -> BaseException | None:
        if slot.state is ServiceState.RUNNING:
            return None
        slot.state = ServiceState.STARTING
        self._emit(ServiceStateChanged(source=NAME, service_id=slot.service_id, state="starting"))
        try:
            await slot.instance.start()
        except Exception as exc:
            slot.state = ServiceState.FAILED
            self._emit(
                ServiceStateChanged(
                    source=NAME, service_id=slot.service_id, state="failed", detail=str(exc)
                )
            )
            return exc
        slot.state = ServiceState.RUNNING
        slot.started_at = self.clock.time()
        self._emit(ServiceStateChanged(source=NAME, service_id=slot.service_id, state="running"))
        return None

    async def _stop_slot(self, slot: _Slot) -> bool:
        if slot.state is not ServiceState.RUNNING:
            return True
        slot.state = ServiceState.STOPPING
        try:
            await slot.instance.stop()
        except Exception as exc:
            slot.state = ServiceState.FAILED
            slot.health = HealthStatus.critical(f"stop raised {type(exc).__name__}: {exc}")
            return False
        slot.state = ServiceState.STOPPED
        self._emit(ServiceStateChanged(source=NAME, service_id=slot.service_id, state="stopped"))
        return True

    def _breaker_listener(self, service_id: str) -> Any:
        def on_change(old: BreakerState, new: BreakerState, failures: int) -> None:
            self._emit(
                CircuitStateChanged(
                    source=NAME,
                    service_id=service_id,
                    previous=old.value,
                    state=new.value,
                    consecutive_failures=failures,
                )
            )

        return on_change

    def _emit(self, event: ServiceEvent) -> None:
        """Publish a lifecycle event without making the caller wait on subscribers."""
        if not self.running:
            return
        task = asyncio.get_running_loop().create_task(self._publish_quietly(event))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _publish_quietly(self, event: ServiceEvent) -> None:
        try:
            await self.bus.broadcast(event)
        except Exception:  # the bus closed under us during shutdown: lifecycle noise only
            return

    async def _health_loop(self) -> None:
        interval = self.config.health_checks.interval_seconds
        while True:
            await self.clock.sleep(interval)
            await self.health_check_all_services()
