"""The system's figures at one instant, gathered for the stats service by the composition root.

The stats service may not reach into other services; this module, beside the coordinator, is the
one place that sees them all. It reads only in-memory state (registries, counters, the ledger's
balances), so one collection costs milliseconds however large the fleet.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from fogcoord.contracts.lifecycle import HealthState
from fogcoord.contracts.orchestration import BreakerState

if TYPE_CHECKING:
    from fogcoord.coordinator import Coordinator

TRUST_BINS = 10
HEALTH_LEVEL = {HealthState.PASSING: 0.0, HealthState.WARNING: 1.0, HealthState.CRITICAL: 2.0}
BREAKER_LEVEL = {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 1.0, BreakerState.OPEN: 2.0}


async def gather(coord: Coordinator) -> dict[str, float]:
    out: dict[str, float] = {}
    _services(coord, out)
    _bus(coord, out)
    _devices(coord, out)
    _jobs(coord, out)
    await _market(coord, out)
    _ledger(coord, out)
    return out


def _services(coord: Coordinator, out: dict[str, float]) -> None:
    slowest = 0.0
    for entry in coord.orchestration.registry().services:
        sid = entry.service_id
        out[f"service.{sid}.breaker"] = BREAKER_LEVEL.get(entry.breaker, 0.0)
        if entry.health is not None:
            out[f"service.{sid}.health"] = HEALTH_LEVEL.get(entry.health.state, 2.0)
        if entry.stats is not None:
            out[f"service.{sid}.requests"] = float(entry.stats.requests)
            out[f"service.{sid}.errors"] = float(entry.stats.errors)
            latency = entry.stats.average_processing_time_s * 1000
            out[f"service.{sid}.latency_ms"] = latency
            slowest = max(slowest, latency)
    out["services.max_latency_ms"] = slowest


def _bus(coord: Coordinator, out: dict[str, float]) -> None:
    stats = coord.bus.stats()
    out["bus.published"] = float(stats.published)
    out["bus.dead_letters"] = float(stats.dead_letters)
    out["bus.queued"] = float(sum(s.queued for s in stats.subscribers))


def _devices(coord: Coordinator, out: dict[str, float]) -> None:
    reg = coord.harvesting.registry
    n = reg.size
    active = reg.active[:n]
    online = active & reg.online[:n]
    out["devices.registered"] = float(active.sum())
    out["devices.online"] = float(online.sum())
    out["devices.charging"] = float((online & reg.charging[:n]).sum())
    out["devices.connected"] = float(len(coord.channels))
    trust = reg.trust[:n][active]
    counts, _ = np.histogram(trust, bins=TRUST_BINS, range=(0.0, 1.0))
    for i, c in enumerate(counts.tolist()):
        out[f"devices.trust_bin.{i}"] = float(c)


def _jobs(coord: Coordinator, out: dict[str, float]) -> None:
    jobs: Counter[str] = Counter()
    tasks: Counter[str] = Counter()
    for job in coord.jobs.jobs.values():
        jobs[job.state.value] += 1
        for task in job.tasks:
            tasks[task.state.value] += 1
    for state in ("submitted", "auctioned", "allocated", "running", "verified", "settled"):
        out[f"jobs.{state}"] = float(jobs.get(state, 0))
    out["jobs.failed"] = float(jobs.get("failed", 0))
    out["jobs.cancelled"] = float(jobs.get("cancelled", 0))
    for state in ("pending", "running", "verified", "failed"):
        out[f"jobs.tasks_{state}"] = float(tasks.get(state, 0))


async def _market(coord: Coordinator, out: dict[str, float]) -> None:
    m = await coord.marketplace.get_market_metrics()
    out["market.open_auctions"] = float(m.open_auctions)
    out["market.auctions_settled"] = float(m.auctions_settled)
    out["market.auctions_failed"] = float(m.auctions_failed)
    out["market.fill_rate"] = m.fill_rate
    out["market.supply_demand_ratio"] = m.supply_demand_ratio
    out["market.factor"] = m.market_factor
    out["market.volume"] = float(m.volume)
    if m.last_clearing_price is not None:
        out["market.last_clearing_price"] = float(m.last_clearing_price)
    for role, amount in m.revenue_by_role.items():
        out[f"market.revenue.{role}"] = float(amount)


def _ledger(coord: Coordinator, out: dict[str, float]) -> None:
    tok = coord.tokenomics
    if not tok.running:
        return
    number, _ = tok.ledger.head
    out["ledger.blocks"] = float(number)
    out["ledger.transfers"] = float(tok.transfers_committed)
    out["ledger.volume"] = tok.volume_committed / 1_000_000
    for kind, micro in tok.balances_by_kind().items():
        out[f"ledger.balance.{kind}"] = micro / 1_000_000
