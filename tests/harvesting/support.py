"""Shared scaffolding of the harvesting tests: a service on SQLite, devices, an event collector."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from fogcoord.clock import FakeClock
from fogcoord.config import HarvestingConfig
from fogcoord.contracts.events import ServiceEvent
from fogcoord.contracts.harvesting import DeviceCapability, DeviceHealth, DeviceStateChangedEvent
from fogcoord.harvesting.service import FogHarvestingService
from fogcoord.storage.engine import create_engine

QUIET = {"scan_interval_seconds": 1e9, "state_flush_seconds": 1e9}
"""Discovery settings under which the background loops never fire: the test drives scans."""


@dataclass
class Collector:
    """The ``publish`` callable of the service: keeps every event."""

    events: list[ServiceEvent] = field(default_factory=list)

    async def __call__(self, event: ServiceEvent) -> None:
        self.events.append(event)

    def changes(self, device_id: str | None = None) -> list[tuple[str, str, str]]:
        """``(device, previous, state)`` of every state change, oldest first."""
        return [
            (e.device_id, e.previous, e.state)
            for e in self.events
            if isinstance(e, DeviceStateChangedEvent)
            and (device_id is None or e.device_id == device_id)
        ]

    def of(self, kind: type[ServiceEvent]) -> list[ServiceEvent]:
        return [e for e in self.events if isinstance(e, kind)]


@dataclass
class Harness:
    svc: FogHarvestingService
    clock: FakeClock
    events: Collector
    engine: Engine

    async def add(self, device_id: str, owner: str = "alice", **state: Any) -> DeviceCapability:
        """Register a device (not yet heartbeating)."""
        return await self.svc.register_device(
            cap(device_id, owner, **state), principal_id=principal_of(device_id)
        )

    async def beat(
        self,
        device_id: str,
        battery: float = 80.0,
        charging: bool = False,
        thermal: float = 30.0,
    ) -> DeviceHealth:
        return await self.svc.heartbeat(
            device_id, battery_percent=battery, charging=charging, thermal_celsius=thermal
        )

    async def online(self, device_id: str, owner: str = "alice", **state: Any) -> DeviceHealth:
        """Register a device and heartbeat it with its registration state."""
        c = await self.add(device_id, owner, **state)
        return await self.beat(device_id, c.battery_percent, c.charging, c.thermal_celsius)


def principal_of(device_id: str) -> str:
    return f"dev_{device_id}"


def cap(device_id: str, owner: str = "alice", **over: Any) -> DeviceCapability:
    data: dict[str, Any] = {
        "device_id": device_id,
        "owner": owner,
        "cpu_cores": 4,
        "gflops": 10.0,
        "ram_mb": 4096,
        "storage_gb": 32.0,
        "battery_percent": 80.0,
        "charging": False,
        "thermal_celsius": 30.0,
        "network": "wifi",
        "region": "eu",
    }
    data.update(over)
    return DeviceCapability.model_validate(data)


def config(**blocks: dict[str, Any]) -> HarvestingConfig:
    """A harvesting configuration; each keyword is one block, e.g. ``trust={...}``."""
    return HarvestingConfig.model_validate(blocks)


@asynccontextmanager
async def harvesting(
    db: Path,
    cfg: HarvestingConfig | None = None,
    *,
    clock: FakeClock | None = None,
    synchronous: str = "FULL",
) -> AsyncIterator[Harness]:
    """A started service over a SQLite file, a fake clock and an event collector."""
    engine = create_engine(f"sqlite:///{db}", synchronous=synchronous)
    fake = clock if clock is not None else FakeClock()
    events = Collector()
    svc = FogHarvestingService(
        cfg if cfg is not None else HarvestingConfig(),
        lambda: engine,
        clock=fake,
        publish=events,
    )
    try:
        await svc.start()
        try:
            yield Harness(svc, fake, events, engine)
        finally:
            await svc.stop()
    finally:
        engine.dispose()


async def settle(rounds: int = 5) -> None:
    """Let tasks the service spawned (event publication) run."""
    for _ in range(rounds):
        await asyncio.sleep(0)
