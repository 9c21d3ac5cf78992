"""``stats.collect_cycle``: one metrics collection on a busy coordinator.

One ``Coordinator`` as ``fogcoord serve`` builds it (the orchestrator and every service, the stats
service subscribed to every bus event), on a fresh SQLite file in a temporary directory with the
production settings (WAL, ``synchronous=FULL``); the only configuration change is a large opening
grant (1,000,000 tokens, as in the ledger figures) so the requester can hold the escrows below.
The garbage collector is tuned as ``fogcoord serve`` tunes it after start-up.

The state a collection reads, built before timing:

- 10,000 devices of the realistic fleet of :mod:`benchmarks._fleet`, registered (written to the
  store before start-up, as after a restart), each heartbeating its own battery, charging and
  temperature through ``FogHarvestingService.heartbeat``;
- 20 compute jobs of 500 tasks each (the ``primes`` example), submitted through
  ``JobRunner.submit``: 10,000 tasks whose auctions are open (no agent is connected to ask);
- 10 open auctions of 100 slots holding 50 asks each from eligible devices, and 5 auctions of 10
  slots that settled themselves at their 11th ask (escrow captured, a clearing price set);
- 5 alert rules over the collected series (evaluated on every collection).

**The value**: the median over 50 cycles of ``await coord.stats.collect_metrics()`` -- the
probe (:func:`fogcoord.figures.gather`), the process and host figures from psutil, the append of
every figure to the series store (in a worker thread), the alert evaluation, the notifications
due and the live listeners. 3 warm-up cycles go first; cycles are 20 ms apart so the bus and the
stats service's flush loop run between them as they would between real collections (30 s
apart). The p95 is logged, and so is the one cycle in 120 that seals every series' head into a
compressed chunk (120 samples a chunk: once an hour at the default 30 s interval), measured by
collecting on until the first seal.

**Baseline**, same run, interleaved with the cycles: ``await figures.gather(coord)`` alone -- the
figures without storing, alerting or notifying.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import random
import statistics
import tempfile
from decimal import Decimal
from pathlib import Path
from time import perf_counter

from benchmarks._fleet import fleet, seed_store
from benchmarks._ledger import ledger_config
from benchmarks.harness import Figure, Unit, log, percentile
from benchmarks.market import REQUESTER, grid_prices, open_auction, place, quiet
from fogcoord import figures
from fogcoord.compute.examples import load_example, primes_input
from fogcoord.config import FogConfig, ServerConfig
from fogcoord.contracts.harvesting import DeviceCapability
from fogcoord.contracts.jobs import JobSubmission
from fogcoord.contracts.marketplace import ResourceSpec
from fogcoord.contracts.stats import AlertConfig, Comparison
from fogcoord.coordinator import Coordinator
from fogcoord.serve import tune_gc
from fogcoord.storage.engine import create_engine

FIGURES = ("stats.collect_cycle",)
UNIT: Unit = "ms"
TIMEOUT_S = 300.0

DEVICES = 10_000
JOBS = 20
TASKS_PER_JOB = 500
OPEN_AUCTIONS = 10
OPEN_SLOTS = 100
OPEN_ASKS = 50
SETTLED_AUCTIONS = 5
SETTLED_SLOTS = 10
WARMUP = 3
CYCLES = 50
GAP_S = 0.02
TARGET_MS = 50.0

RULES = (
    AlertConfig(name="fleet_low", series="devices.online", comparison=Comparison.LT, threshold=100),
    AlertConfig(name="cpu_high", series="host.cpu_percent", comparison=Comparison.GT, threshold=95),
    AlertConfig(
        name="slow_calls",
        series="services.max_latency_ms",
        comparison=Comparison.GT,
        threshold=1000,
        for_seconds=60,
    ),
    AlertConfig(
        name="dead_letters", series="bus.dead_letters", comparison=Comparison.GT, threshold=0
    ),
    AlertConfig(name="rss_high", series="process.rss_mb", comparison=Comparison.GT, threshold=4096),
)


async def run() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="fogcoord-bench-stats-") as tmp:
        config = FogConfig(server=ServerConfig(data_dir=Path(tmp)), tokenomics=ledger_config())
        engine = create_engine(config.database_url())
        capabilities = fleet(DEVICES)
        seed_store(engine, capabilities, 0.0)
        engine.dispose()
        thresholds = gc.get_threshold()
        try:
            async with Coordinator(config) as coordinator:
                tune_gc()  # as ``fogcoord serve`` does once the coordinator has started
                await populate(coordinator, capabilities)
                return [await measure(coordinator)]
        finally:
            gc.unfreeze()
            gc.set_threshold(*thresholds)


async def populate(coord: Coordinator, capabilities: list[DeviceCapability]) -> None:
    started = perf_counter()
    harvesting = coord.harvesting
    for cap in capabilities:
        await harvesting.heartbeat(
            cap.device_id,
            battery_percent=cap.battery_percent,
            charging=cap.charging,
            thermal_celsius=cap.thermal_celsius,
        )
    await harvesting.flush()
    await quiet(coord.bus)
    ids = [c.device_id for c in capabilities]
    standing = await harvesting.device_standing(ids)
    eligible = [d for d in ids if standing[d].eligible]
    await coord.tokenomics.initialize_wallet(REQUESTER)

    module = load_example("primes").decode()
    for j in range(JOBS):
        lo = 1_000_000 + j * TASKS_PER_JOB * 1_000
        inputs = [
            base64.b64encode(primes_input(lo + i * 1_000, lo + (i + 1) * 1_000)).decode()
            for i in range(TASKS_PER_JOB)
        ]
        await coord.jobs.submit(
            REQUESTER,
            JobSubmission(
                name=f"primes-{j}",
                module_wat=module,
                inputs_b64=inputs,
                fuel_limit=10_000_000,
                max_price_per_gflop=Decimal("0.01"),
            ),
        )

    market = coord.marketplace
    quote = await market.price_resources(ResourceSpec(gflop=1_000.0))
    ceiling = quote.price_per_gflop * 2
    pool = iter(eligible)
    for a in range(OPEN_AUCTIONS + SETTLED_AUCTIONS):
        settled = a >= OPEN_AUCTIONS
        slots = SETTLED_SLOTS if settled else OPEN_SLOTS
        asks = SETTLED_SLOTS + 1 if settled else OPEN_ASKS
        auction_id, floor, top, step = await open_auction(
            market, slots, 1_000.0, ceiling, f"bench-stats-{a}"
        )
        providers = [next(pool) for _ in range(asks)]
        prices = grid_prices(random.Random(a), floor, top, step, asks)
        await place(market, auction_id, providers, prices)
    for rule in RULES:
        await coord.stats.setup_alerts(rule)
    await quiet(coord.bus)
    metrics = await market.get_market_metrics()
    log(
        f"stats: {len(ids):,} devices heartbeating ({len(eligible):,} eligible), "
        f"{len(coord.jobs.jobs)} jobs with {sum(len(j.tasks) for j in coord.jobs.jobs.values()):,} "
        f"tasks, {metrics.open_auctions} open auctions, {metrics.auctions_settled} settled; "
        f"set up in {perf_counter() - started:.1f} s"
    )


async def measure(coord: Coordinator) -> Figure:
    stats = coord.stats
    for _ in range(WARMUP):
        await stats.collect_metrics()
        await asyncio.sleep(GAP_S)
    probe_ms: list[float] = []
    cycle_ms: list[float] = []
    for _ in range(CYCLES):
        started = perf_counter()
        await figures.gather(coord)
        probe_ms.append((perf_counter() - started) * 1000)
        await asyncio.sleep(GAP_S)
        started = perf_counter()
        metrics = await stats.collect_metrics()
        cycle_ms.append((perf_counter() - started) * 1000)
        await asyncio.sleep(GAP_S)
    series = len(metrics.values)
    shown = ("devices.online", "jobs.tasks_pending", "market.open_auctions", "ledger.transfers")
    log("  figures: " + ", ".join(f"{n} {metrics.values.get(n, float('nan')):,.0f}" for n in shown))

    # collect on until the heads are sealed into chunks: the hourly cycle, logged apart
    sealing_ms = None
    for _ in range(200):
        before = stats.store.stats()["chunks"] + stats.store.stats()["pending_chunks"]
        started = perf_counter()
        await stats.collect_metrics()
        took = (perf_counter() - started) * 1000
        after = stats.store.stats()["chunks"] + stats.store.stats()["pending_chunks"]
        if after - before >= series // 2:  # series that appeared later seal later
            sealing_ms = took
            break
        await asyncio.sleep(GAP_S)

    median = statistics.median(cycle_ms)
    sealing = "not reached" if sealing_ms is None else f"{sealing_ms:.1f} ms"
    log(
        f"  collect_metrics over {CYCLES} cycles ({series} series each): median {median:.2f} ms, "
        f"p95 {percentile(cycle_ms, 95):.2f} ms, max {max(cycle_ms):.2f} ms; the probe alone "
        f"median {statistics.median(probe_ms):.2f} ms, p95 {percentile(probe_ms, 95):.2f} ms; "
        f"the cycle that seals every head: {sealing}"
    )
    return Figure(
        "stats.collect_cycle",
        median,
        "ms",
        baseline=statistics.median(probe_ms),
        target=TARGET_MS,
        op="<",
    )
