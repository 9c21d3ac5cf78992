"""Random fleets for property tests, and a brute-force model of who may be selected.

A fleet is generated from a handful of drawn parameters and a numpy seed (so a few hundred
devices cost hypothesis a few draws). Values sit on grids around the configured thresholds, so
boundaries (exactly at the minimum, one below, the resume level) come up often. The model
replays each device's state reports through the documented hysteresis rules on its own.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fogcoord.config import HarvestingConfig
from fogcoord.contracts.harvesting import BurstRequest, NetworkType, ResourceRequirements
from fogcoord.harvesting.selection import InsufficientDevices
from tests.harvesting.support import Harness

REGIONS = ("eu", "us", "ap", "")
CHECKS = (
    "offline",
    "thermal",
    "battery",
    "trust",
    "ram",
    "min_ram_mb",
    "min_gflops",
    "region",
    "network",
    "excluded_owner",
    "reserved_by_burst",
)
"""Every reason a device can be passed over, in the order selection reports them."""

State = tuple[float, bool, float]
"""(battery %, charging, temperature °C) as reported."""


@dataclass(frozen=True)
class Spec:
    device_id: str
    owner: str
    cores: int
    ram_mb: int
    gflops: float
    region: str
    network: NetworkType
    history: tuple[State, ...]
    """Registration state first, then the heartbeats, in order."""
    liveness: Literal["fresh", "stale", "never"]
    """Heartbeating now; heartbeated, then silent past the TTL; never heartbeated."""
    results: tuple[bool, ...]


def make_fleet(
    cfg: HarvestingConfig,
    n: int,
    n_owners: int,
    seed: int,
    *,
    online_share: float = 0.7,
    calm_share: float = 0.5,
) -> list[Spec]:
    """``calm_share`` of the state reports are comfortably within the limits; the rest sit on
    the grids around the thresholds."""
    rng = np.random.default_rng(seed)
    ps = cfg.participant_selection
    lo, margin = ps.min_battery_percent, ps.battery_resume_margin_percent
    batteries = sorted(
        {min(100.0, max(0.0, b)) for b in (0, 10, lo - 1, lo, lo + margin - 1, lo + margin, 100)}
    )
    hi, res = ps.max_thermal_celsius, ps.thermal_resume_celsius
    temps = sorted({min(150.0, max(-40.0, t)) for t in (20, 30, res - 1, res, res + 1, hi - 1, hi)})
    temps.append(min(150.0, hi + 5))
    rams = (512, 1024, 2047, 2048, 3000, 4096, 8192, 8192, 8192)
    gflops = (0.5, 1.0, 2.5, 10.0, 50.0)
    networks = tuple(NetworkType)
    rest = (1 - online_share) / 2
    fleet = []
    for i in range(n):
        liveness = rng.choice(["fresh", "stale", "never"], p=[online_share, rest, rest])
        reports = 1 if liveness == "never" else int(rng.integers(2, 5))
        history = tuple(
            (100.0, bool(rng.random() < 0.3), 20.0)
            if rng.random() < calm_share
            else (float(rng.choice(batteries)), bool(rng.random() < 0.3), float(rng.choice(temps)))
            for _ in range(reports)
        )
        fleet.append(
            Spec(
                device_id=f"dev-{i}",
                owner=f"owner-{int(rng.integers(n_owners))}",
                cores=int(rng.integers(1, 9)),
                ram_mb=int(rng.choice(rams)),
                gflops=float(rng.choice(gflops)),
                region=str(rng.choice(REGIONS)),
                network=networks[int(rng.integers(len(networks)))],
                history=history,
                liveness=liveness,
                results=tuple(bool(rng.random() < 0.8) for _ in range(int(rng.integers(0, 4)))),
            )
        )
    return fleet


async def build(h: Harness, fleet: list[Spec], burst: int = 0) -> set[str]:
    """Bring ``fleet`` into the service; then, if ``burst``, reserve that many devices.

    Returns the reserved devices.
    """
    svc = h.svc
    for s in fleet:
        battery, charging, thermal = s.history[0]
        await h.add(
            s.device_id,
            s.owner,
            cpu_cores=s.cores,
            ram_mb=s.ram_mb,
            gflops=s.gflops,
            region=s.region,
            network=s.network,
            battery_percent=battery,
            charging=charging,
            thermal_celsius=thermal,
        )
    for s in fleet:
        if s.liveness == "stale":
            for b, c, t in s.history[1:]:
                await h.beat(s.device_id, b, c, t)
    h.clock.advance(svc.config.device_discovery.capability_cache_ttl + 1)
    await svc.scan()
    for s in fleet:
        if s.liveness == "fresh":
            for b, c, t in s.history[1:]:
                await h.beat(s.device_id, b, c, t)
        for valid in s.results:
            await svc.record_result(s.device_id, valid)
    if burst:
        with contextlib.suppress(InsufficientDevices):  # too few devices: no burst
            await svc.coordinate_burst(
                BurstRequest(
                    requester="req_burst",
                    devices=burst,
                    requirements=ResourceRequirements(count=burst, seed=7),
                )
            )
    return {d for b in svc.bursts.bursts.values() for d in b.devices}


def latches(cfg: HarvestingConfig, history: tuple[State, ...]) -> tuple[bool, bool]:
    """(throttled, battery low) after replaying ``history`` through the documented rules."""
    ps = cfg.participant_selection
    throttled = low = False
    for battery, charging, thermal in history:
        if thermal >= ps.max_thermal_celsius:
            throttled = True
        elif thermal <= ps.thermal_resume_celsius:
            throttled = False
        if charging:
            low = False
        elif battery < ps.min_battery_percent:
            low = True
        elif battery >= ps.min_battery_percent + ps.battery_resume_margin_percent:
            low = False
    return throttled, low


def model_trust(cfg: HarvestingConfig, results: tuple[bool, ...]) -> tuple[float, float]:
    """(trust, reliability) after ``results``, from the documented rules."""
    t = cfg.trust
    trust, valid, invalid = t.initial_trust, 0.0, 0.0
    for ok in results:
        valid = valid * t.reliability_decay + (1.0 if ok else 0.0)
        invalid = invalid * t.reliability_decay + (0.0 if ok else 1.0)
        trust = trust + (1 - trust) * t.agreement_gain if ok else trust * t.disagreement_factor
    reliability = valid / (valid + invalid) if results else 1.0
    return trust, reliability


def failures(
    cfg: HarvestingConfig,
    s: Spec,
    trust: float,
    req: ResourceRequirements,
    reserved: set[str],
) -> list[str]:
    """Every check ``s`` fails, in :data:`CHECKS` order; ``trust`` as the service holds it."""
    ps = cfg.participant_selection
    throttled, low = latches(cfg, s.history)
    bad = {
        "offline": s.liveness != "fresh",
        "thermal": throttled,
        "battery": low,
        # the registry keeps trust as float32: compare at that precision
        "trust": np.float32(trust) < np.float32(ps.min_trust_score),
        "ram": s.ram_mb < ps.min_ram_mb,
        "min_ram_mb": req.min_ram_mb is not None and s.ram_mb < req.min_ram_mb,
        "min_gflops": req.min_gflops is not None and s.gflops < req.min_gflops,
        "region": bool(req.regions) and s.region not in req.regions,
        "network": bool(req.networks) and s.network not in req.networks,
        "excluded_owner": s.owner in req.exclude_owners,
        "reserved_by_burst": s.device_id in reserved,
    }
    return [name for name in CHECKS if bad[name]]
