"""A restart loses no device: registrations at once, live state written behind by the flush loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from fogcoord.clock import FakeClock
from fogcoord.contracts.errors import Conflict
from fogcoord.contracts.harvesting import DeviceHealthState, NetworkType
from fogcoord.harvesting.store import DeviceRecord, SqlDeviceStore
from tests.harvesting.support import harvesting, principal_of

FLUSH = 5.0


def stored(engine: Engine) -> dict[str, DeviceRecord]:
    return {r.device_id: r for r in SqlDeviceStore(engine).load()}


async def test_devices_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    clock = FakeClock()
    async with harvesting(db, clock=clock) as h:
        await h.online(
            "phone",
            "alice",
            cpu_cores=8,
            gflops=12.5,
            ram_mb=6144,
            storage_gb=64.0,
            network=NetworkType.CELLULAR,
            bandwidth_mbps=42.0,
            platform="android",
            region="eu-west",
            public_key="ab" * 32,
        )
        await h.online("laptop", "bob", charging=True, battery_percent=33.0)
        await h.online("gone", "bob")
        await h.add("quiet", "carol")
        for ok in (True, True, False, True):
            await h.svc.record_result("phone", ok)
        await h.svc.record_result("laptop", valid=True)
        await h.beat("phone", battery=61.0, charging=False, thermal=39.0)
        await h.svc.deregister_device("gone")
        assert await h.svc.flush() == 2
        assert await h.svc.flush() == 0  # nothing changed since
        before = {d.device_id: d for d in h.svc.list_devices()}
        eligible_before = await h.svc.check_eligibility([*before, "gone"])
        # the cheat on the phone cost it its eligibility; the laptop is fine
        assert eligible_before == {"phone": False, "laptop": True, "quiet": False, "gone": False}
        health_before = {d: await h.svc.monitor_device_health(d) for d in before}

    clock.advance(30)  # a quick restart: still within the TTL
    async with harvesting(db, clock=clock) as h2:
        after = {d.device_id: d for d in h2.svc.list_devices()}
        assert set(after) == {"phone", "laptop", "quiet"}
        assert after == before
        phone = after["phone"]
        assert (phone.owner, phone.platform, phone.region) == ("alice", "android", "eu-west")
        assert (phone.cpu_cores, phone.ram_mb, phone.network) == (8, 6144, NetworkType.CELLULAR)
        assert (phone.battery_percent, phone.thermal_celsius) == (61.0, 39.0)
        for d, old in health_before.items():
            new = await h2.svc.monitor_device_health(d)
            assert new.trust == pytest.approx(old.trust, abs=1e-7)
            assert new.reliability == pytest.approx(old.reliability, abs=1e-7)
            assert new.state == old.state
            assert new.last_seen == old.last_seen
        assert (await h2.svc.monitor_device_health("quiet")).state is DeviceHealthState.UNVERIFIED
        assert h2.svc.device_of(principal_of("phone")) == "phone"
        assert await h2.svc.check_eligibility([*before, "gone"]) == eligible_before
        # the deregistered id is free, the others are taken
        await h2.add("gone", "dave")
        with pytest.raises(Conflict):
            await h2.add("phone", "mallory")


async def test_a_long_outage_brings_devices_back_offline(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    clock = FakeClock()
    async with harvesting(db, clock=clock) as h:
        await h.online("d1")
    clock.advance(3600)
    async with harvesting(db, clock=clock) as h2:
        health = await h2.svc.monitor_device_health("d1")
        assert health.state is DeviceHealthState.CRITICAL
        assert not (await h2.svc.check_eligibility(["d1"]))["d1"]
        assert await h2.svc.discover_devices() == []
        assert (await h2.beat("d1")).state is DeviceHealthState.PASSING


async def test_live_state_is_written_behind_by_the_flush_loop(tmp_path: Path) -> None:
    async with harvesting(tmp_path / "h.db") as h:
        await h.add("d1")
        registered = stored(h.engine)["d1"]
        assert (registered.verified, registered.last_seen) == (False, 0.0)
        await h.beat("d1", battery=42.0, charging=True, thermal=33.0)
        await h.svc.record_result("d1", valid=False)
        assert stored(h.engine)["d1"] == registered  # not yet
        await h.clock.advance_and_settle(FLUSH)
        for _ in range(500):  # the write runs in a worker thread: wait for it, 5 s at most
            if stored(h.engine)["d1"] != registered:
                break
            await asyncio.sleep(0.01)
        row = stored(h.engine)["d1"]
        assert (row.battery, row.charging, row.thermal) == (42.0, True, 33.0)
        assert row.verified
        assert row.last_seen == h.clock.time() - FLUSH
        assert row.trust == pytest.approx(0.325)
        assert (row.valid, row.invalid, row.reliability) == (0.0, 1.0, 0.0)
        # identity columns are never touched by the flush
        assert (row.owner, row.principal_id, row.registered_at) == (
            registered.owner,
            registered.principal_id,
            registered.registered_at,
        )


async def test_stop_flushes_pending_state(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    async with harvesting(db) as h:
        await h.online("d1")
        await h.beat("d1", battery=77.0)
        engine = h.engine
        assert stored(engine)["d1"].battery == 80.0
    # the engine is disposed with the harness; read the file anew
    async with harvesting(db) as h2:
        row = stored(h2.engine)["d1"]
        assert row.battery == 77.0
        assert row.verified
