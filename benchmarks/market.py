"""Marketplace figures on a real coordinator: quotes, a 10,000-ask settlement, revenue batches.

One ``Coordinator`` as ``fogcoord serve`` builds it (the orchestrator and every service, the
marketplace reaching tokenomics and harvesting through discovery), on a fresh SQLite file in a
temporary directory with the production settings (WAL, ``synchronous=FULL``). The only
configuration change is a large opening grant (1,000,000 tokens, as in the ledger figures) so
the requester can hold escrows of this size. 16,000 devices of the realistic fleet of
:mod:`benchmarks._fleet` are registered (written to the store before start-up, as after a
restart) and every one heartbeats its own battery, charging and temperature through
``FogHarvestingService.heartbeat``; about two thirds pass every limit, which leaves more than
10,000 eligible devices. The garbage collector is tuned as ``fogcoord serve`` tunes it after
start-up (``serve.tune_gc``), and restored afterwards. Where a burst of calls (heartbeats, asks)
has queued events, the bus is drained before the next timed call, as the idle time between
requests would in a server.

- ``market.price_quote``: mean time of ``await marketplace.price_resources(spec)`` over 100,000
  specs, timed as one loop and divided by the count: GFLOP log-uniform from 1 to 1,000,000, a
  quarter network-bound, 30 % with 0.1 to 100 GB of storage. Each quote is kept until it expires,
  exactly as for a user. Baseline, same run: the same formula in plain float arithmetic, in the
  same loop shape (not awaited), over the same specs -- compute = base rate x GFLOP, network =
  compute x (multiplier - 1) when network-bound, storage = rate x GB, each rounded up to the
  micro-token; total = sum x the current market factor, rounded up; price per GFLOP = total /
  GFLOP, rounded up. The two totals are checked to agree. The time per quote of the first and
  the second 50,000 is logged separately: the service keeps at most 50,000 unexpired quotes.
- ``market.settle_10k``: ``await marketplace.settle_auction(id)`` by the requester of an auction
  for 10,000 slots that holds 10,000 asks from 10,000 distinct eligible devices (so every ask
  wins and the price is the 10,000-th ask). This is the clean way to settle 10,000 asks: an
  auction with fewer slots settles itself at its (N+1)-th ask, inside ``submit_bid``. The asks
  are placed through ``submit_bid`` before timing, on the auction's price grid between its
  reserve and its ceiling. The settlement timed is all of it: the batch eligibility check, the
  ranking, the persisted plan, the escrow capture, the stored result. Median of 7 fresh auctions
  on the same devices after one warm-up auction (p95 logged). Baseline, same run: Python's
  ``sorted()`` of the same 10,000 asks by (price, -trust, sequence) after one eligibility dict
  lookup per ask -- what a naive settlement costs without the durable plan, the ledger and the
  batch eligibility call.
- ``market.revenue_settlement.p50`` / ``.p99``: ``await marketplace.distribute_revenue(job)`` of
  one job whose auction (100 slots) settled itself at its 101st ask. Each call pays a new batch
  of 100 verified tasks (fresh task ids), one from each of the 100 winners, each confirmed by
  one validator (100 other devices, rotating), with verified fuel of 50 to 5,000 GFLOP; 200
  batches after 5 warm-up batches (which create the payees' wallets). Each call writes the
  batch record, moves the money as one linked chain from the job's escrow and marks the batch
  paid. Baseline, same run, interleaved with the batches: one ``ledger.transfers`` linked chain
  with the same number of legs and amounts to the same wallets -- the money movement alone.
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import statistics
import tempfile
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from time import perf_counter

from benchmarks._fleet import fleet, seed_store
from benchmarks._ledger import ledger_config
from benchmarks.harness import Figure, Unit, log, percentile, percentile_figures
from fogcoord.config import FogConfig, ServerConfig
from fogcoord.contracts.harvesting import DeviceCapability, DeviceStanding
from fogcoord.contracts.marketplace import (
    CompletedJob,
    CompletedTask,
    PricingQuote,
    ResourceBid,
    ResourceRequest,
    ResourceSpec,
)
from fogcoord.contracts.tokenomics import PLATFORM_WALLET
from fogcoord.contracts.units import FUEL_PER_GFLOP, MICRO_PER_TOKEN
from fogcoord.coordinator import Coordinator
from fogcoord.marketplace.service import FogMarketplaceService
from fogcoord.orchestration.bus.protocol import EventBus
from fogcoord.serve import tune_gc
from fogcoord.storage.engine import create_engine
from fogcoord.tokenomics.codes import Code
from fogcoord.tokenomics.model import TransferFlags, TransferRequest
from fogcoord.tokenomics.service import FogTokenomicsService

FIGURES = (
    "market.price_quote",
    "market.settle_10k",
    "market.revenue_settlement.p50",
    "market.revenue_settlement.p99",
)
UNITS: dict[str, Unit] = {
    "market.price_quote": "us",
    "market.settle_10k": "ms",
    "market.revenue_settlement.p50": "ms",
    "market.revenue_settlement.p99": "ms",
}
TIMEOUT_S = 150.0

DEVICES = 16_000
QUOTES = 100_000
ASKS = 10_000
SETTLE_RUNS = 7
PROVIDERS = 100
BATCHES = 200
WARMUP_BATCHES = 5
REQUESTER = "req-market-bench"
QUOTE_TARGET_US = 50.0
SETTLE_TARGET_MS = 20.0
REVENUE_P99_TARGET_MS = 5.0


def specs(count: int, seed: int = 11) -> list[ResourceSpec]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        storage = round(10 ** rng.uniform(-1, 2), 2) if rng.random() < 0.3 else 0.0
        out.append(
            ResourceSpec(
                gflop=round(10 ** rng.uniform(0, 6), 3),
                storage_gb=storage,
                network_bound=rng.random() < 0.25,
            )
        )
    return out


async def quiet(bus: EventBus) -> None:
    """Wait until a burst of events has been published and every subscriber has handled it."""
    published = -1
    while True:
        await asyncio.sleep(0.05)
        if not await bus.drain(30.0):
            raise RuntimeError("the event bus did not drain in 30 s")
        now = bus.stats().published
        if now == published:
            return
        published = now


async def quote_figure(svc: FogMarketplaceService) -> Figure:
    work = specs(QUOTES)
    price = svc.price_resources
    quotes: list[PricingQuote] = []
    half = QUOTES // 2
    started = perf_counter()
    for spec in work[:half]:
        quotes.append(await price(spec))
    first_half = perf_counter() - started
    for spec in work[half:]:
        quotes.append(await price(spec))
    elapsed = perf_counter() - started
    service_us = elapsed / QUOTES * 1e6
    log(
        f"  quotes: first {half:,} {first_half / half * 1e6:.1f} us each, next {QUOTES - half:,} "
        f"{(elapsed - first_half) / (QUOTES - half) * 1e6:.1f} us each; "
        f"{len(svc.pricer._quotes):,} unexpired quotes kept"
    )

    cfg = svc.config.pricing
    base = cfg.base_compute_rate_per_gflop * MICRO_PER_TOKEN
    extra = cfg.network_multiplier - 1.0
    storage_rate = cfg.storage_rate_per_gb * MICRO_PER_TOKEN
    factor = svc.pricer.factor
    ceil = math.ceil
    started = perf_counter()
    floats: list[tuple[int, int]] = []
    for spec in work:
        compute = ceil(base * spec.gflop)
        network = ceil(base * spec.gflop * extra) if spec.network_bound else 0
        storage = ceil(storage_rate * spec.storage_gb)
        total = ceil((compute + network + storage) * factor)
        floats.append((total, max(1, ceil(total / spec.gflop))))
    float_us = (perf_counter() - started) / QUOTES * 1e6

    service_total = float(sum(q.total for q in quotes))
    float_total = sum(t for t, _ in floats) / MICRO_PER_TOKEN
    if any(q.market_factor != factor for q in quotes):
        raise RuntimeError("the market factor moved while quoting")
    if abs(service_total - float_total) > 1e-6 * service_total:
        raise RuntimeError(f"quotes disagree: {service_total} (service) vs {float_total} (float)")
    log(f"  {QUOTES:,} quotes at market factor {factor:.3f}, {service_total:,.2f} tokens in all")
    return Figure(
        "market.price_quote", service_us, "us", baseline=float_us, target=QUOTE_TARGET_US, op="<"
    )


@dataclass(frozen=True)
class PlacedAsk:
    provider: str
    price: int
    seq: int


def grid_prices(rng: random.Random, floor: int, ceiling: int, step: int, count: int) -> list[int]:
    """Asks on the auction's grid, spread between its reserve and its ceiling."""
    steps = (ceiling - floor) // step
    return [floor + step * rng.randint(0, steps) for _ in range(count)]


async def open_auction(
    svc: FogMarketplaceService, slots: int, gflop: float, ceiling: Decimal, job_id: str
) -> tuple[str, int, int, int]:
    """An auction of the requester's; its id, reserve, ceiling and step in micro-tokens."""
    auction_id = await svc.create_auction(
        ResourceRequest(
            requester=REQUESTER,
            slots=slots,
            gflop=gflop,
            max_price_per_gflop=ceiling,
            job_id=job_id,
        )
    )
    view = await svc.get_auction(auction_id)

    def micro(x: Decimal) -> int:
        return int(x * MICRO_PER_TOKEN)

    return (
        auction_id,
        micro(view.reserve_price_per_gflop),
        micro(view.max_price_per_gflop),
        micro(view.bid_increment),
    )


async def place(
    svc: FogMarketplaceService, auction_id: str, providers: list[str], prices: list[int]
) -> list[PlacedAsk]:
    placed = []
    for seq, (provider, price) in enumerate(zip(providers, prices, strict=True), 1):
        bid = ResourceBid(provider=provider, price_per_gflop=Decimal(price) / MICRO_PER_TOKEN)
        if not await svc.submit_bid(auction_id, bid):
            raise RuntimeError(f"ask of {provider} refused")
        placed.append(PlacedAsk(provider, price, seq))
    return placed


def naive_settlement(
    asks: list[PlacedAsk], standing: dict[str, DeviceStanding], slots: int
) -> list[str]:
    """The baseline: one dict lookup per ask for eligibility, then ``sorted()``."""
    eligible = []
    for ask in asks:
        st = standing.get(ask.provider)
        if st is not None and st.eligible:
            eligible.append((ask.price, -st.trust, ask.seq, ask.provider))
    return [a[3] for a in sorted(eligible)[:slots]]


async def settle_figure(
    svc: FogMarketplaceService,
    bus: EventBus,
    devices: list[str],
    standing: dict[str, DeviceStanding],
) -> Figure:
    rng = random.Random(23)
    quote = await svc.price_resources(ResourceSpec(gflop=100.0 * ASKS))
    ceiling = quote.price_per_gflop * 2
    settle_ms: list[float] = []
    naive_ms: list[float] = []
    for run in range(SETTLE_RUNS + 1):
        auction_id, floor, top, step = await open_auction(
            svc, ASKS, 100.0 * ASKS, ceiling, f"settle-{run}"
        )
        providers = rng.sample(devices, ASKS)
        started = perf_counter()
        asks = await place(svc, auction_id, providers, grid_prices(rng, floor, top, step, ASKS))
        placing = perf_counter() - started
        # the asks' events are published while the requester is still deciding, not inside
        # the settlement (placed in one burst, nothing has yielded to the loop yet)
        await quiet(bus)

        started = perf_counter()
        result = await svc.settle_auction(auction_id)
        took = (perf_counter() - started) * 1000
        if result.status != "settled" or len(result.winners) != ASKS:
            raise RuntimeError(f"settlement {run}: {result.status}, {len(result.winners)} winners")

        started = perf_counter()
        winners = naive_settlement(asks, standing, ASKS)
        naive = (perf_counter() - started) * 1000
        if set(winners) != set(result.winners):
            raise RuntimeError(f"settlement {run}: the baseline picked other winners")
        if run == 0:
            log(
                f"  settle warm-up: {ASKS:,} asks placed in {placing:.1f} s, settled in "
                f"{took:.1f} ms at {result.clearing_price_per_gflop} per GFLOP"
            )
            continue
        settle_ms.append(took)
        naive_ms.append(naive)
    log(
        f"  settle_10k over {SETTLE_RUNS} auctions: median {statistics.median(settle_ms):.1f} ms, "
        f"p95 {percentile(settle_ms, 95):.1f} ms, min {min(settle_ms):.1f} ms; "
        f"sorted() baseline median {statistics.median(naive_ms):.2f} ms"
    )
    return Figure(
        "market.settle_10k",
        statistics.median(settle_ms),
        "ms",
        baseline=statistics.median(naive_ms),
        target=SETTLE_TARGET_MS,
        op="<",
    )


def batches(
    winners: list[str], validators: list[str], count: int, seed: int = 31
) -> list[list[CompletedTask]]:
    """``count`` batches: one task per winner, each confirmed by one other device."""
    rng = random.Random(seed)
    out = []
    for b in range(count):
        tasks = []
        for i, provider in enumerate(winners):
            fuel = int(FUEL_PER_GFLOP * 10 ** rng.uniform(1.7, 3.7))
            tasks.append(
                CompletedTask(
                    task_id=f"task-{b:04d}-{i:03d}",
                    provider=provider,
                    validators=(validators[(i + b) % len(validators)],),
                    gflop=fuel / FUEL_PER_GFLOP,
                    fuel=fuel,
                )
            )
        out.append(tasks)
    return out


async def revenue_figures(
    svc: FogMarketplaceService,
    bus: EventBus,
    tok: FogTokenomicsService,
    devices: list[str],
    owners: dict[str, str],
) -> list[Figure]:
    rng = random.Random(37)
    pool = rng.sample(devices, 2 * PROVIDERS + 1)
    bidders, others = pool[: PROVIDERS + 1], pool[PROVIDERS + 1 :]
    # the auction buys exactly the work the batches will report (their fuel depends on the seed
    # only, not on which devices win)
    planned = batches(bidders[:PROVIDERS], others, WARMUP_BATCHES + BATCHES)
    gflop = math.ceil(sum(t.fuel or 0 for b in planned for t in b) / FUEL_PER_GFLOP)
    quote = await svc.price_resources(ResourceSpec(gflop=float(gflop)))
    auction_id, floor, top, step = await open_auction(
        svc, PROVIDERS, float(gflop), quote.price_per_gflop * 2, "revenue-job"
    )
    await place(svc, auction_id, bidders, grid_prices(rng, floor, top, step, PROVIDERS + 1))
    await quiet(bus)
    view = await svc.get_auction(auction_id)
    if view.result is None or view.result.status != "settled":
        raise RuntimeError(f"the revenue auction did not settle at its 101st ask: {view.status}")
    winners = list(view.result.winners)
    validators = [d for d in bidders + others if d not in set(winners)][:PROVIDERS]
    work = batches(winners, validators, WARMUP_BATCHES + BATCHES)
    log(
        f"  revenue job: {gflop:,} GFLOP bought from {PROVIDERS} winners at "
        f"{view.result.clearing_price_per_gflop} per GFLOP (captured {view.result.captured})"
    )

    payer = "bench-baseline-payer"
    await tok.initialize_wallet(payer)
    ledger = tok.ledger
    service_ms: list[float] = []
    chain_ms: list[float] = []
    legs_seen = 0
    for b, tasks in enumerate(work):
        job = CompletedJob(job_id="revenue-job", auction_id=auction_id, tasks=tuple(tasks))
        started = perf_counter()
        paid = await svc.distribute_revenue(job)
        took = (perf_counter() - started) * 1000
        if paid.tasks_paid != len(tasks):
            raise RuntimeError(f"batch {b}: {paid.tasks_paid} of {len(tasks)} tasks paid")
        # each device's share goes to its owner's wallet, the platform's to the platform
        payees = [
            (owners[device], amount)
            for shares in (paid.providers, paid.validators)
            for device, amount in shares.items()
        ]
        payees.append((PLATFORM_WALLET, paid.platform))
        last = len(payees) - 1
        chain = [
            TransferRequest(
                f"baseline-{b:04d}-{i:03d}",
                payer,
                wallet,
                int(amount * MICRO_PER_TOKEN),
                TransferFlags.LINKED if i < last else TransferFlags.NONE,
                memo="baseline share",
            )
            for i, (wallet, amount) in enumerate(payees)
        ]
        started = perf_counter()
        results = await ledger.transfers(chain)
        chain_took = (perf_counter() - started) * 1000
        if any(r.code != Code.OK for r in results):
            raise RuntimeError(f"baseline chain {b}: {[r.code for r in results][:3]}")
        if b >= WARMUP_BATCHES:
            service_ms.append(took)
            chain_ms.append(chain_took)
            legs_seen += len(chain)
    closing = await svc.distribute_revenue(
        CompletedJob(job_id="revenue-job", auction_id=auction_id, final=True)
    )
    log(
        f"  revenue: {BATCHES} batches of {PROVIDERS} tasks, {legs_seen / BATCHES:.0f} legs each; "
        f"service p50 {percentile(service_ms, 50):.2f} / p99 {percentile(service_ms, 99):.2f} "
        f"ms, first 20 mean {statistics.fmean(service_ms[:20]):.2f} ms, last 20 mean "
        f"{statistics.fmean(service_ms[-20:]):.2f} ms; one linked chain p50 "
        f"{percentile(chain_ms, 50):.2f} ms; {closing.refunded} tokens refunded at the end"
    )
    return percentile_figures(
        "market.revenue_settlement",
        service_ms,
        chain_ms,
        "ms",
        p99_target=REVENUE_P99_TARGET_MS,
    )


async def run() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="fogcoord-bench-market-") as tmp:
        config = FogConfig(server=ServerConfig(data_dir=Path(tmp)), tokenomics=ledger_config())
        engine = create_engine(config.database_url())
        capabilities = fleet(DEVICES)
        seed_store(engine, capabilities, 0.0)
        engine.dispose()
        thresholds = gc.get_threshold()
        try:
            async with Coordinator(config) as coordinator:
                tune_gc()  # as ``fogcoord serve`` does once the coordinator has started
                return await measure(coordinator, capabilities)
        finally:
            gc.unfreeze()
            gc.set_threshold(*thresholds)


async def measure(coordinator: Coordinator, capabilities: list[DeviceCapability]) -> list[Figure]:
    harvesting = coordinator.harvesting
    market = coordinator.marketplace
    tokenomics = coordinator.tokenomics
    for cap in capabilities:
        await harvesting.heartbeat(
            cap.device_id,
            battery_percent=cap.battery_percent,
            charging=cap.charging,
            thermal_celsius=cap.thermal_celsius,
        )
    await harvesting.flush()
    # every device came online: the marketplace recounts supply from those events
    await quiet(coordinator.bus)
    ids = [c.device_id for c in capabilities]
    standing = await harvesting.device_standing(ids)
    eligible = [d for d in ids if standing[d].eligible]
    log(
        f"market: {len(ids):,} devices heartbeating, {len(eligible):,} eligible "
        f"(supply counted {market.pricer.supply:,}); market factor {market.pricer.factor:.3f}"
    )
    if len(eligible) < ASKS:
        raise RuntimeError(f"only {len(eligible)} eligible devices, {ASKS} needed")
    await tokenomics.initialize_wallet(REQUESTER)

    quote = await quote_figure(market)
    settle = await settle_figure(market, coordinator.bus, eligible, standing)
    owners = {d: standing[d].owner for d in ids}
    revenue = await revenue_figures(market, coordinator.bus, tokenomics, eligible, owners)
    return [quote, settle, *revenue]
