"""Realistic events for the bus figures: device discoveries routed to a service's queue group.

A fleet of devices with varied capabilities (the harvesting contract's ``DeviceCapability``);
each event carries one device's full capability record, about 600 bytes as JSON.
"""

from __future__ import annotations

import random
import time

from fogcoord.contracts.harvesting import DeviceCapability, DeviceDiscoveredEvent, NetworkType

REGIONS = ("eu-west", "eu-central", "us-east", "us-west", "ap-south", "sa-east")
PLATFORMS = ("android-14", "android-13", "ios-17", "linux-x86_64", "linux-aarch64", "macos-14")


def fleet(size: int, seed: int = 7) -> list[DeviceCapability]:
    rng = random.Random(seed)
    now = time.time()
    devices = []
    for i in range(size):
        devices.append(
            DeviceCapability(
                device_id=f"dev-{i:06d}-{rng.getrandbits(32):08x}",
                owner=f"user-{rng.randrange(size // 3 + 1):05d}",
                cpu_cores=rng.choice((2, 4, 6, 8, 12, 16)),
                gflops=round(rng.uniform(4.0, 250.0), 2),
                ram_mb=rng.choice((2048, 3072, 4096, 6144, 8192, 16384, 32768)),
                storage_gb=round(rng.uniform(8.0, 512.0), 1),
                battery_percent=round(rng.uniform(5.0, 100.0), 1),
                charging=rng.random() < 0.4,
                thermal_celsius=round(rng.uniform(24.0, 71.0), 1),
                network=rng.choice(list(NetworkType)),
                bandwidth_mbps=round(rng.uniform(1.0, 900.0), 1),
                platform=rng.choice(PLATFORMS),
                region=rng.choice(REGIONS),
                public_key=f"{rng.getrandbits(256):064x}",
                last_seen=now - rng.uniform(0.0, 120.0),
            )
        )
    return devices


def discovered_events(
    count: int, *, target: str, devices: int = 1000, seed: int = 7
) -> list[DeviceDiscoveredEvent]:
    """``count`` distinct events (fresh ``event_id`` each) over a fleet of ``devices``."""
    pool = fleet(devices, seed)
    now = time.time()
    return [
        DeviceDiscoveredEvent(
            source="harvesting",
            target=target,
            timestamp=now,
            device_id=cap.device_id,
            owner=cap.owner,
            capabilities=cap,
        )
        for cap in (pool[i % devices] for i in range(count))
    ]
