"""``orchestration.startup`` and ``orchestration.health_cycle`` with the six services.

Startup: ``initialize_services`` of a fresh orchestrator (in-process bus, the five stand-ins of
:mod:`benchmarks._services` registered), median over fresh runs. Health cycle: one
``health_check_all_services`` over those services once running, median of many.
"""

from __future__ import annotations

import statistics
from time import perf_counter

from benchmarks._services import STAND_INS, build_orchestrator
from benchmarks.harness import Figure, Unit, log
from fogcoord.contracts.lifecycle import HealthState
from fogcoord.contracts.orchestration import ServiceState

FIGURES = ("orchestration.startup", "orchestration.health_cycle")
UNIT: Unit = "ms"
TIMEOUT_S = 60.0

STARTUP_RUNS = 20
STARTUP_WARMUP = 2
HEALTH_CYCLES = 500
HEALTH_WARMUP = 20
STARTUP_TARGET_MS = 500.0
HEALTH_TARGET_MS = 10.0


async def _startup_ms() -> float:
    orchestrator = await build_orchestrator()
    try:
        started = perf_counter()
        registry = await orchestrator.initialize_services()
        elapsed = perf_counter() - started
        states = {s.service_id: s.state for s in registry.services}
        if len(states) != len(STAND_INS) or any(
            s is not ServiceState.RUNNING for s in states.values()
        ):
            raise RuntimeError(f"not every service is running: {states}")
    finally:
        await orchestrator.shutdown_services()
    return elapsed * 1000.0


async def _health_cycles_ms() -> list[float]:
    orchestrator = await build_orchestrator()
    samples: list[float] = []
    try:
        await orchestrator.initialize_services()
        for i in range(HEALTH_WARMUP + HEALTH_CYCLES):
            started = perf_counter()
            results = await orchestrator.health_check_all_services()
            elapsed = perf_counter() - started
            bad = {n: s.state for n, s in results.items() if s.state is not HealthState.PASSING}
            if len(results) != len(STAND_INS) or bad:
                raise RuntimeError(f"health check of {len(results)} services, not passing: {bad}")
            if i >= HEALTH_WARMUP:
                samples.append(elapsed * 1000.0)
    finally:
        await orchestrator.shutdown_services()
    return samples


async def run() -> list[Figure]:
    for _ in range(STARTUP_WARMUP):
        await _startup_ms()
    startup = [await _startup_ms() for _ in range(STARTUP_RUNS)]
    health = await _health_cycles_ms()
    log(
        f"  startup ms: min {min(startup):.3f} max {max(startup):.3f}; "
        f"health cycle ms: min {min(health):.3f} max {max(health):.3f}"
    )
    return [
        Figure(
            "orchestration.startup",
            statistics.median(startup),
            UNIT,
            target=STARTUP_TARGET_MS,
            op="<",
        ),
        Figure(
            "orchestration.health_cycle",
            statistics.median(health),
            UNIT,
            target=HEALTH_TARGET_MS,
            op="<",
        ),
    ]
