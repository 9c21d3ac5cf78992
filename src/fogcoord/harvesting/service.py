"""FogHarvestingService: the device registry, suitability, selection, allocation, bursts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from fogcoord.clock import Clock
from fogcoord.config import HarvestingConfig
from fogcoord.contracts.errors import Conflict, NotFound, ValidationFailed
from fogcoord.contracts.harvesting import (
    AllocationPlan,
    BurstRequest,
    ComputeWorkload,
    DeviceCapability,
    DeviceDiscoveredEvent,
    DeviceHealth,
    DeviceHealthState,
    DeviceResultVerified,
    DeviceStanding,
    DeviceStateChangedEvent,
    NetworkType,
    ResourceRequirements,
    StandingColumns,
    SuitabilityScore,
)
from fogcoord.contracts.lifecycle import HealthStatus
from fogcoord.harvesting import allocation, selection, suitability
from fogcoord.harvesting.bursts import BurstBook
from fogcoord.harvesting.registry import DeviceRegistry
from fogcoord.harvesting.store import DeviceRecord, SqlDeviceStore
from fogcoord.lifecycle import Publish, ServiceBase

NAME = "harvesting"
log = logging.getLogger("fogcoord.harvesting")
_LIVE_COLUMNS = (
    "battery",
    "charging",
    "thermal",
    "last_seen",
    "verified",
    "trust",
    "reliability",
    "valid",
    "invalid",
)
"""Registry columns in the order of ``store.LIVE_FIELDS``."""


def _state_rows(columns: list[Any], ids: Any) -> list[tuple[Any, ...]]:
    """Column snapshots as ``(*LIVE_FIELDS, device_id)`` tuples, with plain Python values."""
    return list(zip(*(c.tolist() for c in columns), ids.tolist(), strict=True))


class FogHarvestingService(ServiceBase):
    service_type = NAME

    def __init__(
        self,
        config: HarvestingConfig,
        engine: Callable[[], Engine],
        *,
        clock: Clock | None = None,
        publish: Publish | None = None,
    ) -> None:
        super().__init__(NAME, dependencies=("storage",), clock=clock, publish=publish)
        self.config = config
        self.selection_config = config.participant_selection
        self._engine = engine
        self.registry = DeviceRegistry()
        self.bursts = BurstBook(
            self.clock,
            config.resource_allocation.max_concurrent_bursts,
            config.resource_allocation.burst_timeout_minutes,
        )
        self._store: SqlDeviceStore | None = None
        self._dirty: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._discovered: list[int] = []
        self.last_scan: float | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def store(self) -> SqlDeviceStore:
        if self._store is None:
            raise RuntimeError("harvesting is not started")
        return self._store

    async def on_start(self) -> None:
        self._store = await asyncio.to_thread(SqlDeviceStore, self._engine())
        for rec in await asyncio.to_thread(self._store.load):
            self._load(rec)
        self._tasks = [
            self.every(self.config.device_discovery.scan_interval_seconds, self.scan),
            self.every(self.config.device_discovery.state_flush_seconds, self.flush),
        ]
        await self.scan()

    async def on_stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.flush()

    async def check_health(self) -> HealthStatus:
        reg = self.registry
        online = int(reg.online[: reg.size].sum())
        return HealthStatus.passing(f"{len(reg)} devices registered, {online} online")

    # --- registration and heartbeats (the agent protocol) ----------------------------------------

    async def register_device(
        self, cap: DeviceCapability, *, principal_id: str
    ) -> DeviceCapability:
        """Add a device; ``cap.owner`` must be the authenticated principal that registers it."""
        if cap.device_id in self.registry:
            raise Conflict(f"device {cap.device_id!r} is already registered", device=cap.device_id)
        now = self.clock.time()
        record = DeviceRecord(
            device_id=cap.device_id,
            owner=cap.owner,
            principal_id=principal_id,
            public_key=cap.public_key,
            platform=cap.platform,
            region=cap.region,
            network=cap.network.value,
            cpu_cores=cap.cpu_cores,
            gflops=cap.gflops,
            ram_mb=cap.ram_mb,
            storage_gb=cap.storage_gb,
            bandwidth_mbps=cap.bandwidth_mbps,
            battery=cap.battery_percent,
            charging=cap.charging,
            thermal=cap.thermal_celsius,
            registered_at=now,
            last_seen=0.0,
            verified=False,
            trust=self.config.trust.initial_trust,
            reliability=1.0,
            valid=0.0,
            invalid=0.0,
        )
        await asyncio.to_thread(self.store.insert, record)
        r = self._load(record)
        self.emit(
            DeviceDiscoveredEvent(
                source=NAME,
                timestamp=now,
                device_id=cap.device_id,
                owner=cap.owner,
                capabilities=self.registry.capability(r),
            )
        )
        return self.registry.capability(r)

    def _load(self, rec: DeviceRecord) -> int:
        reg = self.registry
        cap = DeviceCapability.model_construct(
            device_id=rec.device_id,
            owner=rec.owner,
            cpu_cores=rec.cpu_cores,
            gflops=rec.gflops,
            ram_mb=rec.ram_mb,
            storage_gb=rec.storage_gb,
            battery_percent=rec.battery,
            charging=rec.charging,
            thermal_celsius=rec.thermal,
            network=NetworkType(rec.network),
            bandwidth_mbps=rec.bandwidth_mbps,
            platform=rec.platform,
            region=rec.region,
            public_key=rec.public_key,
            last_seen=rec.last_seen,
        )
        r = reg.add(
            cap,
            principal_id=rec.principal_id,
            registered_at=rec.registered_at,
            trust=rec.trust,
            reliability=rec.reliability,
            last_seen=rec.last_seen,
            verified=rec.verified,
        )
        reg.valid[r] = rec.valid
        reg.invalid[r] = rec.invalid
        # online is re-derived from last_seen by the next scan; a restart must not hide devices
        reg.online[r] = rec.verified and (
            self.clock.time() - rec.last_seen <= self.config.device_discovery.capability_cache_ttl
        )
        suitability.update_hysteresis(reg, r, self.selection_config)
        return r

    def device_of(self, principal_id: str) -> str | None:
        return self.registry.by_principal.get(principal_id)

    def _row(self, device_id: str) -> int:
        r = self.registry.row(device_id)
        if r is None:
            raise NotFound("device", device_id)
        return r

    async def heartbeat(
        self, device_id: str, *, battery_percent: float, charging: bool, thermal_celsius: float
    ) -> DeviceHealth:
        """Record a device's live state; it is online (and verified) from now on."""
        if not (0 <= battery_percent <= 100):
            raise ValidationFailed("battery_percent", "must be 0 to 100")
        if not (-40 <= thermal_celsius <= 150):
            raise ValidationFailed("thermal_celsius", "must be -40 to 150")
        reg = self.registry
        r = self._row(device_id)
        reg.set_live(r, battery_percent, charging, thermal_celsius)
        reg.last_seen[r] = self.clock.time()
        was_online, was_verified = bool(reg.online[r]), bool(reg.verified[r])
        reg.verified[r] = True
        reg.online[r] = True
        suitability.update_hysteresis(reg, r, self.selection_config)
        self._dirty.add(r)
        if not was_online:
            previous = "offline" if was_verified else "unverified"
            self.emit(
                DeviceStateChangedEvent(
                    source=NAME, device_id=device_id, previous=previous, state="online"
                )
            )
        return self._health(r)

    async def deregister_device(self, device_id: str) -> None:
        self._row(device_id)
        await asyncio.to_thread(self.store.delete, device_id)
        r = self.registry.rows[device_id]
        self._dirty.discard(r)
        self.registry.remove(device_id)
        self.emit(
            DeviceStateChangedEvent(
                source=NAME, device_id=device_id, previous="registered", state="deregistered"
            )
        )

    def list_devices(
        self,
        *,
        owner: str | None = None,
        region: str | None = None,
        online: bool | None = None,
        charging: bool | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[DeviceCapability]:
        reg = self.registry
        n = reg.size
        mask = reg.active[:n].copy()
        if owner is not None:
            code = reg.owners.lookup(owner)
            mask &= reg.owner[:n] == (code if code is not None else -1)
        if region is not None:
            code = reg.regions.lookup(region)
            mask &= reg.region[:n] == (code if code is not None else -1)
        if online is not None:
            mask &= reg.online[:n] == online
        if charging is not None:
            mask &= reg.charging[:n] == charging
        rows = np.flatnonzero(mask)[offset : offset + limit]
        return [reg.capability(int(r)) for r in rows]

    # --- the seed contract ----------------------------------------------------------------------

    async def discover_devices(self) -> list[DeviceCapability]:
        """Devices seen within ``capability_cache_ttl``, as of the last scan."""
        reg = self.registry
        return [reg.capability(r) for r in self._discovered if reg.online[r] and reg.active[r]]

    async def assess_device_suitability(self, device_id: str) -> SuitabilityScore:
        r = self._row(device_id)
        reg, cfg = self.registry, self.selection_config
        rows = np.array([r], dtype=np.intp)
        parts = {k: float(v[0]) for k, v in suitability.components(reg, cfg, rows).items()}
        score = float(suitability.scores(reg, cfg, rows)[0])
        why = suitability.reasons(reg, r, cfg)
        return SuitabilityScore(
            device_id=device_id,
            score=min(1.0, max(0.0, score)),
            eligible=not why,
            components=parts,
            reasons=tuple(why),
        )

    async def select_participants(self, requirements: ResourceRequirements) -> list[str]:
        # a burst ends on time, not at the next scan: free its devices before choosing
        self._release(self.bursts.expired())
        return selection.select(self.registry, self.selection_config, requirements)

    async def allocate_resources(
        self, participants: list[str], workload: ComputeWorkload
    ) -> AllocationPlan:
        unknown = [p for p in participants if p not in self.registry]
        if unknown:
            raise NotFound("device", unknown[0])
        return allocation.plan(self.registry, participants, workload)

    async def coordinate_burst(self, burst_request: BurstRequest) -> str:
        self._release(self.bursts.expired())
        self.bursts.check_room()
        req = burst_request.requirements or ResourceRequirements(count=burst_request.devices)
        if req.count != burst_request.devices:
            req = req.model_copy(update={"count": burst_request.devices})
        devices = selection.select(self.registry, self.selection_config, req)
        burst = self.bursts.open(burst_request.requester, devices, burst_request.duration_minutes)
        for d in devices:
            self.registry.reserved[self.registry.rows[d]] = True
        return burst.burst_id

    def release_burst(self, burst_id: str) -> None:
        self._release([self.bursts.close(burst_id)])

    def _release(self, bursts: list[Any]) -> None:
        reg = self.registry
        for burst in bursts:
            for d in burst.devices:
                r = reg.row(d)
                if r is not None:
                    reg.reserved[r] = False

    async def monitor_device_health(self, device_id: str) -> DeviceHealth:
        return self._health(self._row(device_id))

    async def device_standing(self, device_ids: list[str]) -> dict[str, DeviceStanding]:
        reg = self.registry
        rows_of = reg.rows
        found = [(d, r) for d in device_ids if (r := rows_of.get(d)) is not None]
        if not found:
            return {}
        rows = np.fromiter((r for _, r in found), dtype=np.int64, count=len(found))
        mask = suitability.eligible_mask(reg, self.selection_config)
        eligible = mask[rows].tolist()
        trust = reg.trust[rows].tolist()
        meta = reg.meta
        out: dict[str, DeviceStanding] = {}
        for i, (d, r) in enumerate(found):
            m = meta[r]
            out[d] = DeviceStanding(
                d,
                eligible[i],
                m.owner if m is not None else "",
                trust[i],
                m.public_key if m is not None else "",
            )
        return out

    async def standing_columns(
        self, device_ids: list[str], *, exclude_owner: str | None = None, owners: bool = True
    ) -> StandingColumns:
        reg = self.registry
        get = reg.rows.get
        rows = np.fromiter((get(d, -1) for d in device_ids), dtype=np.int64, count=len(device_ids))
        known = rows >= 0
        safe = np.where(known, rows, 0)
        mask = suitability.eligible_mask(reg, self.selection_config)
        eligible = mask[safe] & known if rows.size else np.zeros(0, dtype=bool)
        if exclude_owner is not None and rows.size:
            code = reg.owners.lookup(exclude_owner)
            if code is not None:
                eligible &= reg.owner[safe] != code
        trust = reg.trust[safe].astype(np.float64) if rows.size else np.zeros(0)
        names: list[str] = []
        if owners:
            meta = reg.meta
            names = [
                m.owner if r >= 0 and (m := meta[r]) is not None else "" for r in rows.tolist()
            ]
        return StandingColumns(known, eligible, names, trust)

    async def count_eligible(self) -> int:
        return int(suitability.eligible_mask(self.registry, self.selection_config).sum())

    async def check_eligibility(self, device_ids: list[str]) -> dict[str, bool]:
        reg = self.registry
        mask = suitability.eligible_mask(reg, self.selection_config)
        out: dict[str, bool] = {}
        for d in device_ids:
            r = reg.row(d)
            out[d] = bool(r is not None and mask[r])
        return out

    # --- trust and reliability ----------------------------------------------------------------

    async def record_result(self, device_id: str, valid: bool) -> None:
        """Move trust and reliability with one verified (or refuted) result."""
        reg, t = self.registry, self.config.trust
        r = self._row(device_id)
        decay = np.float32(t.reliability_decay)
        reg.valid[r] = reg.valid[r] * decay + (1.0 if valid else 0.0)
        reg.invalid[r] = reg.invalid[r] * decay + (0.0 if valid else 1.0)
        reg.reliability[r] = reg.valid[r] / max(reg.valid[r] + reg.invalid[r], 1e-9)
        if valid:
            reg.trust[r] = reg.trust[r] + (1.0 - reg.trust[r]) * t.agreement_gain
        else:
            reg.trust[r] = reg.trust[r] * t.disagreement_factor
        self._dirty.add(r)

    async def on_result_verified(self, event: DeviceResultVerified) -> None:
        """Bus handler: verification in another service judged one of a device's results."""
        if event.device_id in self.registry:
            await self.record_result(event.device_id, event.valid)

    # --- background work ------------------------------------------------------------------------

    async def scan(self) -> int:
        """One discovery cycle: TTL expiry (vectorised), burst expiry; returns devices online."""
        reg = self.registry
        n = reg.size
        now = self.clock.time()
        ttl = self.config.device_discovery.capability_cache_ttl
        stale = reg.active[:n] & reg.online[:n] & (now - reg.last_seen[:n] > ttl)
        for r in np.flatnonzero(stale).tolist():
            reg.online[r] = False
            meta = reg.meta[r]
            if meta is not None:
                self.emit(
                    DeviceStateChangedEvent(
                        source=NAME, device_id=meta.device_id, previous="online", state="offline"
                    )
                )
        self._release(self.bursts.expired())
        self._discovered = np.flatnonzero(reg.active[:n] & reg.online[:n]).tolist()
        self.last_scan = now
        return len(self._discovered)

    async def flush(self) -> int:
        """Write the live state of devices that changed since the last flush.

        The changed rows' columns are copied in one vectorised step on the event loop; turning
        them into database rows and writing them happens in a worker thread, so a flush of many
        thousands of devices does not stall heartbeat handling.
        """
        if not self._dirty or self._store is None:
            return 0
        dirty, self._dirty = self._dirty, set()
        reg = self.registry
        rows = np.fromiter(dirty, dtype=np.intp, count=len(dirty))
        rows = rows[reg.active[rows]]
        snapshot = [getattr(reg, column)[rows].copy() for column in _LIVE_COLUMNS]
        ids = reg.ids[rows].copy()
        try:
            await asyncio.to_thread(self._write_state, self._store, snapshot, ids)
        except Exception:
            self._dirty.update(dirty)
            raise
        return int(rows.size)

    @staticmethod
    def _write_state(store: SqlDeviceStore, snapshot: list[Any], ids: Any) -> None:
        store.update_state(_state_rows(snapshot, ids))

    def _health(self, r: int) -> DeviceHealth:
        reg, cfg = self.registry, self.selection_config
        meta = reg.meta[r]
        assert meta is not None
        why = suitability.reasons(reg, r, cfg)
        if not reg.verified[r]:
            state = DeviceHealthState.UNVERIFIED
        elif not reg.online[r]:
            state = DeviceHealthState.CRITICAL
        elif why:
            state = DeviceHealthState.WARNING
        else:
            state = DeviceHealthState.PASSING
        since = self.clock.time() - float(reg.last_seen[r]) if reg.verified[r] else 0.0
        return DeviceHealth(
            device_id=meta.device_id,
            state=state,
            online=bool(reg.online[r]),
            last_seen=float(reg.last_seen[r]),
            seconds_since_heartbeat=max(0.0, since),
            trust=float(reg.trust[r]),
            reliability=float(reg.reliability[r]),
            reasons=tuple(why),
        )
