"""Bursts: a bounded number at once, bounded in time on the injected clock, and their devices
kept out of every other selection until they end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fogcoord.clock import FakeClock
from fogcoord.contracts.errors import NotFound
from fogcoord.contracts.harvesting import BurstRequest, ResourceRequirements
from fogcoord.harvesting.bursts import BurstLimitReached
from fogcoord.harvesting.selection import InsufficientDevices
from tests.harvesting.support import Harness, config, harvesting

MINUTE = 60.0


@pytest.fixture
async def hb(tmp_path: Path, fake_clock: FakeClock) -> AsyncIterator[Harness]:
    """Two bursts at most, 30 minutes each; devices stay online for hours of fake time."""
    cfg = config(
        device_discovery={"capability_cache_ttl": 86_400.0},
        resource_allocation={"max_concurrent_bursts": 2, "burst_timeout_minutes": 30},
    )
    async with harvesting(tmp_path / "h.db", cfg, clock=fake_clock) as h:
        for i in range(6):
            await h.online(f"d{i}", f"owner-{i}")
        yield h


def burst(devices: int, minutes: float | None = None) -> BurstRequest:
    return BurstRequest(requester="req_alice", devices=devices, duration_minutes=minutes)


async def selectable(h: Harness) -> set[str]:
    """Every device a selection may offer now."""
    for count in range(6, 0, -1):
        try:
            return set(await h.svc.select_participants(ResourceRequirements(count=count)))
        except InsufficientDevices:
            continue
    return set()


async def test_reserved_devices_are_not_offered(hb: Harness) -> None:
    first = await hb.svc.coordinate_burst(burst(2))
    reserved = set(hb.svc.bursts.bursts[first].devices)
    assert len(reserved) == 2
    assert await selectable(hb) == {f"d{i}" for i in range(6)} - reserved
    with pytest.raises(InsufficientDevices) as err:
        await hb.svc.select_participants(ResourceRequirements(count=5))
    assert err.value.fields["excluded"]["reserved_by_burst"] == 2
    # a second burst takes from what is left, never the same device twice
    second = await hb.svc.coordinate_burst(burst(4))
    assert reserved.isdisjoint(hb.svc.bursts.bursts[second].devices)
    assert await selectable(hb) == set()
    # reserved devices are still eligible (for settlement), just not offered
    assert all((await hb.svc.check_eligibility(sorted(reserved))).values())


async def test_the_burst_after_the_limit_is_refused(hb: Harness) -> None:
    a = await hb.svc.coordinate_burst(burst(1))
    await hb.svc.coordinate_burst(burst(1))
    before = await selectable(hb)
    with pytest.raises(BurstLimitReached) as err:
        await hb.svc.coordinate_burst(burst(1))
    assert err.value.code == "burst_limit_reached"
    assert err.value.http_status == 409
    assert err.value.fields == {"limit": 2}
    assert await selectable(hb) == before, "a refused burst reserves nothing"
    hb.svc.release_burst(a)
    await hb.svc.coordinate_burst(burst(1))


async def test_release_returns_devices_at_once(hb: Harness) -> None:
    b = await hb.svc.coordinate_burst(burst(3))
    devices = set(hb.svc.bursts.bursts[b].devices)
    hb.svc.release_burst(b)
    assert devices <= await selectable(hb)
    assert b not in hb.svc.bursts.bursts
    with pytest.raises(NotFound):
        hb.svc.release_burst(b)
    with pytest.raises(NotFound):
        hb.svc.release_burst("burst-nonexistent")


async def test_a_burst_expires_after_the_timeout(hb: Harness) -> None:
    b = await hb.svc.coordinate_burst(burst(6))
    assert await selectable(hb) == set()
    await hb.clock.advance_and_settle(30 * MINUTE - 1)
    assert await selectable(hb) == set()
    assert b in hb.svc.bursts.bursts
    # the 30 minutes are up: the devices are offered again, with or without a scan in between
    await hb.clock.advance_and_settle(1)
    assert await selectable(hb) == {f"d{i}" for i in range(6)}
    await hb.svc.scan()
    assert b not in hb.svc.bursts.bursts


async def test_a_shorter_requested_duration_wins(hb: Harness) -> None:
    short = await hb.svc.coordinate_burst(burst(2, minutes=1))
    long = await hb.svc.coordinate_burst(burst(2, minutes=90))  # capped at 30
    short_devices = set(hb.svc.bursts.bursts[short].devices)
    long_devices = set(hb.svc.bursts.bursts[long].devices)
    await hb.clock.advance_and_settle(MINUTE)
    assert short_devices <= await selectable(hb)
    assert long_devices.isdisjoint(await selectable(hb))
    # the expired burst no longer counts against the limit
    await hb.svc.coordinate_burst(burst(1))
    await hb.clock.advance_and_settle(29 * MINUTE)
    assert long_devices <= await selectable(hb)


async def test_expiry_by_the_periodic_scan(hb: Harness) -> None:
    b = await hb.svc.coordinate_burst(burst(2))
    devices = hb.svc.bursts.bursts[b].devices
    scans = 0
    while b in hb.svc.bursts.bursts:
        await hb.clock.advance_and_settle(hb.svc.config.device_discovery.scan_interval_seconds)
        scans += 1
    assert scans == 15  # 30 minutes of 120-second scans
    reg = hb.svc.registry
    assert not any(reg.reserved[reg.rows[d]] for d in devices)


async def test_a_burst_needs_enough_devices(hb: Harness) -> None:
    with pytest.raises(InsufficientDevices):
        await hb.svc.coordinate_burst(burst(7))
    assert hb.svc.bursts.bursts == {}
    assert len(await selectable(hb)) == 6
    req = BurstRequest(
        requester="req_alice",
        devices=2,
        requirements=ResourceRequirements(count=5, exclude_owners=("owner-0", "owner-1")),
    )
    b = await hb.svc.coordinate_burst(req)
    assert len(hb.svc.bursts.bursts[b].devices) == 2  # the request's count wins
    assert not {"d0", "d1"} & set(hb.svc.bursts.bursts[b].devices)


async def test_a_deregistered_reserved_device_frees_its_row(hb: Harness) -> None:
    b = await hb.svc.coordinate_burst(burst(6))
    await hb.svc.deregister_device("d3")
    await hb.online("new", "owner-new")
    assert await selectable(hb) == {"new"}
    hb.svc.release_burst(b)
    assert len(await selectable(hb)) == 6
