"""Simulated devices: phones, laptops and edge boxes with plausible battery and thermal traces.

A fleet is drawn from one seeded ``numpy.random.Generator`` (:func:`simulated_fleet`): device
class (55 % phones, 30 % laptops, 15 % edge boxes), region, capabilities (cores 2-16, RAM 2-32 GB,
2-200 GFLOPS, network and bandwidth), the constants of its power and thermal model, and its
starting state. Each device then draws its own noise from a SplitMix64 stream seeded from that
Generator, so its trace does not depend on the order heartbeats happen in (a numpy Generator per
device would cost about a kilobyte and several microseconds a draw; 10,000 devices share a loop).
Same seed and size, same fleet, same traces.

The model, per step of at most :data:`MAX_STEP_SECONDS`:

- **Load** switches between idle (2-20 %) and busy (50-100 %) with exponential dwell times.
- **Power**: a device is plugged in during its night-charging window (most phones, some laptops,
  in the local time of its region) or during a random plug session (a rate per hour, six times
  higher when the battery is low; exponential length). Edge boxes are mains powered: 100 % and
  charging, always.
- **Battery** drains while unplugged at ``idle_drain + load * load_drain`` %/h and charges while
  plugged at ``charge_rate`` %/h, tapering above 80 % (the constant-voltage phase); it never
  leaves 0-100.
- **Thermal** relaxes toward ``ambient + load * heat_load`` (``+ heat_charge`` while charging)
  with time constant ``tau`` (Newton cooling), plus a little noise; ambient follows the time of
  day. It stays within :meth:`SimulatedDevice.thermal_bounds`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from fogcoord.agent.device import DeviceSpec
from fogcoord.api.schemas import Heartbeat
from fogcoord.contracts.harvesting import NetworkType

MAX_STEP_SECONDS = 60.0
DIURNAL_AMPLITUDE = 2.0
"""Half the day-night swing of ambient temperature, degrees C (warmest at 15:00 local)."""
LOW_BATTERY = 20.0
MIN_GFLOPS, MAX_GFLOPS = 2.0, 200.0


class DeviceClass(StrEnum):
    PHONE = "phone"
    LAPTOP = "laptop"
    EDGE = "edge"


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    utc_offset: float
    weight: float


REGIONS = (
    Region("us-east", -5.0, 0.18),
    Region("us-west", -8.0, 0.10),
    Region("sa-east", -3.0, 0.06),
    Region("eu-west", 0.0, 0.15),
    Region("eu-central", 1.0, 0.15),
    Region("af-south", 2.0, 0.04),
    Region("ap-south", 5.5, 0.13),
    Region("ap-southeast", 8.0, 0.09),
    Region("ap-northeast", 9.0, 0.10),
)

Range = tuple[float, float]
Weighted = tuple[Sequence[Any], Sequence[float]]


@dataclass(frozen=True)
class ClassModel:
    """How one class of device is drawn: capability distributions and model constants."""

    share: float
    cores: Weighted
    gflops_per_core: tuple[float, float]  # lognormal median, sigma
    ram_gb: Weighted
    storage_gb: Range
    networks: Weighted
    platforms: Weighted
    ambient: tuple[float, float]  # normal mean, sd
    has_battery: bool
    idle_drain: Range = (0.0, 0.0)
    load_drain: Range = (0.0, 0.0)
    charge_rate: Range = (0.0, 0.0)
    heat_load: Range = (10.0, 20.0)
    heat_charge: Range = (0.0, 0.0)
    tau: Range = (300.0, 600.0)
    idle_dwell: float = 1800.0
    busy_dwell: float = 600.0
    plug_rate: float = 0.0
    session_hours: float = 1.0
    night_share: float = 0.0
    night_start: tuple[float, float] = (23.0, 1.0)
    night_hours: tuple[float, float, float, float] = (7.5, 1.0, 5.0, 10.0)  # mean, sd, min, max


MODELS: dict[DeviceClass, ClassModel] = {
    DeviceClass.PHONE: ClassModel(
        share=0.55,
        cores=((4, 6, 8), (0.15, 0.25, 0.6)),
        gflops_per_core=(3.0, 0.45),
        ram_gb=((2, 3, 4, 6, 8, 12, 16), (8, 10, 22, 22, 20, 13, 5)),
        storage_gb=(4.0, 120.0),
        networks=((NetworkType.WIFI, NetworkType.CELLULAR), (0.7, 0.3)),
        platforms=(("android/arm64", "ios/arm64"), (0.72, 0.28)),
        ambient=(24.0, 3.0),
        has_battery=True,
        idle_drain=(1.5, 4.0),
        load_drain=(15.0, 30.0),
        charge_rate=(50.0, 90.0),
        heat_load=(12.0, 22.0),
        heat_charge=(4.0, 8.0),
        tau=(240.0, 420.0),
        idle_dwell=1800.0,
        busy_dwell=360.0,
        plug_rate=1 / 6,
        session_hours=0.75,
        night_share=0.8,
        night_start=(23.0, 1.0),
        night_hours=(7.5, 1.0, 5.0, 10.0),
    ),
    DeviceClass.LAPTOP: ClassModel(
        share=0.30,
        cores=((2, 4, 6, 8, 12, 16), (5, 30, 15, 30, 12, 8)),
        gflops_per_core=(9.0, 0.4),
        ram_gb=((4, 8, 16, 32), (10, 40, 38, 12)),
        storage_gb=(20.0, 500.0),
        networks=((NetworkType.WIFI, NetworkType.ETHERNET), (0.8, 0.2)),
        platforms=(("win32/AMD64", "darwin/arm64", "linux/x86_64"), (0.5, 0.25, 0.25)),
        ambient=(23.0, 2.5),
        has_battery=True,
        idle_drain=(6.0, 12.0),
        load_drain=(25.0, 45.0),
        charge_rate=(35.0, 60.0),
        heat_load=(18.0, 35.0),
        heat_charge=(2.0, 4.0),
        tau=(120.0, 240.0),
        idle_dwell=1200.0,
        busy_dwell=900.0,
        plug_rate=1 / 3,
        session_hours=2.5,
        night_share=0.25,
        night_start=(22.5, 1.0),
        night_hours=(9.0, 1.0, 6.0, 12.0),
    ),
    DeviceClass.EDGE: ClassModel(
        share=0.15,
        cores=((2, 4, 8, 16), (20, 45, 25, 10)),
        gflops_per_core=(5.0, 0.6),
        ram_gb=((2, 4, 8, 16, 32), (15, 35, 30, 15, 5)),
        storage_gb=(16.0, 1000.0),
        networks=((NetworkType.ETHERNET, NetworkType.WIFI), (0.8, 0.2)),
        platforms=(("linux/aarch64", "linux/x86_64"), (0.6, 0.4)),
        ambient=(25.0, 5.0),
        has_battery=False,
        heat_load=(10.0, 30.0),
        tau=(400.0, 900.0),
        idle_dwell=900.0,
        busy_dwell=1200.0,
    ),
}

BANDWIDTH_MEDIAN_MBPS = {
    NetworkType.WIFI: 80.0,
    NetworkType.ETHERNET: 400.0,
    NetworkType.CELLULAR: 25.0,
    NetworkType.UNKNOWN: 10.0,
}


@dataclass(frozen=True, slots=True)
class Physics:
    """The constants of one device's power and thermal model (drawn once per device)."""

    has_battery: bool
    idle_drain: float  # %/h while idle and unplugged
    load_drain: float  # extra %/h at full load
    charge_rate: float  # %/h while plugged in, below 80 %
    heat_load: float  # degrees C above ambient at full load
    heat_charge: float  # degrees C above ambient while charging
    tau: float  # thermal time constant, seconds
    idle_dwell: float  # mean seconds idle
    busy_dwell: float  # mean seconds busy
    plug_rate: float  # plug-ins per hour while unplugged (battery not low)
    session_hours: float  # mean length of a daytime plug session
    night_start: float  # local hour the night charge starts
    night_hours: float  # 0: no night charging

    def in_night(self, hour: float) -> bool:
        return self.night_hours > 0 and (hour - self.night_start) % 24.0 < self.night_hours


_MASK64 = (1 << 64) - 1


class SplitMix64:
    """A tiny seeded stream of uniform floats (SplitMix64; 8 bytes of state)."""

    __slots__ = ("state",)

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK64

    def random(self) -> float:
        """Uniform in [0, 1)."""
        z = self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return ((z ^ (z >> 31)) >> 11) * 2.0**-53

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def exponential(self, mean: float) -> float:
        return -mean * math.log1p(-self.random())

    def normal(self, mu: float, sigma: float) -> float:
        """Box-Muller (one of the pair)."""
        u = 1.0 - self.random()
        return mu + sigma * math.sqrt(-2.0 * math.log(u)) * math.cos(2 * math.pi * self.random())


class SimulatedDevice:
    """One simulated device (a :class:`~fogcoord.agent.device.DeviceSource`)."""

    __slots__ = (
        "_ambient",
        "_last",
        "_now",
        "_session_left",
        "_spec",
        "battery",
        "busy",
        "kind",
        "load",
        "noise",
        "physics",
        "plugged",
        "sim_seconds",
        "start_hour",
        "thermal",
        "time_scale",
    )

    def __init__(
        self,
        kind: DeviceClass,
        spec: DeviceSpec,
        physics: Physics,
        noise: SplitMix64,
        *,
        battery: float = 100.0,
        ambient: float = 23.0,
        start_hour: float = 12.0,
        time_scale: float = 1.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.kind = kind
        self._spec = spec
        self.physics = physics
        self.noise = noise
        self._ambient = ambient
        self.start_hour = start_hour % 24.0
        self.time_scale = time_scale
        self._now = now
        self._last: float | None = None
        self.sim_seconds = 0.0
        busy_share = physics.busy_dwell / (physics.busy_dwell + physics.idle_dwell)
        self.busy = noise.random() < busy_share
        self.load = self._draw_load()
        self._session_left = 0.0
        if physics.has_battery and noise.random() < 0.15:
            self._session_left = noise.exponential(physics.session_hours * 3600.0)
        self.battery = min(100.0, max(0.0, battery)) if physics.has_battery else 100.0
        self.plugged = self._plugged_now()
        low, high = self.thermal_bounds()
        self.thermal = min(high, max(low, self.ambient() + 0.8 * self.load * physics.heat_load))

    @classmethod
    def sample(
        cls,
        rng: np.random.Generator,
        *,
        start_utc_hour: float = 12.0,
        time_scale: float = 1.0,
        now: Callable[[], float] = time.monotonic,
    ) -> SimulatedDevice:
        """One random device."""
        return sample_devices(
            rng, 1, start_utc_hour=start_utc_hour, time_scale=time_scale, now=now
        )[0]

    # --- DeviceSource --------------------------------------------------------------------------

    def spec(self) -> DeviceSpec:
        return self._spec

    def reading(self) -> Heartbeat:
        """Advance by the (scaled) real time since the last reading, then report."""
        now = self._now()
        if self._last is not None:
            self.step((now - self._last) * self.time_scale)
        self._last = now
        return self.current()

    def current(self) -> Heartbeat:
        return Heartbeat(
            battery_percent=round(self.battery, 2),
            charging=self.plugged,
            thermal_celsius=round(self.thermal, 2),
        )

    # --- the model -----------------------------------------------------------------------------

    @property
    def local_hour(self) -> float:
        return (self.start_hour + self.sim_seconds / 3600.0) % 24.0

    def ambient(self) -> float:
        phase = 2 * math.pi * (self.local_hour - 9.0) / 24.0
        return self._ambient + DIURNAL_AMPLITUDE * math.sin(phase)

    def thermal_bounds(self) -> tuple[float, float]:
        """The range the temperature always stays in, degrees C."""
        p = self.physics
        low = self._ambient - DIURNAL_AMPLITUDE - 3.0
        return low, self._ambient + DIURNAL_AMPLITUDE + p.heat_load + p.heat_charge + 5.0

    def step(self, seconds: float) -> None:
        """Advance the simulation by ``seconds`` of simulated time."""
        remaining = max(0.0, seconds)
        while remaining > 0:
            dt = min(remaining, MAX_STEP_SECONDS)
            self._step(dt)
            remaining -= dt

    def _draw_load(self) -> float:
        return self.noise.uniform(0.5, 1.0) if self.busy else self.noise.uniform(0.02, 0.2)

    def _plugged_now(self) -> bool:
        p = self.physics
        return not p.has_battery or self._session_left > 0 or p.in_night(self.local_hour)

    def _step(self, dt: float) -> None:
        p = self.physics
        self.sim_seconds += dt
        dwell = p.busy_dwell if self.busy else p.idle_dwell
        if self.noise.random() < -math.expm1(-dt / dwell):
            self.busy = not self.busy
            self.load = self._draw_load()
        if p.has_battery:
            self._power(dt)
        self._heat(dt)

    def _power(self, dt: float) -> None:
        p = self.physics
        if self._session_left > 0:
            self._session_left = max(0.0, self._session_left - dt)
        elif not p.in_night(self.local_hour):
            rate = p.plug_rate * (6.0 if self.battery < LOW_BATTERY else 1.0)
            if self.battery <= 0.0:
                rate = max(rate, 4.0)  # a flat battery gets plugged in soon
            if self.noise.random() < -math.expm1(-rate * dt / 3600.0):
                seconds = self.noise.exponential(p.session_hours * 3600.0)
                self._session_left = min(8 * 3600.0, max(300.0, seconds))
        self.plugged = self._plugged_now()
        if self.plugged:
            taper = 1.0 if self.battery < 80.0 else max(0.05, (100.0 - self.battery) / 20.0)
            self.battery += p.charge_rate * taper * dt / 3600.0
        else:
            self.battery -= (p.idle_drain + self.load * p.load_drain) * dt / 3600.0
        self.battery = min(100.0, max(0.0, self.battery))

    def _heat(self, dt: float) -> None:
        p = self.physics
        charging_heat = p.heat_charge if self.plugged and self.battery < 100.0 else 0.0
        target = self.ambient() + self.load * p.heat_load + charging_heat
        alpha = -math.expm1(-dt / p.tau)
        jitter = self.noise.normal(0.0, 0.15) * math.sqrt(alpha)
        low, high = self.thermal_bounds()
        self.thermal = min(high, max(low, self.thermal + (target - self.thermal) * alpha + jitter))


def _choose(rng: np.random.Generator, options: Weighted, size: int) -> list[Any]:
    values, weights = options
    p = np.asarray(weights, dtype=float)
    picks = rng.choice(len(values), size=size, p=p / p.sum())
    return [values[int(i)] for i in picks]


def sample_devices(
    rng: np.random.Generator,
    n: int,
    *,
    start_utc_hour: float = 12.0,
    time_scale: float = 1.0,
    now: Callable[[], float] = time.monotonic,
) -> list[SimulatedDevice]:
    """``n`` random devices drawn from ``rng`` (vectorised: 10,000 take well under a second)."""
    classes = list(MODELS)
    shares = np.array([MODELS[c].share for c in classes])
    kinds = rng.choice(len(classes), size=n, p=shares / shares.sum())
    weights = np.array([r.weight for r in REGIONS])
    regions = rng.choice(len(REGIONS), size=n, p=weights / weights.sum())
    seeds = rng.integers(0, 2**63, size=n, dtype=np.int64)
    batteries = rng.uniform(15.0, 100.0, size=n)
    devices: list[SimulatedDevice | None] = [None] * n
    for index, kind in enumerate(classes):
        rows = np.flatnonzero(kinds == index)
        m = len(rows)
        if m == 0:
            continue
        model = MODELS[kind]
        cores = _choose(rng, model.cores, m)
        per_core = rng.lognormal(math.log(model.gflops_per_core[0]), model.gflops_per_core[1], m)
        ram = _choose(rng, model.ram_gb, m)
        storage = rng.uniform(*model.storage_gb, m)
        networks = _choose(rng, model.networks, m)
        bandwidth_noise = rng.lognormal(0.0, 0.5, m)
        platforms = _choose(rng, model.platforms, m)
        ambient = np.clip(rng.normal(*model.ambient, m), 5.0, 40.0)
        idle_drain = rng.uniform(*model.idle_drain, m)
        load_drain = rng.uniform(*model.load_drain, m)
        charge_rate = rng.uniform(*model.charge_rate, m)
        heat_load = rng.uniform(*model.heat_load, m)
        heat_charge = rng.uniform(*model.heat_charge, m)
        tau = rng.uniform(*model.tau, m)
        night = rng.random(m) < model.night_share
        night_start = rng.normal(*model.night_start, m) % 24.0
        mean, sd, low, high = model.night_hours
        night_hours = np.where(night, np.clip(rng.normal(mean, sd, m), low, high), 0.0)
        for j, row in enumerate(rows.tolist()):
            region = REGIONS[int(regions[row])]
            network: NetworkType = networks[j]
            spec = DeviceSpec(
                cpu_cores=int(cores[j]),
                gflops=round(min(MAX_GFLOPS, max(MIN_GFLOPS, cores[j] * float(per_core[j]))), 2),
                ram_mb=int(ram[j]) * 1024,
                storage_gb=round(float(storage[j]), 1),
                network=network,
                bandwidth_mbps=round(
                    min(1000.0, BANDWIDTH_MEDIAN_MBPS[network] * float(bandwidth_noise[j])), 1
                ),
                platform=str(platforms[j]),
                region=region.name,
            )
            physics = Physics(
                has_battery=model.has_battery,
                idle_drain=float(idle_drain[j]),
                load_drain=float(load_drain[j]),
                charge_rate=float(charge_rate[j]),
                heat_load=float(heat_load[j]),
                heat_charge=float(heat_charge[j]),
                tau=float(tau[j]),
                idle_dwell=model.idle_dwell,
                busy_dwell=model.busy_dwell,
                plug_rate=model.plug_rate,
                session_hours=model.session_hours,
                night_start=float(night_start[j]),
                night_hours=float(night_hours[j]),
            )
            devices[row] = SimulatedDevice(
                kind,
                spec,
                physics,
                SplitMix64(int(seeds[row])),
                battery=float(batteries[row]),
                ambient=float(ambient[j]),
                start_hour=start_utc_hour + region.utc_offset,
                time_scale=time_scale,
                now=now,
            )
    return [d for d in devices if d is not None]


def simulated_fleet(
    n: int,
    seed: int,
    *,
    start_utc_hour: float = 12.0,
    time_scale: float = 1.0,
    now: Callable[[], float] = time.monotonic,
) -> list[SimulatedDevice]:
    """``n`` devices from ``seed``: the same seed and size give the same fleet and traces."""
    return sample_devices(
        np.random.default_rng(seed),
        n,
        start_utc_hour=start_utc_hour,
        time_scale=time_scale,
        now=now,
    )
