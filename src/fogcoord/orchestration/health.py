"""Running health checks: concurrently, each bounded by a timeout, a raise counting as critical."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from fogcoord.clock import Clock
from fogcoord.contracts.lifecycle import HealthStatus, Lifecycle


async def check_one(service: Lifecycle, timeout: float, clock: Clock) -> HealthStatus:
    started = time.perf_counter()
    try:
        async with clock.timeout(timeout):
            status = await service.health()
    except TimeoutError:
        status = HealthStatus.critical(f"health check exceeded {timeout:.3f}s")
    except Exception as exc:
        status = HealthStatus.critical(f"health check raised {type(exc).__name__}: {exc}")
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    return status.model_copy(update={"checked_at": clock.time(), "latency_ms": elapsed_ms})


async def check_all(
    services: Mapping[str, Lifecycle], timeout: float, clock: Clock
) -> dict[str, HealthStatus]:
    names = list(services)
    results = await asyncio.gather(*(check_one(services[n], timeout, clock) for n in names))
    return dict(zip(names, results, strict=True))
