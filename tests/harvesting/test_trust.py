"""Trust and reliability move with verified results; one caught cheat makes a device ineligible."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogcoord.contracts.errors import NotFound
from fogcoord.contracts.events import ServiceEvent, event_class
from fogcoord.contracts.harvesting import (
    DeviceHealthState,
    DeviceResultVerified,
    ResourceRequirements,
)
from fogcoord.harvesting.selection import InsufficientDevices
from tests.harvesting.fleet import model_trust
from tests.harvesting.support import QUIET, Harness, config, harvesting


async def test_valid_results_raise_trust_toward_one(h: Harness) -> None:
    await h.online("d1")
    trust = [(await h.svc.monitor_device_health("d1")).trust]
    assert trust[0] == pytest.approx(0.65)
    for _ in range(150):
        await h.svc.record_result("d1", valid=True)
        trust.append((await h.svc.monitor_device_health("d1")).trust)
    assert trust[1] == pytest.approx(0.65 + 0.35 * 0.05, abs=1e-6)
    assert all(b > a for a, b in itertools.pairwise(trust[:41]))
    assert all(b >= a for a, b in itertools.pairwise(trust))
    assert 0.99 < trust[-1] <= 1.0
    health = await h.svc.monitor_device_health("d1")
    assert health.reliability == pytest.approx(1.0)


async def test_one_invalid_result_makes_a_new_device_ineligible(h: Harness) -> None:
    await h.online("cheat", "mallory")
    await h.online("honest", "alice")
    assert (await h.svc.check_eligibility(["cheat"]))["cheat"]
    await h.svc.record_result("cheat", valid=False)
    health = await h.svc.monitor_device_health("cheat")
    assert health.trust == pytest.approx(0.65 * 0.5)
    assert health.reliability == 0.0
    assert health.state is DeviceHealthState.WARNING
    assert any(r.startswith("trust ") for r in health.reasons)
    assert await h.svc.check_eligibility(["cheat", "honest"]) == {
        "cheat": False,
        "honest": True,
    }
    with pytest.raises(InsufficientDevices) as err:
        await h.svc.select_participants(ResourceRequirements(count=2))
    assert err.value.fields["excluded"]["trust"] == 1
    # a long honest streak is needed to earn its way back
    streak = 0
    while not (await h.svc.check_eligibility(["cheat"]))["cheat"]:
        await h.svc.record_result("cheat", valid=True)
        streak += 1
    assert streak > 10


async def test_one_mistake_excludes_even_a_long_trusted_device(h: Harness) -> None:
    """At the defaults trust is at most 1, halved is 0.5 < 0.6: no history buys a free cheat."""
    await h.online("d1")
    for _ in range(100):
        await h.svc.record_result("d1", valid=True)
    before = (await h.svc.monitor_device_health("d1")).trust
    assert before > 0.99
    await h.svc.record_result("d1", valid=False)
    after = (await h.svc.monitor_device_health("d1")).trust
    assert after == pytest.approx(before * 0.5, abs=1e-6)
    assert not (await h.svc.check_eligibility(["d1"]))["d1"]


async def test_reliability_is_the_decayed_share_of_valid_results(h: Harness) -> None:
    await h.online("d1")
    results = [True, True, False, True, False, True, True, True]
    valid = invalid = 0.0
    for ok in results:
        await h.svc.record_result("d1", ok)
        valid = valid * 0.98 + ok
        invalid = invalid * 0.98 + (not ok)
        health = await h.svc.monitor_device_health("d1")
        assert health.reliability == pytest.approx(valid / (valid + invalid), abs=1e-6)
    # recent results weigh more than old ones: the same counts in the other order differ
    await h.online("d2", "bob")
    for ok in reversed(results):
        await h.svc.record_result("d2", ok)
    r1 = (await h.svc.monitor_device_health("d1")).reliability
    r2 = (await h.svc.monitor_device_health("d2")).reliability
    assert r1 > r2  # d1 ended on a run of valid results, d2 on two invalid ones near the end


async def test_results_for_unknown_devices_are_not_found(h: Harness) -> None:
    with pytest.raises(NotFound):
        await h.svc.record_result("ghost", valid=True)


@settings(max_examples=30, deadline=None)
@given(
    results=st.lists(st.booleans(), max_size=30),
    initial=st.sampled_from([0.0, 0.3, 0.65, 1.0]),
    gain=st.sampled_from([0.01, 0.05, 0.5, 1.0]),
    factor=st.sampled_from([0.0, 0.5, 0.9]),
    decay=st.sampled_from([0.5, 0.9, 0.98]),
)
def test_trust_and_reliability_follow_the_configured_rules(
    results: list[bool], initial: float, gain: float, factor: float, decay: float
) -> None:
    cfg = config(
        device_discovery=QUIET,
        trust={
            "initial_trust": initial,
            "agreement_gain": gain,
            "disagreement_factor": factor,
            "reliability_decay": decay,
        },
    )

    async def main(db: Path) -> None:
        async with harvesting(db, cfg, synchronous="OFF") as h:
            await h.online("d1")
            for ok in results:
                await h.svc.record_result("d1", ok)
            health = await h.svc.monitor_device_health("d1")
            trust, reliability = model_trust(cfg, tuple(results))
            assert health.trust == pytest.approx(trust, abs=1e-5)
            assert health.reliability == pytest.approx(reliability, abs=1e-5)
            assert 0.0 <= health.trust <= 1.0
            assert 0.0 <= health.reliability <= 1.0

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp) / "h.db"))


def test_device_result_verified_is_a_registered_event() -> None:
    event = DeviceResultVerified(source="verification", device_id="d1", task_id="t1", valid=False)
    assert isinstance(event, ServiceEvent)
    assert event.event_type == "device_result_verified"
    assert event_class("device_result_verified") is DeviceResultVerified
    wire = event.to_wire()
    assert wire["type"] == "device_result_verified"
    assert DeviceResultVerified.model_validate(wire["data"]) == event


async def test_verification_events_on_the_bus_move_trust(tmp_path: Path) -> None:
    from fogcoord.contracts.harvesting import DeviceCapability, DeviceResultVerified
    from fogcoord.coordinator import Coordinator
    from tests.helpers import make_config

    coord = Coordinator(make_config(tmp_path))
    await coord.start()
    try:
        cap = DeviceCapability(
            device_id="phone-9",
            owner="owner-9",
            cpu_cores=4,
            gflops=10.0,
            ram_mb=4096,
            storage_gb=32.0,
            battery_percent=90.0,
            charging=True,
            thermal_celsius=30.0,
        )
        await coord.harvesting.register_device(cap, principal_id="dev-9")
        before = float(coord.harvesting.registry.trust[coord.harvesting.registry.rows["phone-9"]])
        await coord.orchestration.route_event(
            DeviceResultVerified(
                device_id="phone-9", task_id="t1", valid=False, target="harvesting"
            )
        )
        assert await coord.bus.drain(5)
        after = float(coord.harvesting.registry.trust[coord.harvesting.registry.rows["phone-9"]])
        assert after == pytest.approx(before * 0.5)
    finally:
        await coord.stop()
