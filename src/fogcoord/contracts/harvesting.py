"""Harvesting contract: devices, suitability, selection, allocation, bursts, device health."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from fogcoord.contracts.events import ServiceEvent


class NetworkType(StrEnum):
    WIFI = "wifi"
    ETHERNET = "ethernet"
    CELLULAR = "cellular"
    UNKNOWN = "unknown"


class DeviceCapability(BaseModel):
    """What a device offers and its live state, as last reported."""

    model_config = ConfigDict(frozen=True)

    device_id: str
    owner: str = Field(description="principal that registered the device; its wallet is paid")
    cpu_cores: int = Field(ge=1, le=1024)
    gflops: float = Field(gt=0, description="measured compute speed, GFLOP per second")
    ram_mb: int = Field(ge=1)
    storage_gb: float = Field(ge=0)
    battery_percent: float = Field(ge=0, le=100)
    charging: bool
    thermal_celsius: float = Field(ge=-40, le=150)
    network: NetworkType = NetworkType.UNKNOWN
    bandwidth_mbps: float = Field(ge=0, default=0.0)
    platform: str = ""
    region: str = ""
    public_key: str = Field(default="", description="Ed25519 public key, hex")
    last_seen: float = 0.0


class SuitabilityScore(BaseModel):
    model_config = ConfigDict(frozen=True)

    device_id: str
    score: float = Field(ge=0, le=1)
    eligible: bool
    components: dict[str, float] = Field(default_factory=dict)
    reasons: tuple[str, ...] = ()


class ResourceRequirements(BaseModel):
    model_config = ConfigDict(frozen=True)

    count: int = Field(ge=1)
    min_ram_mb: int | None = Field(default=None, ge=0)
    min_gflops: float | None = Field(default=None, ge=0)
    regions: tuple[str, ...] = ()
    networks: tuple[NetworkType, ...] = ()
    exclude_owners: tuple[str, ...] = ()
    seed: int | None = None


class ComputeWorkload(BaseModel):
    model_config = ConfigDict(frozen=True)

    workload_id: str
    task_ids: tuple[str, ...]
    replication: int = Field(default=1, ge=1, le=16)
    gflop_per_task: float = Field(default=0.0, ge=0)
    ram_mb_per_task: int = Field(default=0, ge=0)


class AllocationPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    workload_id: str
    assignments: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="task id -> device ids, one per replica"
    )
    unassigned: tuple[str, ...] = ()


class BurstRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    requester: str
    devices: int = Field(ge=1)
    duration_minutes: float | None = Field(default=None, gt=0)
    requirements: ResourceRequirements | None = None


class DeviceHealthState(StrEnum):
    UNVERIFIED = "unverified"
    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"


class DeviceHealth(BaseModel):
    model_config = ConfigDict(frozen=True)

    device_id: str
    state: DeviceHealthState
    online: bool
    last_seen: float
    seconds_since_heartbeat: float
    trust: float
    reliability: float
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceStanding:
    """What a market needs to know of a device at one instant: may it work, who is paid, trust.

    A plain dataclass: settlement asks for thousands at once and validation would dominate.
    """

    device_id: str
    eligible: bool
    owner: str = ""
    trust: float = 0.0
    public_key: str = ""
    """Ed25519 public key, hex: what the device's signed work receipts verify against."""


@dataclass(frozen=True, slots=True)
class StandingColumns:
    """:class:`DeviceStanding` of many devices, column-wise, in the order asked for.

    What a settlement over thousands of asks reads: numpy columns, no object per device.
    """

    known: npt.NDArray[np.bool_]
    eligible: npt.NDArray[np.bool_]
    owner: list[str]
    """Empty when not asked for."""
    trust: npt.NDArray[np.float64]


class DeviceDiscoveredEvent(ServiceEvent):
    device_id: str
    owner: str
    capabilities: DeviceCapability


class DeviceStateChangedEvent(ServiceEvent):
    device_id: str
    previous: str
    state: str


class DeviceResultVerified(ServiceEvent):
    """Verification judged one of a device's results; trust and reliability follow it."""

    device_id: str
    task_id: str
    valid: bool


class HarvestingProtocol(Protocol):
    async def discover_devices(self) -> list[DeviceCapability]: ...

    async def assess_device_suitability(self, device_id: str) -> SuitabilityScore: ...

    async def select_participants(self, requirements: ResourceRequirements) -> list[str]: ...

    async def allocate_resources(
        self, participants: list[str], workload: ComputeWorkload
    ) -> AllocationPlan: ...

    async def coordinate_burst(self, burst_request: BurstRequest) -> str: ...

    async def monitor_device_health(self, device_id: str) -> DeviceHealth: ...

    async def device_standing(self, device_ids: list[str]) -> dict[str, DeviceStanding]:
        """Eligibility, owner and trust of many devices in one call (unknown ids are absent)."""
        ...

    async def standing_columns(
        self, device_ids: list[str], *, exclude_owner: str | None = None, owners: bool = True
    ) -> StandingColumns:
        """:meth:`device_standing` column-wise, aligned with ``device_ids``; devices of
        ``exclude_owner`` count as not eligible; ``owners=False`` leaves the owner list empty."""
        ...

    async def count_eligible(self) -> int:
        """How many devices could take work right now: the market's supply."""
        ...

    async def check_eligibility(self, device_ids: list[str]) -> dict[str, bool]:
        """One answer per device, in one call (the marketplace uses it at settlement)."""
        ...
