"""What an agent reports about its device: fixed capabilities once, live state every heartbeat.

:class:`DeviceSource` is the seam between the agent loop and the hardware: :class:`MachineDevice`
reads the real machine (:mod:`fogcoord.agent.probe`, :mod:`fogcoord.agent.speed`);
:class:`fogcoord.agent.simulated.SimulatedDevice` plays a phone, laptop or edge box.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fogcoord.agent import probe
from fogcoord.agent.identity import DeviceIdentity
from fogcoord.agent.speed import cached_speed
from fogcoord.api.schemas import DeviceRegistration, Heartbeat
from fogcoord.contracts.harvesting import NetworkType


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """The capabilities a device registers with (the live state comes with every heartbeat)."""

    cpu_cores: int
    gflops: float
    ram_mb: int
    storage_gb: float
    network: NetworkType = NetworkType.UNKNOWN
    bandwidth_mbps: float = 0.0
    platform: str = ""
    region: str = ""


class DeviceSource(Protocol):
    def spec(self) -> DeviceSpec:
        """Capabilities, read (or measured) once."""
        ...

    def reading(self) -> Heartbeat:
        """The live state now: battery, charging, temperature."""
        ...


def registration(identity: DeviceIdentity, spec: DeviceSpec, live: Heartbeat) -> DeviceRegistration:
    """The signed registration body for ``identity``'s device."""
    return DeviceRegistration(
        device_id=identity.device_id,
        cpu_cores=spec.cpu_cores,
        gflops=spec.gflops,
        ram_mb=spec.ram_mb,
        storage_gb=spec.storage_gb,
        battery_percent=live.battery_percent,
        charging=live.charging,
        thermal_celsius=live.thermal_celsius,
        network=spec.network,
        bandwidth_mbps=spec.bandwidth_mbps,
        platform=spec.platform,
        region=spec.region,
        public_key=identity.public_key,
        signature=identity.registration_signature(),
    )


class MachineDevice:
    """The machine the agent runs on."""

    def __init__(self, state_dir: Path, *, region: str = "", benchmark_size: int = 512) -> None:
        self.state_dir = Path(state_dir)
        self.region = region
        self.benchmark_size = benchmark_size
        self._spec: DeviceSpec | None = None

    def spec(self) -> DeviceSpec:
        if self._spec is None:
            info = probe.machine_info(self.state_dir)
            speed = cached_speed(self.state_dir, n=self.benchmark_size)
            self._spec = DeviceSpec(
                cpu_cores=info.cpu_cores,
                gflops=round(speed.gflops, 3),
                ram_mb=info.ram_mb,
                storage_gb=info.storage_gb,
                network=info.network,
                bandwidth_mbps=info.bandwidth_mbps,
                platform=info.platform,
                region=self.region,
            )
        return self._spec

    def reading(self) -> Heartbeat:
        live = probe.live_state()
        return Heartbeat(
            battery_percent=live.battery_percent,
            charging=live.charging,
            thermal_celsius=live.thermal_celsius,
        )
