"""FogOrchestrationService: registry, ordered lifecycle, discovery, breakers, health, events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, Literal, Protocol

import pytest

from fogcoord.clock import FakeClock
from fogcoord.config import (
    HealthChecksConfig,
    MessagingConfig,
    OrchestrationConfig,
    ServiceDiscoveryConfig,
)
from fogcoord.contracts.errors import (
    CallTimeout,
    CircuitOpen,
    DependencyError,
    ServiceUnavailable,
    ValidationFailed,
)
from fogcoord.contracts.events import (
    CircuitStateChanged,
    HealthChanged,
    ServiceEvent,
    ServiceStateChanged,
)
from fogcoord.contracts.lifecycle import HealthState, HealthStatus
from fogcoord.contracts.orchestration import BreakerState, ServiceInstance, ServiceState
from fogcoord.lifecycle import ServiceBase
from fogcoord.orchestration.bus.inprocess import InProcessEventBus
from fogcoord.orchestration.service import FogOrchestrationService

HealthMode = Literal["ok", "raise", "hang", "gate"]


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


class Work(ServiceEvent):
    event_type: ClassVar[str] = "test_orchestration.work"

    n: int


class Svc(ServiceBase):
    """A test service that records its lifecycle into a shared log."""

    def __init__(
        self,
        name: str,
        log: list[str],
        *,
        deps: tuple[str, ...] = (),
        service_type: str | None = None,
        fail_start: bool = False,
        gated: bool = False,
        health_mode: HealthMode = "ok",
        clock: FakeClock | None = None,
    ) -> None:
        super().__init__(name, dependencies=deps, clock=clock)
        if service_type is not None:
            self.service_type = service_type
        self.log = log
        self.fail_start = fail_start
        self.entered = asyncio.Event()
        self.gate: asyncio.Event | None = asyncio.Event() if gated else None
        self.health_mode: HealthMode = health_mode
        self.health_entered = asyncio.Event()
        self.health_gate = asyncio.Event()
        self.health_checks = 0
        self.method_calls = 0
        self.hang = asyncio.Event()
        self._secret = "not for callers"

    async def on_start(self) -> None:
        self.log.append(f"start:{self.name}")
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot bind its port")
        self.log.append(f"started:{self.name}")

    async def on_stop(self) -> None:
        self.log.append(f"stop:{self.name}")

    async def check_health(self) -> HealthStatus:
        self.health_checks += 1
        if self.health_mode == "raise":
            raise RuntimeError("sensor offline")
        if self.health_mode == "hang":
            await asyncio.Event().wait()
        if self.health_mode == "gate":
            self.health_entered.set()
            await self.health_gate.wait()
        return HealthStatus.passing(f"{self.name} fine")

    # --- the service's contract ----------------------------------------------------------------

    async def echo(self, value: int) -> int:
        self.method_calls += 1
        return value

    async def outage(self) -> None:
        self.method_calls += 1
        raise ServiceUnavailable("database unreachable")

    async def crash(self) -> None:
        self.method_calls += 1
        raise RuntimeError("segfault-ish")

    async def reject(self) -> None:
        self.method_calls += 1
        raise ValidationFailed("amount", "must be positive")

    async def slow(self) -> int:
        self.method_calls += 1
        await self.hang.wait()
        return 1

    def describe(self) -> str:
        return f"svc {self.name}"

    async def _internal(self) -> str:
        return "internal"


class Echo(Protocol):
    async def echo(self, value: int) -> int: ...


Build = Callable[..., FogOrchestrationService]


@pytest.fixture
async def build(fake_clock: FakeClock) -> AsyncIterator[Build]:
    made: list[FogOrchestrationService] = []

    def factory(**config: Any) -> FogOrchestrationService:
        cfg = OrchestrationConfig(**config)
        bus = InProcessEventBus(
            clock=fake_clock,
            max_queue_size=cfg.messaging.max_queue_size,
            retry_backoff_ms=cfg.messaging.retry_backoff_ms,
            max_delivery_attempts=cfg.messaging.max_delivery_attempts,
        )
        orch = FogOrchestrationService(cfg, bus, clock=fake_clock)
        made.append(orch)
        return orch

    yield factory
    for orch in made:
        await orch.shutdown_services(graceful=False)
        await orch.bus.close()


async def register_all(orch: FogOrchestrationService, *services: Svc) -> None:
    for svc in services:
        assert await orch.register_service(svc.name, svc)


def breaker_of(proxy: ServiceInstance) -> BreakerState:
    return proxy.breaker_state


def starts(log: list[str]) -> list[str]:
    return [e.split(":", 1)[1] for e in log if e.startswith("start:")]


def stops(log: list[str]) -> list[str]:
    return [e.split(":", 1)[1] for e in log if e.startswith("stop:")]


class Collector:
    """Subscribes to the orchestrator's lifecycle events and keeps them."""

    def __init__(self) -> None:
        self.states: list[ServiceStateChanged] = []
        self.circuits: list[CircuitStateChanged] = []
        self.health: list[HealthChanged] = []

    async def attach(self, orch: FogOrchestrationService) -> None:
        await orch.subscribe(ServiceStateChanged, self._state, name="t-states")
        await orch.subscribe(CircuitStateChanged, self._circuit, name="t-circuits")
        await orch.subscribe(HealthChanged, self._health, name="t-health")

    # Each handler takes a few loop turns, as a real subscriber doing I/O would.

    async def _state(self, event: ServiceStateChanged) -> None:
        await settle(3)
        self.states.append(event)

    async def _circuit(self, event: CircuitStateChanged) -> None:
        await settle(3)
        self.circuits.append(event)

    async def _health(self, event: HealthChanged) -> None:
        await settle(3)
        self.health.append(event)

    def states_of(self, service_id: str) -> list[str]:
        return [e.state for e in self.states if e.service_id == service_id]


async def flush(orch: FogOrchestrationService) -> None:
    """Let background publishes run, then wait until every subscriber handled its events."""
    await settle()
    assert await orch.bus.drain(1.0)


# --- registration -----------------------------------------------------------------------------


async def test_register_returns_true_then_false_for_duplicate(build: Build) -> None:
    orch = build()
    log: list[str] = []
    first = Svc("alpha", log)
    assert await orch.register_service("alpha", first) is True
    assert await orch.register_service("alpha", Svc("alpha", log)) is False
    entry = orch.registry().get("alpha")
    assert entry is not None
    assert entry.state is ServiceState.REGISTERED
    assert len(orch.registry().services) == 1


async def test_register_rejects_object_without_lifecycle(build: Build) -> None:
    orch = build()

    class Half:
        async def start(self) -> None: ...

    for bad in (object(), Half(), "a string"):
        with pytest.raises(ValidationFailed) as info:
            await orch.register_service("bad", bad)
        assert info.value.fields["field"] == "service_instance"
    assert orch.registry().services == ()


@pytest.mark.parametrize("service_id", ["", "has space", "dot.ted", "slash/ed"])
async def test_register_rejects_bad_ids(build: Build, service_id: str) -> None:
    orch = build()
    with pytest.raises(ValidationFailed) as info:
        await orch.register_service(service_id, Svc("x", []))
    assert info.value.fields["field"] == "service_id"


# --- start-up ---------------------------------------------------------------------------------


async def test_initialize_starts_in_dependency_order(build: Build) -> None:
    orch = build()
    log: list[str] = []
    await register_all(
        orch,
        Svc("marketplace", log, deps=("harvesting", "tokenomics")),
        Svc("tokenomics", log, deps=("stats",)),
        Svc("harvesting", log, deps=("stats",)),
        Svc("stats", log),
    )
    registry = await orch.initialize_services()

    order = starts(log)
    assert order[0] == "stats"
    assert set(order[1:3]) == {"harvesting", "tokenomics"}
    assert order[3] == "marketplace"
    assert registry.start_levels == (("stats",), ("harvesting", "tokenomics"), ("marketplace",))
    assert [e.service_id for e in registry.services] == [
        "stats",
        "harvesting",
        "tokenomics",
        "marketplace",
    ]
    assert {e.service_id: e.start_order for e in registry.services} == {
        "stats": 0,
        "harvesting": 1,
        "tokenomics": 1,
        "marketplace": 2,
    }
    assert all(e.state is ServiceState.RUNNING for e in registry.services)
    assert registry.startup_seconds >= 0
    assert orch.running


async def test_independent_services_start_concurrently(build: Build) -> None:
    orch = build()
    log: list[str] = []
    base = Svc("base", log)
    left = Svc("left", log, deps=("base",), gated=True)
    right = Svc("right", log, deps=("base",), gated=True)
    top = Svc("top", log, deps=("left", "right"))
    await register_all(orch, base, left, right, top)

    init = asyncio.create_task(orch.initialize_services())
    await settle()
    # Both services of the second level are inside start() and neither has finished.
    assert left.entered.is_set()
    assert right.entered.is_set()
    assert "started:left" not in log
    assert "started:right" not in log
    assert "start:top" not in log
    assert orch.registry().get("left") is not None
    assert orch.registry().get("left").state is ServiceState.STARTING  # type: ignore[union-attr]

    left.gate.set()  # type: ignore[union-attr]
    await settle()
    assert "start:top" not in log  # top waits for its whole level
    right.gate.set()  # type: ignore[union-attr]
    await init
    assert starts(log)[-1] == "top"


@pytest.mark.parametrize(
    ("deps", "fields"),
    [
        ({"a": ("b",), "b": ("c",), "c": ("a",)}, {"cycle": ["a", "b", "c", "a"]}),
        ({"a": (), "b": ("ghost",)}, {"service": "b", "missing": "ghost"}),
        ({"a": ("a",)}, {"cycle": ["a", "a"]}),
    ],
)
async def test_bad_graph_raises_before_anything_starts(
    build: Build, deps: dict[str, tuple[str, ...]], fields: dict[str, Any]
) -> None:
    orch = build()
    log: list[str] = []
    for name, d in deps.items():
        await orch.register_service(name, Svc(name, log, deps=d))
    with pytest.raises(DependencyError) as info:
        await orch.initialize_services()
    assert info.value.fields == fields
    assert log == []
    assert not orch.running
    assert all(e.state is ServiceState.REGISTERED for e in orch.registry().services)


async def test_failing_start_stops_started_ones_in_reverse_and_raises(build: Build) -> None:
    orch = build()
    log: list[str] = []
    await register_all(
        orch,
        Svc("a", log),
        Svc("x", log),
        Svc("b", log, deps=("a",)),
        Svc("c", log, deps=("a", "x"), fail_start=True),
        Svc("d", log, deps=("b", "c")),
    )
    with pytest.raises(DependencyError) as info:
        await orch.initialize_services()
    assert info.value.fields == {"service": "c"}
    assert "'c' failed to start" in info.value.message
    assert isinstance(info.value.__cause__, RuntimeError)

    assert "start:d" not in log
    # Started: a, x (level 0) then b; stopped in exactly the reverse order.
    assert stops(log) == ["b", "x", "a"]
    states = {e.service_id: e.state for e in orch.registry().services}
    assert states == {
        "a": ServiceState.STOPPED,
        "x": ServiceState.STOPPED,
        "b": ServiceState.STOPPED,
        "c": ServiceState.FAILED,
        "d": ServiceState.REGISTERED,
    }


# --- shutdown ---------------------------------------------------------------------------------


async def test_shutdown_stops_in_reverse_dependency_order(build: Build) -> None:
    orch = build()
    log: list[str] = []
    await register_all(
        orch,
        Svc("base", log),
        Svc("mid1", log, deps=("base",)),
        Svc("mid2", log, deps=("base",)),
        Svc("top", log, deps=("mid1", "mid2")),
    )
    await orch.initialize_services()
    assert await orch.shutdown_services() is True
    order = stops(log)
    assert order[0] == "top"
    assert set(order[1:3]) == {"mid1", "mid2"}
    assert order[3] == "base"
    assert all(e.state is ServiceState.STOPPED for e in orch.registry().services)
    assert not orch.running


async def test_graceful_shutdown_drains_bus_before_stopping(build: Build) -> None:
    orch = build()
    log: list[str] = []
    await register_all(orch, Svc("svc", log))
    await orch.initialize_services()

    async def slow_handler(event: Work) -> None:
        for _ in range(10):  # slow in loop turns, no real or fake time
            await asyncio.sleep(0)
        log.append(f"handled:{event.n}")

    await orch.subscribe(Work, slow_handler, name="slow")
    for n in range(5):
        await orch.broadcast_event(Work(n=n))
    assert not any(e.startswith("handled") for e in log)

    assert await orch.shutdown_services(graceful=True) is True
    handled = [e for e in log if e.startswith("handled")]
    assert handled == [f"handled:{n}" for n in range(5)]
    assert log.index("stop:svc") > log.index("handled:4")


async def test_shutdown_gives_up_on_stuck_subscriber_after_grace(
    build: Build, fake_clock: FakeClock
) -> None:
    orch = build(shutdown_grace_seconds=0.05)
    log: list[str] = []
    await register_all(orch, Svc("svc", log))
    await orch.initialize_services()

    async def stuck(event: Work) -> None:
        await asyncio.Event().wait()

    await orch.subscribe(Work, stuck, name="stuck")
    await orch.broadcast_event(Work(n=1))
    shutdown = asyncio.create_task(orch.shutdown_services(graceful=True))
    # The grace is small in real time too, and the fake clock is moved past it as well, so the
    # bound holds whichever clock the bus measures it on.
    async with asyncio.timeout(5):
        while not shutdown.done():
            await asyncio.sleep(0.005)
            fake_clock.advance(0.05)
    assert shutdown.result() is False
    assert stops(log) == ["svc"]  # services are still stopped
    assert not orch.running


async def test_ungraceful_shutdown_does_not_wait_for_subscribers(build: Build) -> None:
    orch = build(shutdown_grace_seconds=30)
    log: list[str] = []
    await register_all(orch, Svc("svc", log))
    await orch.initialize_services()

    async def stuck(event: Work) -> None:
        await asyncio.Event().wait()

    await orch.subscribe(Work, stuck, name="stuck")
    await orch.broadcast_event(Work(n=1))
    assert await asyncio.wait_for(orch.shutdown_services(graceful=False), timeout=5) is True
    assert stops(log) == ["svc"]


# --- discovery --------------------------------------------------------------------------------


async def test_discover_running_unknown_and_stopped(build: Build) -> None:
    orch = build()
    log: list[str] = []
    await register_all(orch, Svc("alpha", log), Svc("beta", log, service_type="payments"))
    await orch.initialize_services()

    proxy = await orch.discover_service("alpha")
    assert proxy is not None
    assert proxy.service_id == "alpha"
    assert isinstance(proxy, ServiceInstance)
    assert proxy.breaker_state is BreakerState.CLOSED
    assert await proxy.echo(7) == 7

    by_type = await orch.discover_service("payments")
    assert by_type is not None
    assert by_type.service_id == "beta"

    assert await orch.discover_service("nope") is None

    typed = await orch.discover_as("alpha", Echo)
    assert typed is not None
    assert await typed.echo(3) == 3

    await orch.shutdown_services()
    assert await orch.discover_service("alpha") is None


async def test_discover_failed_service_is_none(build: Build) -> None:
    orch = build()
    log: list[str] = []
    await register_all(orch, Svc("broken", log, fail_start=True))
    with pytest.raises(DependencyError):
        await orch.initialize_services()
    assert await orch.discover_service("broken") is None


async def test_discover_waits_with_backoff_for_a_starting_service(
    build: Build, fake_clock: FakeClock
) -> None:
    orch = build(
        service_discovery=ServiceDiscoveryConfig(retry_attempts=3),
        messaging=MessagingConfig(retry_backoff_ms=500),
    )
    log: list[str] = []
    svc = Svc("late", log, gated=True)
    await register_all(orch, svc)
    init = asyncio.create_task(orch.initialize_services())
    await settle()
    assert orch.registry().services[0].state is ServiceState.STARTING

    found = asyncio.create_task(orch.discover_service("late"))
    await settle()
    assert fake_clock.sleepers == 1
    await fake_clock.advance_and_settle(0.499)
    assert not found.done()
    await fake_clock.advance_and_settle(0.001)  # first back-off, 0.5 s: second look, still starting
    assert not found.done()
    await fake_clock.advance_and_settle(1.0)  # second back-off, 1 s
    assert not found.done()

    assert svc.gate is not None
    svc.gate.set()
    await init
    assert not found.done()  # it only looks again when the third back-off (2 s) ends
    await fake_clock.advance_and_settle(2.0)
    assert found.done()
    proxy = found.result()
    assert proxy is not None
    assert proxy.service_id == "late"


async def test_discover_gives_up_after_retry_attempts(build: Build, fake_clock: FakeClock) -> None:
    orch = build(
        service_discovery=ServiceDiscoveryConfig(retry_attempts=3),
        messaging=MessagingConfig(retry_backoff_ms=500),
    )
    log: list[str] = []
    svc = Svc("stuck", log, gated=True)
    await register_all(orch, svc)
    init = asyncio.create_task(orch.initialize_services())
    await settle()

    found = asyncio.create_task(orch.discover_service("stuck"))
    await settle()
    sleeps = 0
    for backoff in (0.5, 1.0, 2.0):
        assert not found.done()
        assert fake_clock.sleepers == 1
        sleeps += 1
        await fake_clock.advance_and_settle(backoff)
    assert sleeps == 3
    assert found.done()
    assert found.result() is None
    assert fake_clock.sleepers == 0

    assert svc.gate is not None
    svc.gate.set()
    await init


async def test_discover_without_retries_does_not_sleep(build: Build, fake_clock: FakeClock) -> None:
    orch = build(service_discovery=ServiceDiscoveryConfig(retry_attempts=0))
    await register_all(orch, Svc("later", []))  # registered, never initialized
    assert await asyncio.wait_for(orch.discover_service("later"), timeout=1) is None
    assert fake_clock.sleepers == 0


# --- calls through the proxy ------------------------------------------------------------------


async def test_proxy_calls_go_through_breaker(build: Build) -> None:
    orch = build(health_checks=HealthChecksConfig(circuit_breaker_threshold=3))
    svc = Svc("ledger", [])
    await register_all(orch, svc)
    await orch.initialize_services()
    proxy = await orch.discover_service("ledger")
    assert proxy is not None

    with pytest.raises(ServiceUnavailable):
        await proxy.outage()
    with pytest.raises(RuntimeError):
        await proxy.crash()
    assert orch.registry().get("ledger").breaker is BreakerState.CLOSED  # type: ignore[union-attr]
    with pytest.raises(ServiceUnavailable):
        await proxy.outage()
    assert svc.method_calls == 3
    stats = svc.stats()
    assert (stats.requests, stats.errors) == (3, 3)

    with pytest.raises(CircuitOpen) as info:
        await proxy.echo(1)
    assert svc.method_calls == 3  # never reached the service
    assert info.value.retry_after > 0
    assert proxy.breaker_state is BreakerState.OPEN
    assert orch.breaker("ledger").state is BreakerState.OPEN
    entry = orch.registry().get("ledger")
    assert entry is not None
    assert entry.breaker is BreakerState.OPEN
    health = await orch.health()
    assert health.state is HealthState.WARNING
    assert "ledger" in health.reason


async def test_breaker_reopens_for_calls_after_reset(build: Build, fake_clock: FakeClock) -> None:
    orch = build(
        health_checks=HealthChecksConfig(circuit_breaker_threshold=1, breaker_reset_seconds=10)
    )
    svc = Svc("ledger", [])
    await register_all(orch, svc)
    await orch.initialize_services()
    proxy = await orch.discover_service("ledger")
    assert proxy is not None
    with pytest.raises(ServiceUnavailable):
        await proxy.outage()
    with pytest.raises(CircuitOpen):
        await proxy.echo(1)
    fake_clock.advance(10)
    assert breaker_of(proxy) is BreakerState.HALF_OPEN
    assert await proxy.echo(5) == 5
    assert breaker_of(proxy) is BreakerState.CLOSED


async def test_business_errors_through_proxy_do_not_open(build: Build) -> None:
    orch = build(health_checks=HealthChecksConfig(circuit_breaker_threshold=2))
    svc = Svc("wallet", [])
    await register_all(orch, svc)
    await orch.initialize_services()
    proxy = await orch.discover_service("wallet")
    assert proxy is not None
    for _ in range(5):
        with pytest.raises(ValidationFailed):
            await proxy.reject()
    assert await proxy.echo(2) == 2
    assert proxy.breaker_state is BreakerState.CLOSED
    stats = svc.stats()
    assert stats.requests == 6
    assert stats.errors == 5
    assert "ValidationFailed" in stats.last_error
    assert stats.average_processing_time_s >= 0


async def test_proxy_call_timeout_on_fake_clock(build: Build, fake_clock: FakeClock) -> None:
    orch = build(
        service_discovery=ServiceDiscoveryConfig(timeout_seconds=2),
        health_checks=HealthChecksConfig(circuit_breaker_threshold=1),
    )
    svc = Svc("slowpoke", [])
    await register_all(orch, svc)
    await orch.initialize_services()
    proxy = await orch.discover_service("slowpoke")
    assert proxy is not None

    call = asyncio.create_task(proxy.slow())
    await settle()
    await fake_clock.advance_and_settle(1.9)
    assert not call.done()
    await fake_clock.advance_and_settle(0.1)
    with pytest.raises(CallTimeout) as info:
        await call
    assert info.value.fields["method"] == "slow"
    assert proxy.breaker_state is BreakerState.OPEN
    assert svc.stats().errors == 1


async def test_private_attributes_not_reachable_through_proxy(build: Build) -> None:
    orch = build()
    await register_all(orch, Svc("vault", []))
    await orch.initialize_services()
    proxy = await orch.discover_service("vault")
    assert proxy is not None
    with pytest.raises(AttributeError, match="private"):
        _ = proxy._secret
    with pytest.raises(AttributeError, match="private"):
        _ = proxy._internal
    with pytest.raises(AttributeError, match="private"):
        _ = proxy._running
    with pytest.raises(AttributeError):
        _ = proxy.no_such_method
    # Plain (non-coroutine) attributes pass through unguarded.
    assert proxy.describe() == "svc vault"
    assert proxy.name == "vault"
    # Guarded methods are cached per name and named after the service.
    assert proxy.echo is proxy.echo
    assert proxy.echo.__qualname__ == "vault.echo"


# --- health -----------------------------------------------------------------------------------


async def test_health_checks_run_concurrently(build: Build) -> None:
    orch = build()
    log: list[str] = []
    one = Svc("one", log, health_mode="gate")
    two = Svc("two", log, health_mode="gate")
    await register_all(orch, one, two)
    await orch.initialize_services()

    check = asyncio.create_task(orch.health_check_all_services())
    await settle()
    assert one.health_entered.is_set()
    assert two.health_entered.is_set()
    assert not check.done()
    one.health_gate.set()
    two.health_gate.set()
    results = await check
    assert set(results) == {"one", "two"}
    assert all(r.state is HealthState.PASSING for r in results.values())


async def test_raising_check_is_critical_with_reason(build: Build, fake_clock: FakeClock) -> None:
    orch = build()
    log: list[str] = []
    await register_all(orch, Svc("good", log), Svc("bad", log, health_mode="raise"))
    await orch.initialize_services()
    results = await orch.health_check_all_services()
    assert results["good"].state is HealthState.PASSING
    assert results["good"].reason == "good fine"
    assert results["bad"].state is HealthState.CRITICAL
    assert "RuntimeError" in results["bad"].reason
    assert "sensor offline" in results["bad"].reason
    assert results["bad"].checked_at == fake_clock.time()
    entry = orch.registry().get("bad")
    assert entry is not None
    assert entry.health == results["bad"]


async def test_slow_check_is_critical_after_check_timeout(
    build: Build, fake_clock: FakeClock
) -> None:
    orch = build(health_checks=HealthChecksConfig(check_timeout_seconds=5))
    log: list[str] = []
    await register_all(orch, Svc("quick", log), Svc("sloth", log, health_mode="hang"))
    await orch.initialize_services()

    check = asyncio.create_task(orch.health_check_all_services())
    await settle()
    await fake_clock.advance_and_settle(4.9, rounds=20)
    assert not check.done()
    await fake_clock.advance_and_settle(0.1, rounds=20)
    assert check.done()
    results = check.result()
    assert results["quick"].state is HealthState.PASSING
    assert results["sloth"].state is HealthState.CRITICAL
    assert "exceeded" in results["sloth"].reason


async def test_stopped_service_health_is_critical(build: Build) -> None:
    orch = build()
    await register_all(orch, Svc("idle", []))
    results = await orch.health_check_all_services()  # registered, never started
    assert results["idle"].state is HealthState.CRITICAL
    assert results["idle"].reason == "not running"


async def test_periodic_health_loop_runs_every_interval(
    build: Build, fake_clock: FakeClock
) -> None:
    orch = build(health_checks=HealthChecksConfig(interval_seconds=60))
    svc = Svc("watched", [])
    await register_all(orch, svc)
    await orch.initialize_services()
    await settle()
    assert svc.health_checks == 0

    await fake_clock.advance_and_settle(59.9, rounds=20)
    assert svc.health_checks == 0
    await fake_clock.advance_and_settle(0.1, rounds=20)
    assert svc.health_checks == 1
    await fake_clock.advance_and_settle(30, rounds=20)
    assert svc.health_checks == 1
    await fake_clock.advance_and_settle(30, rounds=20)
    assert svc.health_checks == 2
    entry = orch.registry().get("watched")
    assert entry is not None
    assert entry.health is not None
    assert entry.health.state is HealthState.PASSING

    await orch.shutdown_services()
    await fake_clock.advance_and_settle(120, rounds=20)
    assert svc.health_checks == 2


# --- events -----------------------------------------------------------------------------------


async def test_route_event_reaches_exactly_one_group_member(build: Build) -> None:
    orch = build()
    await orch.initialize_services()
    got: dict[str, list[int]] = {"w1": [], "w2": [], "other": [], "all": []}

    def handler(key: str) -> Callable[[Work], Awaitable[None]]:
        async def handle(event: Work) -> None:
            got[key].append(event.n)

        return handle

    await orch.subscribe(Work, handler("w1"), name="w1", group="worker")
    await orch.subscribe(Work, handler("w2"), name="w2", group="worker")
    await orch.subscribe(Work, handler("other"), name="other", group="auditor")

    for n in range(6):
        await orch.route_event(Work(n=n, target="worker"))
    await flush(orch)
    delivered = sorted(got["w1"] + got["w2"])
    assert delivered == list(range(6))  # each routed event exactly once
    assert got["w1"]
    assert got["w2"]
    assert got["other"] == []

    with pytest.raises(ValueError, match="target"):
        await orch.route_event(Work(n=99))


async def test_broadcast_event_reaches_every_subscriber(build: Build) -> None:
    orch = build()
    await orch.initialize_services()
    got: dict[str, list[int]] = {"w1": [], "w2": [], "solo": []}

    def handler(key: str) -> Callable[[Work], Awaitable[None]]:
        async def handle(event: Work) -> None:
            got[key].append(event.n)

        return handle

    await orch.subscribe(Work, handler("w1"), name="w1", group="worker")
    await orch.subscribe(Work, handler("w2"), name="w2", group="worker")
    await orch.subscribe(Work, handler("solo"), name="solo")

    await orch.broadcast_event(Work(n=1))
    await orch.broadcast_event(Work(n=2))
    await flush(orch)
    assert got == {"w1": [1, 2], "w2": [1, 2], "solo": [1, 2]}


async def test_lifecycle_transitions_are_published(build: Build) -> None:
    orch = build()
    log: list[str] = []
    events = Collector()
    await events.attach(orch)
    await register_all(orch, Svc("base", log), Svc("top", log, deps=("base",)))
    await orch.initialize_services()
    await flush(orch)
    assert events.states_of("base") == ["starting", "running"]
    assert events.states_of("top") == ["starting", "running"]
    assert all(e.source == "orchestration" for e in events.states)

    # A service registered once the orchestrator runs is announced too.
    await orch.register_service("late", Svc("late", log))
    await flush(orch)
    assert events.states_of("late") == ["registered"]


async def test_failed_start_is_published(build: Build) -> None:
    orch = build()
    log: list[str] = []
    events = Collector()
    await events.attach(orch)
    await register_all(orch, Svc("ok", log), Svc("broken", log, deps=("ok",), fail_start=True))
    with pytest.raises(DependencyError):
        await orch.initialize_services()
    await flush(orch)
    assert events.states_of("broken") == ["starting", "failed"]
    failed = [e for e in events.states if e.state == "failed"]
    assert "cannot bind its port" in failed[0].detail
    assert events.states_of("ok") == ["starting", "running", "stopped"]


async def test_stopped_transitions_are_published_on_shutdown(build: Build) -> None:
    orch = build()
    log: list[str] = []
    events = Collector()
    await events.attach(orch)
    await register_all(orch, Svc("base", log), Svc("top", log, deps=("base",)))
    await orch.initialize_services()
    assert await orch.shutdown_services() is True
    # Delivered before the bus closed, although they were published after the first drain.
    assert events.states_of("top") == ["starting", "running", "stopped"]
    assert events.states_of("base") == ["starting", "running", "stopped"]
    stopped = [e.service_id for e in events.states if e.state == "stopped"]
    assert stopped == ["top", "base"]


async def test_breaker_transitions_are_published(build: Build, fake_clock: FakeClock) -> None:
    orch = build(
        health_checks=HealthChecksConfig(circuit_breaker_threshold=2, breaker_reset_seconds=10)
    )
    events = Collector()
    await events.attach(orch)
    await register_all(orch, Svc("ledger", []))
    await orch.initialize_services()
    proxy = await orch.discover_service("ledger")
    assert proxy is not None
    for _ in range(2):
        with pytest.raises(ServiceUnavailable):
            await proxy.outage()
    fake_clock.advance(10)
    assert await proxy.echo(1) == 1
    await flush(orch)
    assert [(e.previous, e.state, e.consecutive_failures) for e in events.circuits] == [
        ("closed", "open", 2),
        ("open", "half_open", 2),
        ("half_open", "closed", 0),
    ]
    assert {e.service_id for e in events.circuits} == {"ledger"}


async def test_health_changes_are_published(build: Build) -> None:
    orch = build()
    events = Collector()
    await events.attach(orch)
    svc = Svc("probe", [])
    await register_all(orch, svc)
    await orch.initialize_services()

    await orch.health_check_all_services()
    await orch.health_check_all_services()  # unchanged: no event
    svc.health_mode = "raise"
    await orch.health_check_all_services()
    svc.health_mode = "ok"
    await orch.health_check_all_services()
    await flush(orch)
    assert [(e.previous, e.state) for e in events.health] == [
        ("unknown", "passing"),
        ("passing", "critical"),
        ("critical", "passing"),
    ]
    assert "sensor offline" in events.health[1].reason


# --- registry ---------------------------------------------------------------------------------


async def test_registry_reports_state_order_levels(build: Build, fake_clock: FakeClock) -> None:
    orch = build()
    log: list[str] = []
    await register_all(
        orch,
        Svc("top", log, deps=("base",), service_type="marketplace"),
        Svc("base", log),
    )
    before = orch.registry()
    assert before.start_levels == ()
    assert {e.service_id: e.start_order for e in before.services} == {"top": None, "base": None}

    await orch.initialize_services()
    await orch.health_check_all_services()
    registry = orch.registry()
    assert registry.start_levels == (("base",), ("top",))
    top = registry.get("top")
    assert top is not None
    assert top.service_type == "marketplace"
    assert top.dependencies == ("base",)
    assert top.state is ServiceState.RUNNING
    assert top.start_order == 1
    assert top.started_at == fake_clock.time()
    assert top.breaker is BreakerState.CLOSED
    assert top.health is not None
    assert top.health.state is HealthState.PASSING
    assert top.stats is not None
    assert top.stats.name == "top"
    assert registry.get("missing") is None
    assert [e.service_id for e in registry.services] == ["base", "top"]

    await orch.shutdown_services()
    after = orch.registry()
    assert {e.service_id: e.state for e in after.services} == {
        "base": ServiceState.STOPPED,
        "top": ServiceState.STOPPED,
    }
