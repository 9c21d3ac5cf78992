"""Simulated devices: plausible, bounded and reproducible traces."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from fogcoord.agent.device import DeviceSpec
from fogcoord.agent.simulated import (
    DeviceClass,
    Physics,
    SimulatedDevice,
    SplitMix64,
    sample_devices,
    simulated_fleet,
)
from fogcoord.api.schemas import DeviceRegistration, Heartbeat

SPEC = DeviceSpec(cpu_cores=8, gflops=40.0, ram_mb=8192, storage_gb=64.0, region="eu-west")
PHONE = Physics(
    has_battery=True,
    idle_drain=3.0,
    load_drain=20.0,
    charge_rate=60.0,
    heat_load=18.0,
    heat_charge=6.0,
    tau=300.0,
    idle_dwell=1800.0,
    busy_dwell=360.0,
    plug_rate=0.0,
    session_hours=1.0,
    night_start=0.0,
    night_hours=0.0,
)


def _device(physics: Physics = PHONE, *, battery: float = 50.0, seed: int = 1) -> SimulatedDevice:
    return SimulatedDevice(
        DeviceClass.PHONE, SPEC, physics, SplitMix64(seed), battery=battery, ambient=22.0
    )


def _trace(device: SimulatedDevice, steps: int, dt: float) -> list[Heartbeat]:
    out = []
    for _ in range(steps):
        device.step(dt)
        out.append(device.current())
    return out


def test_battery_and_thermal_stay_in_bounds_for_a_whole_fleet_over_days() -> None:
    for device in simulated_fleet(60, seed=3):
        low, high = device.thermal_bounds()
        for beat in _trace(device, 2 * 24 * 6, 600.0):  # two days in 10-minute steps
            assert 0.0 <= beat.battery_percent <= 100.0
            assert low <= beat.thermal_celsius <= high
            assert -40.0 <= beat.thermal_celsius <= 150.0


def test_charges_while_plugged_in_and_drains_while_not() -> None:
    always_plugged = replace(PHONE, night_start=0.0, night_hours=24.0)
    plugged = _device(always_plugged, battery=30.0)
    assert plugged.plugged
    levels = [b.battery_percent for b in _trace(plugged, 60, 60.0)]
    assert all(b > a for a, b in itertools.pairwise(levels) if a < 100)
    assert levels[-1] > 80.0  # an hour at 60 %/h from 30 %, tapering past 80 %

    unplugged = _device(battery=80.0)
    assert not unplugged.plugged
    drained = [b.battery_percent for b in _trace(unplugged, 60, 60.0)]
    assert all(b <= a for a, b in itertools.pairwise(drained))
    assert drained[-1] < 80.0
    assert 80.0 - drained[-1] <= PHONE.idle_drain + PHONE.load_drain  # at most full load for 1 h


def test_battery_empties_to_zero_and_no_further_then_gets_plugged_in() -> None:
    flat = _device(replace(PHONE, idle_drain=500.0), battery=5.0)
    levels = [b.battery_percent for b in _trace(flat, 4 * 60, 60.0)]
    assert levels[0] == 0.0
    assert min(levels) == 0.0
    assert levels[-1] > 0.0  # a flat device does not stay unplugged for hours


def test_night_charging_follows_local_time() -> None:
    nightly = replace(PHONE, night_start=23.0, night_hours=8.0)
    device = SimulatedDevice(
        DeviceClass.PHONE, SPEC, nightly, SplitMix64(5), battery=40.0, start_hour=20.0
    )
    plugged = []
    for hours in (0.0, 3.5, 8.0):  # 20:00, 23:30, 07:30
        device.step(hours * 3600)
        plugged.append(device.plugged)
    assert plugged == [False, True, False]


def test_thermal_rises_under_load_and_cools_toward_ambient() -> None:
    hot = _device(replace(PHONE, idle_dwell=1e12, busy_dwell=1e12))
    hot.busy, hot.load, hot.thermal = True, 1.0, hot.ambient()
    start = hot.thermal
    hot.step(1800.0)
    assert hot.thermal > start + 10.0
    hot.busy, hot.load = False, 0.02
    hot.step(3 * 3600.0)
    assert abs(hot.thermal - hot.ambient()) < 3.0


def test_charging_warms_the_device() -> None:
    calm = replace(PHONE, idle_dwell=1e12, busy_dwell=1e12)
    charging = _device(replace(calm, night_hours=24.0), battery=10.0)
    resting = _device(calm, battery=90.0)
    for device in (charging, resting):
        device.busy, device.load, device.thermal = False, 0.05, device.ambient()
        device.step(1800.0)
    assert charging.thermal > resting.thermal + 3.0


def test_edge_boxes_are_mains_powered() -> None:
    edges = [d for d in simulated_fleet(300, seed=8) if d.kind is DeviceClass.EDGE]
    assert edges
    for device in edges:
        beat = _trace(device, 10, 600.0)[-1]
        assert (beat.battery_percent, beat.charging) == (100.0, True)


def test_same_seed_same_fleet_and_traces() -> None:
    def run(seed: int) -> list[tuple[DeviceSpec, list[Heartbeat]]]:
        return [(d.spec(), _trace(d, 20, 120.0)) for d in simulated_fleet(30, seed=seed)]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_capabilities_follow_a_realistic_mix() -> None:
    fleet = simulated_fleet(2000, seed=0)
    kinds = Counter(d.kind for d in fleet)
    assert 0.45 < kinds[DeviceClass.PHONE] / 2000 < 0.65
    assert 0.20 < kinds[DeviceClass.LAPTOP] / 2000 < 0.40
    assert 0.08 < kinds[DeviceClass.EDGE] / 2000 < 0.22
    specs = [d.spec() for d in fleet]
    assert {s.cpu_cores for s in specs} <= set(range(2, 17))
    assert all(2048 <= s.ram_mb <= 32768 for s in specs)
    assert all(2.0 <= s.gflops <= 200.0 for s in specs)
    assert len({s.region for s in specs}) >= 8
    assert len({s.network for s in specs}) == 3
    gflops = np.array([s.gflops for s in specs])
    assert 10.0 < float(np.median(gflops)) < 60.0


def test_a_simulated_device_makes_a_valid_registration() -> None:
    from fogcoord.agent.device import registration
    from fogcoord.agent.identity import DeviceIdentity

    device = SimulatedDevice.sample(np.random.default_rng(4))
    body = registration(DeviceIdentity.generate(), device.spec(), device.reading())
    assert isinstance(body, DeviceRegistration)


def test_reading_advances_by_scaled_real_time() -> None:
    now = [100.0]
    device = sample_devices(np.random.default_rng(9), 1, time_scale=60.0, now=lambda: now[0])[0]
    device.reading()
    now[0] += 30.0  # 30 real seconds at 60x = 30 simulated minutes
    device.reading()
    assert device.sim_seconds == pytest.approx(1800.0)


def test_splitmix_is_uniform_enough_and_seeded() -> None:
    a, b = SplitMix64(7), SplitMix64(7)
    xs = [a.random() for _ in range(20_000)]
    assert xs[:5] == [b.random() for _ in range(5)]
    assert all(0.0 <= x < 1.0 for x in xs)
    assert abs(sum(xs) / len(xs) - 0.5) < 0.01
    normals = [a.normal(0.0, 1.0) for _ in range(20_000)]
    assert abs(float(np.mean(normals))) < 0.05
    assert abs(float(np.std(normals)) - 1.0) < 0.05


def test_time_scale_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SimulatedDevice(DeviceClass.PHONE, SPEC, PHONE, SplitMix64(1), time_scale=0)
