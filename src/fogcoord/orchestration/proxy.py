"""What discovery hands out: a service's methods, every async call through its circuit breaker."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fogcoord.contracts.orchestration import BreakerState
from fogcoord.orchestration.breaker import CircuitBreaker


class ServiceProxy:
    """Forwards attribute access to the service; coroutine methods are guarded and timed.

    Private attributes (leading underscore) are not reachable through a proxy: callers speak to a
    service only through its contract.
    """

    __slots__ = ("_breaker", "_cache", "_instance", "_service_id")

    def __init__(self, service_id: str, instance: Any, breaker: CircuitBreaker) -> None:
        self._service_id = service_id
        self._instance = instance
        self._breaker = breaker
        self._cache: dict[str, Callable[..., Awaitable[Any]]] = {}

    @property
    def service_id(self) -> str:
        return self._service_id

    @property
    def breaker_state(self) -> BreakerState:
        return self._breaker.state

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(f"{name!r} is private to service {self._service_id!r}")
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        target = getattr(self._instance, name)
        if not inspect.iscoroutinefunction(target):
            return target
        guarded = self._guard(name, target)
        self._cache[name] = guarded
        return guarded

    def _guard(
        self, name: str, target: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        breaker = self._breaker
        record = getattr(self._instance, "record_call", None)

        async def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = await breaker.call(target, *args, method=name, **kwargs)
            except Exception as exc:
                if record is not None:
                    record(time.perf_counter() - started, exc)
                raise
            if record is not None:
                record(time.perf_counter() - started, None)
            return result

        call.__name__ = name
        call.__qualname__ = f"{self._service_id}.{name}"
        return call

    def __repr__(self) -> str:
        return f"<ServiceProxy {self._service_id} breaker={self._breaker.state.value}>"
