"""``bus.route_latency``: publish-to-handler latency of one routed event on the in-process bus.

One event at a time: the producer stamps ``perf_counter_ns`` just before ``await bus.route(ev)``,
the group member's handler stamps on entry, and the producer waits for that delivery before the
next event. Baseline, in the same run and event loop: a bare ``asyncio.Queue`` hop measured the
same way (stamp, ``await queue.put``, a consumer task stamps after ``get``). Bus and baseline
alternate in blocks so drift in machine load affects both alike.
"""

from __future__ import annotations

import asyncio
from time import perf_counter_ns

from benchmarks._services import new_bus
from benchmarks._workload import discovered_events
from benchmarks.harness import Figure, Unit, percentile_figures
from fogcoord.config import OrchestrationConfig
from fogcoord.contracts.harvesting import DeviceDiscoveredEvent

FIGURES = ("bus.route_latency.p50", "bus.route_latency.p99")
UNIT: Unit = "us"
TIMEOUT_S = 60.0

SAMPLES = 20_000
WARMUP = 2_000
BLOCKS = 10
P99_TARGET_US = 200.0
RATIO_TARGET = 3.0
DELIVERY_TIMEOUT_S = 5.0
GROUP = "harvesting"


class _Hop:
    """The producer's side of one measured hop: which event it waits for, and when it landed."""

    def __init__(self) -> None:
        self.expected = ""
        self.arrived: asyncio.Future[int] | None = None

    def land(self, event_id: str, now_ns: int) -> None:
        arrived = self.arrived
        if event_id == self.expected and arrived is not None and not arrived.done():
            arrived.set_result(now_ns)

    async def wait(self) -> int:
        assert self.arrived is not None
        async with asyncio.timeout(DELIVERY_TIMEOUT_S):
            return await self.arrived

    def expect(self, event_id: str) -> None:
        self.expected = event_id
        self.arrived = asyncio.get_running_loop().create_future()


async def run() -> list[Figure]:
    config = OrchestrationConfig()
    events = discovered_events(WARMUP + SAMPLES, target=GROUP)

    bus = new_bus(config)
    await bus.start()
    bus_hop = _Hop()

    async def handler(event: DeviceDiscoveredEvent) -> None:
        bus_hop.land(event.event_id, perf_counter_ns())

    await bus.subscribe(DeviceDiscoveredEvent, handler, name=f"{GROUP}-1", group=GROUP)

    queue: asyncio.Queue[DeviceDiscoveredEvent] = asyncio.Queue(
        maxsize=config.messaging.max_queue_size
    )
    queue_hop = _Hop()

    async def consumer() -> None:
        while True:
            event = await queue.get()
            queue_hop.land(event.event_id, perf_counter_ns())
            queue.task_done()

    consumer_task = asyncio.get_running_loop().create_task(consumer())

    async def through_bus(event: DeviceDiscoveredEvent) -> int:
        bus_hop.expect(event.event_id)
        started = perf_counter_ns()
        await bus.route(event)
        return await bus_hop.wait() - started

    async def through_queue(event: DeviceDiscoveredEvent) -> int:
        queue_hop.expect(event.event_id)
        started = perf_counter_ns()
        await queue.put(event)
        return await queue_hop.wait() - started

    bus_ns: list[int] = []
    queue_ns: list[int] = []
    try:
        for event in events[:WARMUP]:
            await through_bus(event)
            await through_queue(event)
        block = SAMPLES // BLOCKS
        measured = events[WARMUP:]
        for start in range(0, SAMPLES, block):
            for event in measured[start : start + block]:
                bus_ns.append(await through_bus(event))
            for event in measured[start : start + block]:
                queue_ns.append(await through_queue(event))
        stats = bus.stats()
        delivered = sum(s.delivered for s in stats.subscribers)
        if delivered != len(events) or stats.dead_letters:
            raise RuntimeError(
                f"bus delivered {delivered} of {len(events)} events, "
                f"{stats.dead_letters} dead letters"
            )
    finally:
        consumer_task.cancel()
        await asyncio.gather(consumer_task, return_exceptions=True)
        await bus.close()

    return percentile_figures(
        "bus.route_latency",
        [ns / 1000.0 for ns in bus_ns],
        [ns / 1000.0 for ns in queue_ns],
        UNIT,
        p99_target=P99_TARGET_US,
        p99_ratio_target=RATIO_TARGET,
    )
