"""Harvesting figures over 100,000 registered devices, through ``FogHarvestingService``.

The fleet (:mod:`benchmarks._fleet`) is written to a temporary SQLite store and loaded by the
service's own start-up path, as after a restart.

- ``harvesting.select_100k``: ``select_participants`` for 1,000 devices (median of runs);
  baseline: the same selection (limits, score, one per owner, weighted draw) as a pure-Python
  loop over the same devices, same run.
- ``harvesting.allocate_10k``: ``allocate_resources`` for 10,000 tasks x 3 replicas over 10,000
  selected devices (median).
- ``harvesting.discovery_cycle``: one discovery refresh (``scan``: TTL expiry and the online
  set) over the 100,000 devices (median).
- ``harvesting.rss_per_device``: resident memory added by loading the devices into the
  registry, per device (the store's page cache excluded by measuring the registry's process
  growth after start-up, with the database on disk).
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks._fleet import fleet, seed_store
from benchmarks.harness import Figure, Unit, log
from fogcoord.clock import SystemClock
from fogcoord.config import HarvestingConfig
from fogcoord.contracts.harvesting import ComputeWorkload, DeviceCapability, ResourceRequirements
from fogcoord.harvesting.service import FogHarvestingService
from fogcoord.storage.engine import create_engine

FIGURES = (
    "harvesting.select_100k",
    "harvesting.allocate_10k",
    "harvesting.discovery_cycle",
    "harvesting.rss_per_device",
)
UNITS: dict[str, Unit] = {
    "harvesting.select_100k": "ms",
    "harvesting.allocate_10k": "ms",
    "harvesting.discovery_cycle": "ms",
    "harvesting.rss_per_device": "KB",
}
TIMEOUT_S = 240.0
DEVICES = 100_000


def _python_select(
    devices: list[DeviceCapability], cfg: HarvestingConfig, count: int, seed: int
) -> list[str]:
    """The pure-Python baseline: the same rules, one device at a time."""
    sel = cfg.participant_selection
    rng = random.Random(seed)
    keyed: list[tuple[float, str, str]] = []
    for d in devices:
        if d.thermal_celsius >= sel.max_thermal_celsius:
            continue
        if not d.charging and d.battery_percent < sel.min_battery_percent:
            continue
        if sel.min_trust_score > 0.65 or d.ram_mb < sel.min_ram_mb:
            continue
        battery = 1.0 if d.charging else d.battery_percent / 100
        thermal = min(
            1.0,
            max(
                0.0, (sel.max_thermal_celsius - d.thermal_celsius) / (sel.max_thermal_celsius - 25)
            ),
        )
        ram = min(1.0, d.ram_mb / (2 * sel.min_ram_mb))
        score = (
            0.15 * battery
            + 0.10 * d.charging
            + 0.15 * thermal
            + 0.15 * ram
            + 0.25 * 0.65
            + 0.20 * 1.0
        )
        keyed.append((math.log(rng.random() or 1e-300) / max(score, 1e-9), d.owner, d.device_id))
    keyed.sort(reverse=True)
    seen: set[str] = set()
    out: list[str] = []
    for _, owner, device_id in keyed:
        if owner not in seen:
            seen.add(owner)
            out.append(device_id)
            if len(out) == count:
                break
    return out


async def run() -> list[Figure]:
    cfg = HarvestingConfig()
    with tempfile.TemporaryDirectory(prefix="fogcoord-bench-harvest-") as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'devices.db'}")
        now = SystemClock().time()
        devices = fleet(DEVICES)
        seed_store(engine, devices, now)
        gc.collect()
        proc = psutil.Process()
        before = proc.memory_info().rss
        svc = FogHarvestingService(cfg, lambda: engine)
        await svc.start()
        try:
            gc.collect()
            loaded = len(svc.registry)
            per_device_kb = (proc.memory_info().rss - before) / loaded / 1024
            log(
                f"harvesting: {loaded} devices loaded, registry arrays "
                f"{svc.registry.nbytes() / loaded:.0f} B/device"
            )

            def timed(samples: list[float], started: float) -> None:
                samples.append((time.perf_counter() - started) * 1000)

            select_ms: list[float] = []
            for i in range(7):
                t0 = time.perf_counter()
                picked = await svc.select_participants(ResourceRequirements(count=1000, seed=i))
                timed(select_ms, t0)
            assert len(picked) == 1000
            base_ms: list[float] = []
            for i in range(3):
                t0 = time.perf_counter()
                _python_select(devices, cfg, 1000, i)
                timed(base_ms, t0)
            participants = await svc.select_participants(
                ResourceRequirements(count=10_000, seed=99)
            )
            workload = ComputeWorkload(
                workload_id="bench",
                task_ids=tuple(f"task-{i:05d}" for i in range(10_000)),
                replication=3,
            )
            alloc_ms: list[float] = []
            for _ in range(5):
                t0 = time.perf_counter()
                plan = await svc.allocate_resources(participants, workload)
                timed(alloc_ms, t0)
            log(
                f"harvesting: plan assigned {len(plan.assignments)} tasks, "
                f"{len(plan.unassigned)} unassigned"
            )
            scan_ms: list[float] = []
            for _ in range(7):
                t0 = time.perf_counter()
                online = await svc.scan()
                timed(scan_ms, t0)
            log(f"harvesting: scan found {online} online")
        finally:
            await svc.stop()
            engine.dispose()
    select = statistics.median(select_ms)
    return [
        Figure(
            "harvesting.select_100k",
            select,
            "ms",
            baseline=statistics.median(base_ms),
            target=20.0,
            op="<",
        ),
        Figure("harvesting.allocate_10k", statistics.median(alloc_ms), "ms", target=50.0, op="<"),
        Figure("harvesting.discovery_cycle", statistics.median(scan_ms), "ms", target=50.0, op="<"),
        Figure("harvesting.rss_per_device", per_device_kb, "KB", target=5.0, op="<"),
    ]
