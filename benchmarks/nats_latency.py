"""``bus.nats_route_latency``: publish-to-handler latency of a routed event over local NATS.

``NatsEventBus`` with a per-run subject prefix; a queue-group member subscribes and the producer
routes one event at a time, stamping ``perf_counter_ns`` just before ``await bus.route(ev)``;
the handler stamps on entry. Baseline, same run and server: a raw nats-py publish -> queue
subscription callback hop with the same event pre-encoded as JSON, on one connection. Bus and
baseline alternate in blocks.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import uuid
from time import perf_counter_ns
from typing import Any, cast
from urllib.parse import urlsplit

from benchmarks._workload import discovered_events
from benchmarks.harness import Figure, Unit, percentile_figures
from fogcoord.config import BusConfig, OrchestrationConfig
from fogcoord.contracts.harvesting import DeviceDiscoveredEvent
from fogcoord.orchestration.bus.protocol import EventBus

FIGURES = ("bus.nats_route_latency.p50", "bus.nats_route_latency.p99")
UNIT: Unit = "ms"
TIMEOUT_S = 60.0

SAMPLES = 3_000
WARMUP = 300
BLOCKS = 5
P99_TARGET_MS = 2.0
GROUP = "harvesting"
DELIVERY_TIMEOUT_S = 5.0
READY_ATTEMPTS = 50


def nats_url() -> str:
    return (
        os.environ.get("FOGCOORD_BENCH_NATS_URL")
        or os.environ.get("FOGCOORD_TEST_NATS_URL")
        or "nats://127.0.0.1:4222"
    )


def unique(prefix: str) -> str:
    """A subject prefix no other run uses: the server outlives this process."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def check_reachable(url: str, timeout: float = 2.0) -> None:
    """Fail fast with a clear message: nats-py keeps retrying an unreachable server."""
    parsed = urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 4222
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        raise RuntimeError(f"NATS is not reachable at {host}:{port}: {exc!r}") from exc
    writer.close()
    await writer.wait_closed()


def nats_bus_class() -> type[Any]:
    try:
        module = importlib.import_module("fogcoord.orchestration.bus.nats")
    except ModuleNotFoundError as exc:
        raise RuntimeError(f"NatsEventBus is not available: {exc}") from exc
    return cast(type[Any], module.NatsEventBus)


def new_nats_bus(url: str, prefix: str, config: OrchestrationConfig) -> EventBus:
    """The NATS bus as the application builds it from ``bus`` and ``orchestration.messaging``."""
    cls = nats_bus_class()
    from_config = getattr(cls, "from_config", None)
    if from_config is not None:
        bus_config = BusConfig(url=url, subject_prefix=prefix)
        return cast(EventBus, from_config(bus_config, config.messaging))
    return cast(EventBus, cls(url=url, subject_prefix=prefix, encoding=config.messaging.encoding))


class _Hop:
    def __init__(self) -> None:
        self.expected: object = None
        self.arrived: asyncio.Future[int] | None = None

    def land(self, key: object, now_ns: int) -> None:
        arrived = self.arrived
        if key == self.expected and arrived is not None and not arrived.done():
            arrived.set_result(now_ns)

    def expect(self, key: object) -> None:
        self.expected = key
        self.arrived = asyncio.get_running_loop().create_future()

    async def wait(self, timeout: float = DELIVERY_TIMEOUT_S) -> int:
        assert self.arrived is not None
        async with asyncio.timeout(timeout):
            return await self.arrived


async def run() -> list[Figure]:
    import nats

    url = nats_url()
    config = OrchestrationConfig()
    prefix = unique("bench")
    events = discovered_events(WARMUP + SAMPLES + READY_ATTEMPTS, target=GROUP)
    payloads = [
        json.dumps(e.to_wire(), separators=(",", ":")).encode() for e in events[: WARMUP + SAMPLES]
    ]

    await check_reachable(url)
    bus = new_nats_bus(url, prefix, config)
    nc: Any = None
    started = False
    try:
        await bus.start()
        started = True
        bus_hop = _Hop()

        async def handler(event: DeviceDiscoveredEvent) -> None:
            bus_hop.land(event.event_id, perf_counter_ns())

        await bus.subscribe(DeviceDiscoveredEvent, handler, name=f"{GROUP}-1", group=GROUP)

        nc = await nats.connect(
            url, name="fogcoord-bench-baseline", connect_timeout=2, allow_reconnect=False
        )
        raw_hop = _Hop()
        subject = f"{prefix}.baseline.{GROUP}"

        async def callback(msg: Any) -> None:
            now = perf_counter_ns()
            raw_hop.land(msg.data, now)

        await nc.subscribe(subject, queue=GROUP, cb=callback)
        await nc.flush()

        # The subscription may take a moment to reach the server: wait for a probe to arrive.
        for probe in events[WARMUP + SAMPLES :]:
            bus_hop.expect(probe.event_id)
            await bus.route(probe)
            try:
                await bus_hop.wait(0.2)
                break
            except TimeoutError:
                continue
        else:
            raise RuntimeError(f"no routed event reached the subscriber over {url}")

        async def through_bus(event: DeviceDiscoveredEvent) -> int:
            bus_hop.expect(event.event_id)
            started = perf_counter_ns()
            await bus.route(event)
            return await bus_hop.wait() - started

        async def through_nats(payload: bytes) -> int:
            raw_hop.expect(payload)
            started = perf_counter_ns()
            await nc.publish(subject, payload)
            return await raw_hop.wait() - started

        for event, payload in zip(events[:WARMUP], payloads[:WARMUP], strict=True):
            await through_bus(event)
            await through_nats(payload)
        bus_ns: list[int] = []
        raw_ns: list[int] = []
        block = SAMPLES // BLOCKS
        measured = events[WARMUP : WARMUP + SAMPLES]
        raw = payloads[WARMUP:]
        for start in range(0, SAMPLES, block):
            for event in measured[start : start + block]:
                bus_ns.append(await through_bus(event))
            for payload in raw[start : start + block]:
                raw_ns.append(await through_nats(payload))
    finally:
        if nc is not None:
            await nc.close()
        await bus.close()
        # The bus creates a JetStream stream per subject prefix: leave the server as it was.
        delete_stream = getattr(bus, "delete_stream", None)
        if started and delete_stream is not None:
            await delete_stream()

    return percentile_figures(
        "bus.nats_route_latency",
        [ns / 1e6 for ns in bus_ns],
        [ns / 1e6 for ns in raw_ns],
        UNIT,
        p99_target=P99_TARGET_MS,
    )
