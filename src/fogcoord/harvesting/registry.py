"""The device registry, kept as columns of numpy arrays.

One row per device; scoring, eligibility and selection over 100,000 devices are then a handful of
vectorised expressions instead of a Python loop. Strings (owner, region, platform) are interned
to small integer codes so they filter as arrays too. Rows of deregistered devices are reused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fogcoord.contracts.harvesting import DeviceCapability, NetworkType

NETWORKS: tuple[NetworkType, ...] = tuple(NetworkType)
_NET_CODE = {n: i for i, n in enumerate(NETWORKS)}

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
B = npt.NDArray[np.bool_]


class Interner:
    """Strings to dense integer codes and back."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.values: list[str] = []

    def code(self, value: str) -> int:
        found = self.codes.get(value)
        if found is None:
            found = self.codes[value] = len(self.values)
            self.values.append(value)
        return found

    def lookup(self, value: str) -> int | None:
        return self.codes.get(value)


@dataclass
class DeviceMeta:
    """What is not worth a column: identity and rarely read strings."""

    device_id: str
    owner: str
    public_key: str
    platform: str
    principal_id: str
    registered_at: float


class DeviceRegistry:
    COLUMNS = {
        "active": np.bool_,
        "cpu_cores": np.int32,
        "gflops": np.float32,
        "ram_mb": np.int32,
        "storage_gb": np.float32,
        "battery": np.float32,
        "charging": np.bool_,
        "thermal": np.float32,
        "network": np.int8,
        "bandwidth": np.float32,
        "region": np.int32,
        "owner": np.int32,
        "last_seen": np.float64,
        "verified": np.bool_,
        "online": np.bool_,
        "throttled": np.bool_,
        "battery_low": np.bool_,
        "trust": np.float32,
        "reliability": np.float32,
        "valid": np.float32,
        "invalid": np.float32,
        "reserved": np.bool_,
    }

    def __init__(self, capacity: int = 1024) -> None:
        self.size = 0
        self.capacity = capacity
        for name, dtype in self.COLUMNS.items():
            setattr(self, name, np.zeros(capacity, dtype=dtype))
        self.rows: dict[str, int] = {}
        self.ids: npt.NDArray[np.object_] = np.empty(capacity, dtype=object)
        self.meta: list[DeviceMeta | None] = []
        self.free: list[int] = []
        self.owners = Interner()
        self.regions = Interner()
        self.by_principal: dict[str, str] = {}
        # typed views (set by setattr above)
        self.active: B
        self.cpu_cores: I32
        self.gflops: F32
        self.ram_mb: I32
        self.storage_gb: F32
        self.battery: F32
        self.charging: B
        self.thermal: F32
        self.network: npt.NDArray[np.int8]
        self.bandwidth: F32
        self.region: I32
        self.owner: I32
        self.last_seen: F64
        self.verified: B
        self.online: B
        self.throttled: B
        self.battery_low: B
        self.trust: F32
        self.reliability: F32
        self.valid: F32
        self.invalid: F32
        self.reserved: B

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self.rows

    def _grow(self) -> None:
        new = self.capacity * 2
        for name in self.COLUMNS:
            old = getattr(self, name)
            arr = np.zeros(new, dtype=old.dtype)
            arr[: self.capacity] = old
            setattr(self, name, arr)
        ids = np.empty(new, dtype=object)
        ids[: self.capacity] = self.ids
        self.ids = ids
        self.capacity = new

    def row(self, device_id: str) -> int | None:
        return self.rows.get(device_id)

    def add(
        self,
        cap: DeviceCapability,
        *,
        principal_id: str,
        registered_at: float,
        trust: float,
        reliability: float = 1.0,
        last_seen: float = 0.0,
        verified: bool = False,
    ) -> int:
        if cap.device_id in self.rows:
            raise KeyError(cap.device_id)
        if self.free:
            r = self.free.pop()
        else:
            if self.size == self.capacity:
                self._grow()
            r = self.size
            self.size += 1
            self.meta.append(None)
        self.meta[r] = DeviceMeta(
            cap.device_id, cap.owner, cap.public_key, cap.platform, principal_id, registered_at
        )
        self.rows[cap.device_id] = r
        self.ids[r] = cap.device_id
        self.by_principal[principal_id] = cap.device_id
        self.active[r] = True
        self.cpu_cores[r] = cap.cpu_cores
        self.gflops[r] = cap.gflops
        self.ram_mb[r] = cap.ram_mb
        self.storage_gb[r] = cap.storage_gb
        self.network[r] = _NET_CODE[cap.network]
        self.bandwidth[r] = cap.bandwidth_mbps
        self.region[r] = self.regions.code(cap.region)
        self.owner[r] = self.owners.code(cap.owner)
        self.set_live(r, cap.battery_percent, cap.charging, cap.thermal_celsius)
        self.last_seen[r] = last_seen
        self.verified[r] = verified
        self.online[r] = verified
        self.throttled[r] = False
        self.battery_low[r] = False
        self.trust[r] = trust
        self.reliability[r] = reliability
        self.valid[r] = 0.0
        self.invalid[r] = 0.0
        self.reserved[r] = False
        return r

    def set_live(self, r: int, battery: float, charging: bool, thermal: float) -> None:
        self.battery[r] = battery
        self.charging[r] = charging
        self.thermal[r] = thermal

    def remove(self, device_id: str) -> None:
        r = self.rows.pop(device_id)
        meta = self.meta[r]
        if meta is not None:
            self.by_principal.pop(meta.principal_id, None)
        self.meta[r] = None
        self.ids[r] = None
        self.active[r] = False
        self.online[r] = False
        self.reserved[r] = False
        self.free.append(r)

    def capability(self, r: int) -> DeviceCapability:
        meta = self.meta[r]
        if meta is None:
            raise KeyError(r)
        return DeviceCapability.model_construct(
            device_id=meta.device_id,
            owner=meta.owner,
            cpu_cores=int(self.cpu_cores[r]),
            gflops=float(self.gflops[r]),
            ram_mb=int(self.ram_mb[r]),
            storage_gb=float(self.storage_gb[r]),
            battery_percent=float(self.battery[r]),
            charging=bool(self.charging[r]),
            thermal_celsius=float(self.thermal[r]),
            network=NETWORKS[int(self.network[r])],
            bandwidth_mbps=float(self.bandwidth[r]),
            platform=meta.platform,
            region=self.regions.values[int(self.region[r])],
            public_key=meta.public_key,
            last_seen=float(self.last_seen[r]),
        )

    def view(self, name: str) -> npt.NDArray[np.generic]:
        """Column ``name`` over the used rows."""
        arr: npt.NDArray[np.generic] = getattr(self, name)[: self.size]
        return arr

    def device_ids(self, rows: Iterable[int]) -> list[str]:
        out = []
        for r in rows:
            meta = self.meta[int(r)]
            if meta is not None:
                out.append(meta.device_id)
        return out

    def nbytes(self) -> int:
        return sum(getattr(self, n).nbytes for n in self.COLUMNS)


def network_code(network: NetworkType) -> int:
    return _NET_CODE[network]
