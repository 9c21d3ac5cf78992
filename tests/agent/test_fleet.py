"""A small simulated fleet against a real coordinator, in-process."""

from __future__ import annotations

import pytest

from fogcoord.agent.fleet import Fleet, FleetProgress, raise_open_file_limit
from fogcoord.auth.models import PrincipalKind
from fogcoord.client import FogApiError
from tests.agent.conftest import LiveApi


async def test_a_fleet_registers_every_device_under_a_few_owners(live_api: LiveApi) -> None:
    seen: list[FleetProgress] = []
    fleet = Fleet(live_api.url, live_api.operator_key, 12, interval=0.1, seed=3)
    report = await fleet.run(duration=0.5, duration_after_startup=True, on_progress=seen.append)
    assert report.registered == 12
    assert report.failed == 0
    assert report.errors == 0
    assert report.owners == 2  # ten devices per owner
    assert report.startup_seconds is not None
    assert report.online == 12
    assert report.heartbeats >= 12
    assert report.steady_latency_ms.count > 0
    assert report.latency_ms.p50 <= report.latency_ms.p99
    assert seen
    assert seen[-1].registered == 12
    devices = await live_api.operator.devices(online=True, limit=100)
    assert len(devices) == 12
    assert len({d.owner for d in devices}) == 2
    assert {d.region for d in devices} <= {s.region for s in (d.spec() for d in fleet.devices)}
    data = report.to_json()
    assert data["startup_complete"] is True
    assert set(data["latency_ms"]) >= {"p50", "p95", "p99"}


async def test_a_fleet_can_use_existing_owner_keys(live_api: LiveApi) -> None:
    owners = [
        (await live_api.operator.create_key(kind=PrincipalKind.REQUESTER, name=f"o{i}")).key
        for i in range(3)
    ]
    fleet = Fleet(live_api.url, n=6, owner_keys=owners, interval=0.2, seed=1)
    report = await fleet.run(duration=2.0)
    assert report.registered == 6
    devices = await live_api.operator.devices(limit=100)
    assert len({d.owner for d in devices}) == 3


async def test_a_fleet_needs_an_operator_key(live_api: LiveApi) -> None:
    requester = await live_api.operator.create_key(kind=PrincipalKind.REQUESTER, name="r")
    fleet = Fleet(live_api.url, requester.key, 3, interval=1.0)
    with pytest.raises(FogApiError) as caught:
        await fleet.run(duration=1.0)
    assert caught.value.status == 403


def test_fleet_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        Fleet("http://x", "k", 0)
    with pytest.raises(ValueError):
        Fleet("http://x", None, 3)


def test_open_file_limit_is_raised_within_the_hard_limit() -> None:
    assert raise_open_file_limit(64) >= 64
