"""Registration, heartbeats, TTL expiry and recovery on a fake clock, the periodic scan, batch
eligibility, listing and deregistration."""

from __future__ import annotations

import pytest

from fogcoord.contracts.errors import Conflict, NotFound, ValidationFailed
from fogcoord.contracts.harvesting import DeviceDiscoveredEvent, DeviceHealthState
from tests.harvesting.support import Harness, principal_of, settle

TTL = 300.0
SCAN = 120.0


async def test_a_new_device_is_unverified_until_its_first_heartbeat(h: Harness) -> None:
    device = await h.add("d1", "alice", battery_percent=90.0)
    assert device.owner == "alice"
    assert device.battery_percent == 90.0
    health = await h.svc.monitor_device_health("d1")
    assert health.state is DeviceHealthState.UNVERIFIED
    assert not health.online
    assert health.reasons == ("unverified: no heartbeat yet",)
    assert health.seconds_since_heartbeat == 0.0
    assert (await h.svc.check_eligibility(["d1"])) == {"d1": False}
    await h.svc.scan()
    assert await h.svc.discover_devices() == []
    await settle()
    [discovered] = h.events.of(DeviceDiscoveredEvent)
    assert isinstance(discovered, DeviceDiscoveredEvent)
    assert (discovered.device_id, discovered.owner) == ("d1", "alice")
    assert discovered.capabilities.device_id == "d1"
    assert discovered.timestamp == h.clock.time()
    assert h.events.changes() == []

    h.clock.advance(10)
    health = await h.beat("d1", battery=70.0)
    assert health.state is DeviceHealthState.PASSING
    assert health.online
    assert health.last_seen == h.clock.time()
    await settle()
    assert h.events.changes() == [("d1", "unverified", "online")]
    # further heartbeats while online change nothing
    await h.beat("d1", battery=71.0)
    await settle()
    assert h.events.changes() == [("d1", "unverified", "online")]
    assert (await h.svc.check_eligibility(["d1"])) == {"d1": True}


async def test_ttl_expiry_and_recovery(h: Harness) -> None:
    await h.online("d1")
    await h.online("d2", "bob")
    await h.svc.scan()
    assert {d.device_id for d in await h.svc.discover_devices()} == {"d1", "d2"}
    h.clock.advance(TTL - 50)
    await h.beat("d2")  # d2 keeps talking
    h.clock.advance(50)
    await h.svc.scan()  # exactly the TTL since d1's heartbeat: not yet stale
    assert (await h.svc.monitor_device_health("d1")).online
    h.clock.advance(1)
    assert await h.svc.scan() == 1
    health = await h.svc.monitor_device_health("d1")
    assert health.state is DeviceHealthState.CRITICAL
    assert not health.online
    assert health.seconds_since_heartbeat == pytest.approx(TTL + 1)
    assert health.reasons == ("offline",)
    assert [d.device_id for d in await h.svc.discover_devices()] == ["d2"]
    assert await h.svc.check_eligibility(["d1", "d2"]) == {"d1": False, "d2": True}
    await settle()
    assert h.events.changes("d1") == [("d1", "unverified", "online"), ("d1", "online", "offline")]
    # a second scan does not report it again
    await h.svc.scan()
    await settle()
    assert len(h.events.changes("d1")) == 2
    # the next heartbeat brings it back at once
    health = await h.beat("d1")
    assert health.state is DeviceHealthState.PASSING
    await settle()
    assert h.events.changes("d1")[-1] == ("d1", "offline", "online")
    assert (await h.svc.check_eligibility(["d1"]))["d1"]


async def test_the_scan_loop_runs_every_scan_interval(h: Harness) -> None:
    start = h.clock.time()
    assert h.svc.last_scan == start  # start-up scans once
    await h.online("d1")
    await h.clock.advance_and_settle(SCAN - 1)
    assert h.svc.last_scan == start
    await h.clock.advance_and_settle(1)
    assert h.svc.last_scan == start + SCAN
    await h.clock.advance_and_settle(SCAN)
    assert h.svc.last_scan == start + 2 * SCAN
    assert (await h.svc.monitor_device_health("d1")).online  # 240 s <= TTL
    # third scan at 360 s: d1 is past its TTL and goes offline without anyone calling scan()
    await h.clock.advance_and_settle(SCAN)
    assert h.svc.last_scan == start + 3 * SCAN
    health = await h.svc.monitor_device_health("d1")
    assert health.state is DeviceHealthState.CRITICAL
    await settle()
    assert h.events.changes("d1")[-1] == ("d1", "online", "offline")


async def test_discover_devices_reflects_the_last_scan(h: Harness) -> None:
    await h.online("d1")
    assert await h.svc.discover_devices() == []  # not scanned since
    await h.svc.scan()
    [seen] = await h.svc.discover_devices()
    assert seen.device_id == "d1"
    await h.svc.deregister_device("d1")
    assert await h.svc.discover_devices() == []


async def test_check_eligibility_answers_many_ids_in_one_call(h: Harness) -> None:
    expected: dict[str, bool] = {}
    for i in range(60):
        d = f"d{i}"
        kind = i % 4
        if kind == 0:
            await h.online(d, f"o{i}")
            expected[d] = True
        elif kind == 1:
            await h.online(d, f"o{i}", battery_percent=10.0)
            expected[d] = False
        elif kind == 2:
            await h.add(d, f"o{i}")
            expected[d] = False
        else:
            await h.online(d, f"o{i}", battery_percent=5.0, charging=True)
            expected[d] = True
    ids = [*expected, "ghost-1", "ghost-2"]
    answer = await h.svc.check_eligibility(ids)
    assert answer == {**expected, "ghost-1": False, "ghost-2": False}
    assert list(answer) == ids
    assert await h.svc.check_eligibility([]) == {}


async def test_heartbeat_checks_its_input_and_the_device(h: Harness) -> None:
    await h.online("d1")
    with pytest.raises(ValidationFailed) as battery:
        await h.beat("d1", battery=101.0)
    assert battery.value.fields["field"] == "battery_percent"
    with pytest.raises(ValidationFailed) as thermal:
        await h.beat("d1", thermal=-41.0)
    assert thermal.value.fields["field"] == "thermal_celsius"
    assert (await h.svc.monitor_device_health("d1")).state is DeviceHealthState.PASSING
    with pytest.raises(NotFound):
        await h.beat("ghost")
    with pytest.raises(NotFound):
        await h.svc.monitor_device_health("ghost")
    with pytest.raises(NotFound):
        await h.svc.assess_device_suitability("ghost")


async def test_duplicate_registration_is_a_conflict(h: Harness) -> None:
    await h.add("d1", "alice")
    with pytest.raises(Conflict):
        await h.add("d1", "mallory")
    [only] = h.svc.list_devices()
    assert only.owner == "alice"


async def test_list_devices_filters(h: Harness) -> None:
    await h.online("a1", "alice", region="eu")
    await h.online("a2", "alice", region="us", charging=True)
    await h.add("a3", "alice", region="us")
    await h.online("b1", "bob", region="eu")

    def ids(**filters: object) -> list[str]:
        return [d.device_id for d in h.svc.list_devices(**filters)]  # type: ignore[arg-type]

    assert ids() == ["a1", "a2", "a3", "b1"]
    assert ids(owner="alice") == ["a1", "a2", "a3"]
    assert ids(owner="nobody") == []
    assert ids(region="us") == ["a2", "a3"]
    assert ids(region="mars") == []
    assert ids(online=True) == ["a1", "a2", "b1"]
    assert ids(online=False) == ["a3"]
    assert ids(charging=True) == ["a2"]
    assert ids(owner="alice", online=True, region="eu") == ["a1"]
    assert ids(limit=2) == ["a1", "a2"]
    assert ids(limit=2, offset=2) == ["a3", "b1"]
    assert ids(offset=10) == []


async def test_deregistration_removes_the_device_and_its_row_is_reused(h: Harness) -> None:
    await h.online("d1")
    for _ in range(3):
        await h.svc.record_result("d1", valid=False)
    await h.svc.deregister_device("d1")
    assert "d1" not in h.svc.registry
    assert h.svc.device_of(principal_of("d1")) is None
    assert h.svc.list_devices() == []
    assert await h.svc.check_eligibility(["d1"]) == {"d1": False}
    await settle()
    assert h.events.changes("d1")[-1] == ("d1", "registered", "deregistered")
    with pytest.raises(NotFound):
        await h.svc.deregister_device("d1")
    with pytest.raises(NotFound):
        await h.beat("d1")
    # a new device takes the freed row and starts from scratch
    await h.add("d2", "bob", battery_percent=10.0)
    assert h.svc.registry.rows["d2"] == 0
    health = await h.svc.monitor_device_health("d2")
    assert health.state is DeviceHealthState.UNVERIFIED
    assert health.trust == pytest.approx(0.65)
    assert health.reliability == 1.0
    assert h.svc.device_of(principal_of("d2")) == "d2"
    # and the old id may be registered again
    await h.online("d1", "alice")
    assert (await h.svc.monitor_device_health("d1")).trust == pytest.approx(0.65)


async def test_service_health_counts_devices(h: Harness) -> None:
    await h.online("d1")
    await h.add("d2", "bob")
    status = await h.svc.health()
    assert status.state.value == "passing"
    assert "2 devices registered, 1 online" in status.reason
