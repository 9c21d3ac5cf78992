"""The lifecycle every service shares, written once.

``ServiceBase`` gives a service ``start``/``stop``/``health``/``stats`` and the async context
manager; subclasses override ``on_start``/``on_stop``/``check_health``. Request counters follow
the NATS micro-service STATS shape; the orchestrator's proxies feed them via :meth:`record_call`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self

from fogcoord.clock import Clock, SystemClock
from fogcoord.contracts.errors import ServiceUnavailable
from fogcoord.contracts.events import ServiceEvent
from fogcoord.contracts.lifecycle import HealthStatus, ServiceStats

log = logging.getLogger(__name__)

Publish = Callable[[ServiceEvent], Coroutine[Any, Any, None]]

Resolve = Callable[[str], Coroutine[Any, Any, Any]]
"""The orchestrator's ``discover_service``: a breaker-guarded proxy, or None."""


async def require_service(resolve: Resolve, name: str) -> Any:
    """The running service ``name`` through ``resolve``; ServiceUnavailable when it is not."""
    svc = await resolve(name)
    if svc is None:
        raise ServiceUnavailable(f"{name} is not running")
    return svc


"""How a service hands an event to the bus (the orchestrator's ``broadcast_event``)."""


class ServiceBase:
    service_type: str = "service"

    def __init__(
        self,
        name: str | None = None,
        *,
        dependencies: tuple[str, ...] = (),
        clock: Clock | None = None,
        publish: Publish | None = None,
    ) -> None:
        self._name = name or self.service_type
        self._publish = publish
        self._background: set[asyncio.Task[None]] = set()
        self._dependencies = tuple(dependencies)
        self.clock: Clock = clock or SystemClock()
        self._running = False
        self._started_at: float | None = None
        self._requests = 0
        self._errors = 0
        self._processing = 0.0
        self._last_error = ""

    @property
    def name(self) -> str:
        return self._name

    @property
    def dependencies(self) -> tuple[str, ...]:
        return self._dependencies

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        if self._running:
            return
        await self.on_start()
        self._running = True
        self._started_at = self.clock.time()

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        await self.on_stop()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def emit(self, event: ServiceEvent) -> None:
        """Publish ``event`` without making the caller wait for the bus's subscribers."""
        if self._publish is None:
            return
        self.spawn(self._publish(event))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; :meth:`stop` waits for what is still running."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def every(
        self, seconds: float, job: Callable[[], Coroutine[Any, Any, Any]]
    ) -> asyncio.Task[Any]:
        """Run ``job`` every ``seconds`` on the service's clock until cancelled; a failing round
        is logged and the next one tries again."""

        async def loop() -> None:
            while True:
                await self.clock.sleep(seconds)
                try:
                    await job()
                except Exception:  # the next round tries again; the failure must be visible
                    log.exception(
                        "%s background job %s failed", self._name, getattr(job, "__name__", job)
                    )

        return self.spawn(loop())

    async def health(self) -> HealthStatus:
        if not self._running:
            return HealthStatus.critical("not running")
        return await self.check_health()

    def stats(self) -> ServiceStats:
        avg = self._processing / self._requests if self._requests else 0.0
        return ServiceStats(
            name=self._name,
            requests=self._requests,
            errors=self._errors,
            processing_time_s=self._processing,
            average_processing_time_s=avg,
            last_error=self._last_error,
            started_at=self._started_at,
        )

    def record_call(self, elapsed_s: float, error: BaseException | None = None) -> None:
        self._requests += 1
        self._processing += elapsed_s
        if error is not None:
            self._errors += 1
            self._last_error = f"{type(error).__name__}: {error}"

    async def on_start(self) -> None:
        """Acquire resources; raise to fail the start."""

    async def on_stop(self) -> None:
        """Release resources."""

    async def check_health(self) -> HealthStatus:
        return HealthStatus.passing()

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
