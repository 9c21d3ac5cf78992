"""A realistic registered fleet for the harvesting figures, loaded straight into the registry.

100,000 devices: phones, laptops and edge boxes with the spread of cores, RAM and speed seen in
volunteer-computing fleets, about 40 % charging, batteries and temperatures spread over their
ranges, three devices per owner on average, five regions, and every device seen recently.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy.engine import Engine

from fogcoord.contracts.harvesting import DeviceCapability, NetworkType
from fogcoord.harvesting.store import SqlDeviceStore, devices_t

REGIONS = ("eu-west", "eu-north", "us-east", "us-west", "asia-east")
NETWORKS = (NetworkType.WIFI, NetworkType.ETHERNET, NetworkType.CELLULAR)


def fleet(n: int, seed: int = 42) -> list[DeviceCapability]:
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])  # phone, laptop, edge box
    cores = np.choose(
        kind, [rng.choice([4, 6, 8], n), rng.choice([4, 8, 12, 16], n), rng.choice([2, 4], n)]
    )
    ram = np.choose(
        kind,
        [
            rng.choice([2048, 3072, 4096, 6144, 8192], n),
            rng.choice([8192, 16384, 32768], n),
            rng.choice([1024, 2048, 4096], n),
        ],
    )
    gflops = np.choose(
        kind, [rng.uniform(5, 40, n), rng.uniform(40, 200, n), rng.uniform(2, 15, n)]
    )
    charging = rng.random(n) < 0.4
    battery = np.where(charging, rng.uniform(20, 100, n), rng.uniform(5, 100, n))
    thermal = rng.normal(34, 5, n).clip(18, 60)
    owners = rng.integers(0, max(1, n // 3), n)
    return [
        DeviceCapability.model_construct(
            device_id=f"dev-{i:06d}",
            owner=f"owner-{int(owners[i]):06d}",
            cpu_cores=int(cores[i]),
            gflops=float(gflops[i]),
            ram_mb=int(ram[i]),
            storage_gb=64.0,
            battery_percent=float(battery[i]),
            charging=bool(charging[i]),
            thermal_celsius=float(thermal[i]),
            network=NETWORKS[i % 3],
            bandwidth_mbps=50.0,
            platform=("android", "linux", "linux-arm")[int(kind[i])],
            region=REGIONS[i % len(REGIONS)],
            public_key="ab" * 32,
            last_seen=0.0,
        )
        for i in range(n)
    ]


def seed_store(engine: Engine, devices: list[DeviceCapability], now: float) -> None:
    """Write the fleet as registered devices, as a coordinator that ran before would have."""
    store = SqlDeviceStore(engine)
    rows = [
        {
            "device_id": c.device_id,
            "owner": c.owner,
            "principal_id": f"p-{c.device_id}",
            "public_key": c.public_key,
            "platform": c.platform,
            "region": c.region,
            "network": c.network.value,
            "cpu_cores": c.cpu_cores,
            "gflops": c.gflops,
            "ram_mb": c.ram_mb,
            "storage_gb": c.storage_gb,
            "bandwidth_mbps": c.bandwidth_mbps,
            "battery": c.battery_percent,
            "charging": c.charging,
            "thermal": c.thermal_celsius,
            "registered_at": now,
            "last_seen": now,
            "verified": True,
            "trust": 0.65,
            "reliability": 1.0,
            "valid": 0.0,
            "invalid": 0.0,
        }
        for c in devices
    ]
    with store.engine.begin() as conn:
        conn.execute(devices_t.insert(), rows)
