"""Hard limits, the battery and thermal hysteresis latches, the documented score and reasons."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogcoord.contracts.harvesting import DeviceHealthState, ResourceRequirements
from fogcoord.harvesting.selection import InsufficientDevices
from fogcoord.harvesting.suitability import WEIGHTS
from tests.harvesting.support import QUIET, Harness, config, harvesting

DOCUMENTED_WEIGHTS = {
    "battery": 0.15,
    "charging": 0.10,
    "thermal": 0.15,
    "ram": 0.15,
    "trust": 0.25,
    "reliability": 0.20,
}


async def eligible(h: Harness, device_id: str) -> bool:
    """Whether ``device_id`` passes every limit, asked four ways that must agree."""
    svc = h.svc
    batch = (await svc.check_eligibility([device_id]))[device_id]
    score = await svc.assess_device_suitability(device_id)
    health = await svc.monitor_device_health(device_id)
    try:
        picked = await svc.select_participants(ResourceRequirements(count=1, seed=1))
    except InsufficientDevices:
        picked = []
    assert score.eligible == batch == (picked == [device_id])
    assert score.eligible == (not score.reasons) == (health.state is DeviceHealthState.PASSING)
    assert health.reasons == score.reasons
    return batch


@pytest.mark.parametrize(("minimum", "margin"), [(50.0, 5.0), (30.0, 10.0), (20.0, 0.0)])
async def test_battery_hysteresis(tmp_path: Path, minimum: float, margin: float) -> None:
    cfg = config(
        participant_selection={
            "min_battery_percent": minimum,
            "battery_resume_margin_percent": margin,
        }
    )
    async with harvesting(tmp_path / "h.db", cfg) as h:
        await h.online("d1", battery_percent=90.0)
        assert await eligible(h, "d1")
        await h.beat("d1", battery=minimum - 1)
        assert not await eligible(h, "d1")
        reasons = (await h.svc.assess_device_suitability("d1")).reasons
        assert len(reasons) == 1
        assert reasons[0].startswith(f"battery {minimum - 1:.0f}%")
        if margin > 0:
            # climbing back, but not yet by the margin: still excluded (no flapping)
            await h.beat("d1", battery=minimum)
            assert not await eligible(h, "d1")
            await h.beat("d1", battery=minimum + margin - 1)
            assert not await eligible(h, "d1")
        await h.beat("d1", battery=minimum + margin)
        assert await eligible(h, "d1")
        # falling back to the minimum itself keeps it in; below it, out again
        await h.beat("d1", battery=minimum)
        assert await eligible(h, "d1")
        await h.beat("d1", battery=minimum - 1)
        assert not await eligible(h, "d1")


async def test_charging_overrides_battery_level(h: Harness) -> None:
    await h.online("d1", battery_percent=5.0)
    assert not await eligible(h, "d1")
    await h.beat("d1", battery=5.0, charging=True)
    assert await eligible(h, "d1")
    assert await eligible(h, "d1")
    # unplugged at 5 %: excluded again at once
    await h.beat("d1", battery=5.0, charging=False)
    assert not await eligible(h, "d1")
    # charged up to just above the minimum and unplugged: the latch was cleared while charging
    await h.beat("d1", battery=51.0, charging=True)
    await h.beat("d1", battery=51.0, charging=False)
    assert await eligible(h, "d1")


async def test_registration_state_sets_the_latches(h: Harness) -> None:
    await h.add("low", battery_percent=10.0)
    await h.add("hot", thermal_celsius=50.0)
    await h.add("fine", owner="bob")
    reg = h.svc.registry
    assert bool(reg.battery_low[reg.rows["low"]])
    assert bool(reg.throttled[reg.rows["hot"]])
    # the first heartbeat at a middling level does not clear either latch
    await h.beat("low", battery=52.0)
    await h.beat("hot", thermal=42.0)
    await h.beat("fine")
    assert not await eligible(h, "low")
    assert not await eligible(h, "hot")
    assert await eligible(h, "fine")


@pytest.mark.parametrize(("maximum", "resume"), [(45.0, 40.0), (60.0, 50.0), (45.0, 42.5)])
async def test_thermal_hysteresis(tmp_path: Path, maximum: float, resume: float) -> None:
    cfg = config(
        participant_selection={"max_thermal_celsius": maximum, "thermal_resume_celsius": resume}
    )
    async with harvesting(tmp_path / "h.db", cfg) as h:
        await h.online("d1", thermal_celsius=maximum - 1)
        assert await eligible(h, "d1")
        await h.beat("d1", thermal=maximum)
        assert not await eligible(h, "d1")
        reasons = (await h.svc.assess_device_suitability("d1")).reasons
        assert reasons == (f"thermal throttled at {maximum:.1f} C (resumes at {resume:.0f} C)",)
        if resume < maximum:
            await h.beat("d1", thermal=maximum - 1)
            assert not await eligible(h, "d1")
            await h.beat("d1", thermal=resume + 1)
            assert not await eligible(h, "d1")
            # charging has nothing to do with temperature
            await h.beat("d1", thermal=resume + 1, charging=True)
            assert not await eligible(h, "d1")
        await h.beat("d1", thermal=resume)
        assert await eligible(h, "d1")
        # once cooled, warming up to just below the maximum keeps it running
        await h.beat("d1", thermal=maximum - 0.5)
        assert await eligible(h, "d1")
        await h.beat("d1", thermal=maximum + 10)
        assert not await eligible(h, "d1")


async def test_score_components_match_the_documented_formula(h: Harness) -> None:
    assert WEIGHTS == DOCUMENTED_WEIGHTS
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)
    await h.online("d1", battery_percent=70.0, thermal_celsius=35.0, ram_mb=3072)
    s = await h.svc.assess_device_suitability("d1")
    expected = {
        "battery": 0.70,
        "charging": 0.0,
        "thermal": (45.0 - 35.0) / (45.0 - 25.0),
        "ram": 3072 / (2 * 2048),
        "trust": 0.65,
        "reliability": 1.0,
    }
    assert s.components == pytest.approx(expected, abs=1e-6)
    total = sum(DOCUMENTED_WEIGHTS[k] * v for k, v in expected.items())
    assert s.score == pytest.approx(total, abs=1e-6)
    assert s.eligible
    assert s.reasons == ()

    # charging, cool and roomy: battery, charging, thermal and RAM are all at 1
    await h.online("d2", owner="bob", battery_percent=20.0, charging=True, thermal_celsius=10.0)
    s2 = await h.svc.assess_device_suitability("d2")
    assert s2.components == pytest.approx(
        {"battery": 1, "charging": 1, "thermal": 1, "ram": 1, "trust": 0.65, "reliability": 1},
        abs=1e-6,
    )
    # hotter than the maximum: the thermal component is 0, not negative
    await h.beat("d2", battery=20.0, charging=True, thermal=60.0)
    s3 = await h.svc.assess_device_suitability("d2")
    assert s3.components["thermal"] == 0.0
    assert 0.0 <= s3.score <= 1.0


async def test_reasons_name_each_failing_limit(h: Harness) -> None:
    await h.add("bad", battery_percent=10.0, thermal_celsius=50.0, ram_mb=1024)
    await h.svc.record_result("bad", valid=False)
    s = await h.svc.assess_device_suitability("bad")
    assert not s.eligible
    unverified, thermal, battery, trust, ram = s.reasons
    assert unverified == "unverified: no heartbeat yet"
    assert thermal == "thermal throttled at 50.0 C (resumes at 40 C)"
    assert battery == "battery 10% on battery power (needs 50% to start, 55% to resume)"
    assert trust.startswith("trust 0.3")
    assert trust.endswith(" below 0.6")  # 0.65 x 0.5
    assert ram == "RAM 1024 MB below 2048 MB"
    health = await h.svc.monitor_device_health("bad")
    assert health.state is DeviceHealthState.UNVERIFIED
    # heartbeating: online, but every other limit still fails -> warning, four reasons
    await h.beat("bad", battery=10.0, thermal=50.0)
    health = await h.svc.monitor_device_health("bad")
    assert health.state is DeviceHealthState.WARNING
    assert [r.split()[0] for r in health.reasons] == ["thermal", "battery", "trust", "RAM"]
    # silent past the TTL: offline -> critical, and "offline" is named
    h.clock.advance(h.svc.config.device_discovery.capability_cache_ttl + 1)
    await h.svc.scan()
    health = await h.svc.monitor_device_health("bad")
    assert health.state is DeviceHealthState.CRITICAL
    assert health.reasons[0] == "offline"


STATES = st.tuples(
    st.integers(0, 100),  # battery
    st.booleans(),  # charging
    st.integers(-40, 150),  # thermal
    st.integers(1, 20_000),  # RAM
    st.lists(st.booleans(), max_size=4),  # verified results
)


@settings(max_examples=25, deadline=None)
@given(
    devices=st.lists(STATES, min_size=1, max_size=12),
    max_thermal=st.integers(30, 100),
    min_ram=st.sampled_from([1, 512, 2048, 8192]),
)
def test_score_formula_holds_for_any_state(
    devices: list[tuple[int, bool, int, int, list[bool]]], max_thermal: int, min_ram: int
) -> None:
    cfg = config(
        device_discovery=QUIET,
        participant_selection={
            "max_thermal_celsius": max_thermal,
            "thermal_resume_celsius": max_thermal - 5,
            "min_ram_mb": min_ram,
        },
    )

    async def scenario(db: Path) -> None:
        async with harvesting(db, cfg, synchronous="OFF") as h:
            for i, (battery, charging, thermal, ram, results) in enumerate(devices):
                d = f"d{i}"
                await h.online(
                    d,
                    owner=f"o{i}",
                    battery_percent=battery,
                    charging=charging,
                    thermal_celsius=thermal,
                    ram_mb=ram,
                )
                for valid in results:
                    await h.svc.record_result(d, valid)
                health = await h.svc.monitor_device_health(d)
                s = await h.svc.assess_device_suitability(d)
                expected = {
                    "battery": 1.0 if charging else battery / 100,
                    "charging": 1.0 if charging else 0.0,
                    "thermal": min(1.0, max(0.0, (max_thermal - thermal) / (max_thermal - 25))),
                    "ram": min(1.0, ram / (2 * min_ram)),
                    "trust": health.trust,
                    "reliability": health.reliability,
                }
                assert s.components == pytest.approx(expected, abs=1e-5)
                total = sum(DOCUMENTED_WEIGHTS[k] * v for k, v in expected.items())
                assert s.score == pytest.approx(total, abs=1e-5)
                assert 0.0 <= s.score <= 1.0
                assert s.eligible == (not s.reasons)

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp) / "h.db"))
