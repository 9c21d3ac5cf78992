"""Participant selection: every limit and filter, one device per owner, exact shortfall reports,
reproducible score-weighted draws."""

from __future__ import annotations

import asyncio
import math
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fogcoord.config import HarvestingConfig
from fogcoord.contracts.harvesting import NetworkType, ResourceRequirements
from fogcoord.harvesting.selection import InsufficientDevices
from tests.harvesting.fleet import REGIONS, Spec, build, failures, make_fleet, model_trust
from tests.harvesting.support import QUIET, Harness, config, harvesting


@dataclass(frozen=True)
class Scenario:
    cfg: HarvestingConfig
    fleet: list[Spec]
    req: ResourceRequirements
    burst: int


OWNER_NAMES = [f"owner-{i}" for i in range(8)] + ["nobody"]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    max_thermal = draw(st.sampled_from([40.0, 45.0, 60.0]))
    cfg = config(
        device_discovery=QUIET,
        participant_selection={
            "min_trust_score": draw(st.sampled_from([0.0, 0.3, 0.6, 0.65, 0.9])),
            "min_battery_percent": draw(st.sampled_from([0.0, 20.0, 50.0, 80.0])),
            "battery_resume_margin_percent": draw(st.sampled_from([0.0, 5.0, 10.0])),
            "min_ram_mb": draw(st.sampled_from([0, 1024, 2048, 4096])),
            "max_thermal_celsius": max_thermal,
            "thermal_resume_celsius": max_thermal - draw(st.sampled_from([0.0, 5.0, 10.0])),
        },
        trust={"initial_trust": draw(st.sampled_from([0.5, 0.65, 0.9, 0.9]))},
    )
    fleet = make_fleet(
        cfg,
        n=draw(st.integers(0, 300)),
        n_owners=draw(st.integers(1, 60)),
        seed=draw(st.integers(0, 2**32 - 1)),
        calm_share=draw(st.sampled_from([0.2, 0.6, 0.9])),
    )
    if draw(st.booleans()):
        # only the hard limits and a modest count: the draw usually succeeds
        req = ResourceRequirements(count=draw(st.integers(1, 12)), seed=draw(st.integers(0, 99)))
    else:
        req = ResourceRequirements(
            count=draw(st.integers(1, 40)),
            min_ram_mb=draw(st.none() | st.sampled_from([0, 1024, 2048, 3000, 8192])),
            min_gflops=draw(st.none() | st.sampled_from([0.0, 1.0, 2.5, 10.0, 60.0])),
            regions=tuple(
                draw(st.lists(st.sampled_from([*REGIONS, "mars"]), max_size=3, unique=True))
            ),
            networks=tuple(
                draw(st.lists(st.sampled_from(list(NetworkType)), max_size=3, unique=True))
            ),
            exclude_owners=tuple(
                draw(st.lists(st.sampled_from(OWNER_NAMES), max_size=3, unique=True))
            ),
            seed=draw(st.integers(0, 2**63 - 1)),
        )
    return Scenario(cfg, fleet, req, burst=draw(st.sampled_from([0, 0, 1, 3, 5])))


async def check_scenario(h: Harness, sc: Scenario) -> None:
    svc, cfg, req = h.svc, sc.cfg, sc.req
    reserved = await build(h, sc.fleet, sc.burst)
    by_id = {s.device_id: s for s in sc.fleet}
    trust: dict[str, float] = {}
    for s in sc.fleet:
        health = await svc.monitor_device_health(s.device_id)
        expected_trust, expected_reliability = model_trust(cfg, s.results)
        assert health.trust == pytest.approx(expected_trust, abs=1e-5)
        assert health.reliability == pytest.approx(expected_reliability, abs=1e-5)
        assert health.online == (s.liveness == "fresh")
        trust[s.device_id] = health.trust
    for burst in svc.bursts.bursts.values():
        # the burst itself was selected under the same limits
        plain = ResourceRequirements(count=1)
        assert all(failures(cfg, by_id[d], trust[d], plain, set()) == [] for d in burst.devices), (
            burst
        )
    fails = {s.device_id: failures(cfg, s, trust[s.device_id], req, reserved) for s in sc.fleet}
    passing = [s for s in sc.fleet if not fails[s.device_id]]
    owners = {s.owner for s in passing}
    event("enough devices" if len(owners) >= req.count else "insufficient devices")
    event(f"burst reserved {len(reserved)}")
    if len(owners) >= req.count:
        chosen = await svc.select_participants(req)
        assert len(chosen) == req.count
        assert len(set(chosen)) == req.count
        assert len({by_id[d].owner for d in chosen}) == req.count, "one device per owner"
        for d in chosen:
            assert fails[d] == [], (d, fails[d])
        # every limit, restated on what the service itself reports
        ps = cfg.participant_selection
        for d in chosen:
            c = svc.registry.capability(svc.registry.rows[d])
            health = await svc.monitor_device_health(d)
            assert health.online
            assert health.trust >= ps.min_trust_score or math.isclose(
                health.trust, ps.min_trust_score, rel_tol=1e-6
            )
            assert c.ram_mb >= max(ps.min_ram_mb, req.min_ram_mb or 0)
            assert c.gflops >= (req.min_gflops or 0.0)
            assert not req.regions or c.region in req.regions
            assert not req.networks or c.network in req.networks
            assert c.owner not in req.exclude_owners
            assert d not in reserved
        assert await svc.select_participants(req) == chosen, "same seed, same draw"
    else:
        with pytest.raises(InsufficientDevices) as err:
            await svc.select_participants(req)
        fields = err.value.fields
        assert fields["requested"] == req.count
        assert fields["eligible"] == len(owners)
        expected = Counter(f[0] for f in fails.values() if f)
        expected["same_owner"] = len(passing) - len(owners)
        excluded: dict[str, int] = fields["excluded"]
        assert {k: v for k, v in excluded.items() if v} == {k: v for k, v in expected.items() if v}
        assert sum(excluded.values()) + fields["eligible"] == len(sc.fleet)
        assert err.value.code == "insufficient_devices"
        assert err.value.http_status == 409


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(sc=scenarios())
def test_selection_respects_every_limit(sc: Scenario) -> None:
    async def main(db: Path) -> None:
        async with harvesting(db, sc.cfg, synchronous="OFF") as h:
            await check_scenario(h, sc)

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp) / "h.db"))


async def test_only_eligible_owners_are_offered(h: Harness) -> None:
    """A small hand-made fleet: exactly the devices that pass everything are drawn."""
    await h.online("ok-1", "alice")
    await h.online("ok-2", "bob", region="us", network="ethernet")
    await h.online("ok-3", "carol", charging=True, battery_percent=3.0)
    await h.online("hot", "dave", thermal_celsius=47.0)
    await h.online("flat", "erin", battery_percent=20.0)
    await h.online("small", "frank", ram_mb=1024)
    await h.add("silent", "gina")
    await h.online("cheat", "hank")
    await h.svc.record_result("cheat", valid=False)
    await h.online("ok-1-twin", "alice")
    picked = await h.svc.select_participants(ResourceRequirements(count=3, seed=5))
    assert {p.removesuffix("-twin") for p in picked} == {"ok-1", "ok-2", "ok-3"}
    with pytest.raises(InsufficientDevices) as err:
        await h.svc.select_participants(ResourceRequirements(count=4, seed=5))
    assert err.value.fields["eligible"] == 3
    assert {k: v for k, v in err.value.fields["excluded"].items() if v} == {
        "offline": 1,
        "thermal": 1,
        "battery": 1,
        "trust": 1,
        "ram": 1,
        "same_owner": 1,
    }
    # request filters
    us = await h.svc.select_participants(ResourceRequirements(count=1, regions=("us",)))
    assert us == ["ok-2"]
    wired = await h.svc.select_participants(
        ResourceRequirements(count=1, networks=(NetworkType.ETHERNET,))
    )
    assert wired == ["ok-2"]
    others = await h.svc.select_participants(
        ResourceRequirements(count=2, exclude_owners=("alice",), seed=1)
    )
    assert set(others) == {"ok-2", "ok-3"}
    with pytest.raises(InsufficientDevices) as nowhere:
        await h.svc.select_participants(ResourceRequirements(count=1, regions=("mars",)))
    assert nowhere.value.fields["excluded"]["region"] == 3 + 1  # ok-1, ok-2, ok-3, twin
    assert "region: 4" in str(nowhere.value)


async def test_many_devices_of_one_owner_do_not_crowd_out_others(h: Harness) -> None:
    """The short list of best keys is mostly one owner: selection must still find the rest."""
    for i in range(200):
        await h.online(f"big-{i}", "bigco", charging=True, thermal_celsius=20.0, ram_mb=8192)
    for i in range(10):
        await h.online(f"small-{i}", f"owner-{i}", battery_percent=60.0, thermal_celsius=44.0)
    for seed in range(5):
        chosen = await h.svc.select_participants(ResourceRequirements(count=11, seed=seed))
        owners = {h.svc.registry.capability(h.svc.registry.rows[d]).owner for d in chosen}
        assert owners == {"bigco", *(f"owner-{i}" for i in range(10))}
    with pytest.raises(InsufficientDevices) as err:
        await h.svc.select_participants(ResourceRequirements(count=12, seed=1))
    assert err.value.fields["eligible"] == 11
    assert err.value.fields["excluded"]["same_owner"] == 199


async def test_seeds_reproduce_and_differ(h: Harness) -> None:
    for i in range(60):
        await h.online(f"d{i}", f"o{i}", battery_percent=55.0 + (i % 40))
    draws = {}
    for seed in range(40):
        req = ResourceRequirements(count=5, seed=seed)
        first = await h.svc.select_participants(req)
        assert await h.svc.select_participants(req) == first
        draws[seed] = tuple(first)
    assert len(set(draws.values())) >= 35
    # unseeded draws are valid too
    assert len(await h.svc.select_participants(ResourceRequirements(count=5))) == 5


async def test_draws_are_weighted_by_score(h: Harness) -> None:
    """One device drawn: each wins with probability score / total (Efraimidis-Spirakis)."""
    await h.online("best", "a", charging=True, thermal_celsius=20.0, ram_mb=8192)
    await h.online("mid", "b", battery_percent=80.0, thermal_celsius=35.0, ram_mb=4096)
    await h.online("worst", "c", battery_percent=51.0, thermal_celsius=44.0, ram_mb=2048)
    scores = {d: (await h.svc.assess_device_suitability(d)).score for d in ("best", "mid", "worst")}
    assert scores["best"] > scores["mid"] > scores["worst"]
    n = 3000
    wins: Counter[str] = Counter()
    for seed in range(n):
        [winner] = await h.svc.select_participants(ResourceRequirements(count=1, seed=seed))
        wins[winner] += 1
    total = sum(scores.values())
    for d, score in scores.items():
        p = score / total
        assert abs(wins[d] / n - p) < 4 * math.sqrt(p * (1 - p) / n), (d, wins, scores)
