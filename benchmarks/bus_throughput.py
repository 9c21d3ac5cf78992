"""``bus.throughput``: events per second routed through the in-process bus to a queue group of 4.

The events are built before timing (constructing pydantic models is not bus work). The timed
part awaits ``bus.route`` for each event, then ``bus.drain``; afterwards every event must have
been handled exactly once across the four members. Baseline, in the same run: one raw
``asyncio.Queue`` (capacity equal to the four subscriber queues together) with four consumer
tasks doing the same handler work. Rounds alternate bus and baseline; the median round counts.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable
from time import perf_counter

from benchmarks._services import new_bus
from benchmarks._workload import discovered_events
from benchmarks.harness import Figure, Unit, log
from fogcoord.config import OrchestrationConfig
from fogcoord.contracts.harvesting import DeviceDiscoveredEvent

FIGURES = ("bus.throughput",)
UNIT: Unit = "/s"
TIMEOUT_S = 90.0

EVENTS = 60_000
WARMUP_EVENTS = 10_000
ROUNDS = 5
MEMBERS = 4
TARGET = 200_000.0
GROUP = "harvesting"
DRAIN_TIMEOUT_S = 60.0


def _recorder(sink: list[str]) -> Callable[[DeviceDiscoveredEvent], Awaitable[None]]:
    async def handle(event: DeviceDiscoveredEvent) -> None:
        sink.append(event.event_id)

    return handle


def _verify(
    kind: str,
    events: list[DeviceDiscoveredEvent],
    handled: list[list[str]],
    *,
    spread: bool,
) -> None:
    total = sum(len(h) for h in handled)
    if total != len(events):
        raise RuntimeError(f"{kind}: handled {total} events, published {len(events)}")
    ids = {i for h in handled for i in h}
    if ids != {e.event_id for e in events}:
        raise RuntimeError(f"{kind}: some events were handled twice and others never")
    if spread and any(not h for h in handled):
        raise RuntimeError(f"{kind}: a group member handled nothing: {[len(h) for h in handled]}")


async def through_bus(events: list[DeviceDiscoveredEvent], config: OrchestrationConfig) -> float:
    bus = new_bus(config)
    await bus.start()
    handled: list[list[str]] = [[] for _ in range(MEMBERS)]
    try:
        for i, sink in enumerate(handled):
            await bus.subscribe(
                DeviceDiscoveredEvent, _recorder(sink), name=f"{GROUP}-{i}", group=GROUP
            )
        route = bus.route
        started = perf_counter()
        for event in events:
            await route(event)
        drained = await bus.drain(DRAIN_TIMEOUT_S)
        elapsed = perf_counter() - started
    finally:
        await bus.close()
    if not drained:
        raise RuntimeError(f"the bus did not drain within {DRAIN_TIMEOUT_S:g} s")
    _verify("bus", events, handled, spread=True)
    return len(events) / elapsed


async def through_queue(events: list[DeviceDiscoveredEvent], capacity: int) -> float:
    queue: asyncio.Queue[DeviceDiscoveredEvent] = asyncio.Queue(maxsize=capacity)
    handled: list[list[str]] = [[] for _ in range(MEMBERS)]

    async def consume(handle: Callable[[DeviceDiscoveredEvent], Awaitable[None]]) -> None:
        while True:
            event = await queue.get()
            await handle(event)
            queue.task_done()

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(consume(_recorder(sink))) for sink in handled]
    try:
        put = queue.put
        started = perf_counter()
        for event in events:
            await put(event)
        await queue.join()
        elapsed = perf_counter() - started
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # No spread check: a consumer whose handler never suspends drains the whole queue itself.
    _verify("asyncio.Queue", events, handled, spread=False)
    return len(events) / elapsed


async def run() -> list[Figure]:
    config = OrchestrationConfig()
    capacity = MEMBERS * config.messaging.max_queue_size
    events = discovered_events(EVENTS, target=GROUP)
    await through_bus(events[:WARMUP_EVENTS], config)
    await through_queue(events[:WARMUP_EVENTS], capacity)
    bus_rates: list[float] = []
    queue_rates: list[float] = []
    for _ in range(ROUNDS):
        bus_rates.append(await through_bus(events, config))
        queue_rates.append(await through_queue(events, capacity))
    log(
        "  bus rounds: "
        + ", ".join(f"{r:,.0f}/s" for r in bus_rates)
        + "; asyncio.Queue rounds: "
        + ", ".join(f"{r:,.0f}/s" for r in queue_rates)
    )
    return [
        Figure(
            "bus.throughput",
            statistics.median(bus_rates),
            UNIT,
            baseline=statistics.median(queue_rates),
            target=TARGET,
            op=">=",
        )
    ]
