"""Device suitability: hard limits, hysteresis and a documented score.

Hard limits (any one excludes a device): offline, thermally throttled, battery low while not
charging, trust below ``min_trust_score``, RAM below ``min_ram_mb``.

Like BOINC's Android client, a device that is charging may compute at any battery level; on
battery it must hold ``min_battery_percent``. Both thresholds have hysteresis so a device near a
limit does not flap: once below the battery minimum it stays excluded until it climbs
``battery_resume_margin_percent`` above it (or starts charging); once at ``max_thermal_celsius``
it stays throttled until it cools to ``thermal_resume_celsius``.

Score, in [0, 1], a weighted sum of components each in [0, 1]:

| component   | weight | value                                                      |
|-------------|--------|------------------------------------------------------------|
| battery     | 0.15   | 1 when charging, else battery % / 100                      |
| charging    | 0.10   | 1 when charging, else 0                                    |
| thermal     | 0.15   | 1 at or below 25 °C, falling linearly to 0 at the maximum  |
| ram         | 0.15   | RAM / (2 x min_ram_mb), capped at 1                        |
| trust       | 0.25   | the device's trust score                                   |
| reliability | 0.20   | share of its recent results verified valid                 |
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fogcoord.config import ParticipantSelectionConfig
from fogcoord.harvesting.registry import DeviceRegistry

WEIGHTS = {
    "battery": 0.15,
    "charging": 0.10,
    "thermal": 0.15,
    "ram": 0.15,
    "trust": 0.25,
    "reliability": 0.20,
}
COOL_CELSIUS = 25.0

LIMITS = ("offline", "thermal", "battery", "trust", "ram")
"""Hard limits in the order they are reported when explaining exclusions."""


def update_hysteresis(reg: DeviceRegistry, r: int, cfg: ParticipantSelectionConfig) -> None:
    """Recompute the throttle and low-battery latches of row ``r`` after a state report."""
    t = float(reg.thermal[r])
    if t >= cfg.max_thermal_celsius:
        reg.throttled[r] = True
    elif t <= cfg.thermal_resume_celsius:
        reg.throttled[r] = False
    if reg.charging[r]:
        reg.battery_low[r] = False
    else:
        b = float(reg.battery[r])
        if b < cfg.min_battery_percent:
            reg.battery_low[r] = True
        elif b >= cfg.min_battery_percent + cfg.battery_resume_margin_percent:
            reg.battery_low[r] = False


def components(
    reg: DeviceRegistry, cfg: ParticipantSelectionConfig, rows: npt.NDArray[np.intp] | slice
) -> dict[str, npt.NDArray[np.float32]]:
    charging = reg.charging[rows]
    span = max(cfg.max_thermal_celsius - COOL_CELSIUS, 1e-6)
    ram_full = max(2.0 * cfg.min_ram_mb, 1.0)
    return {
        "battery": np.where(charging, 1.0, reg.battery[rows] / 100.0).astype(np.float32),
        "charging": charging.astype(np.float32),
        "thermal": np.clip((cfg.max_thermal_celsius - reg.thermal[rows]) / span, 0, 1).astype(
            np.float32
        ),
        "ram": np.clip(reg.ram_mb[rows] / ram_full, 0, 1).astype(np.float32),
        "trust": reg.trust[rows],
        "reliability": reg.reliability[rows],
    }


def scores(
    reg: DeviceRegistry, cfg: ParticipantSelectionConfig, rows: npt.NDArray[np.intp] | slice
) -> npt.NDArray[np.float32]:
    parts = components(reg, cfg, rows)
    total = np.zeros_like(parts["trust"], dtype=np.float32)
    for name, weight in WEIGHTS.items():
        total += np.float32(weight) * parts[name]
    return total


def limit_masks(
    reg: DeviceRegistry, cfg: ParticipantSelectionConfig
) -> dict[str, npt.NDArray[np.bool_]]:
    """For each hard limit, which used rows it excludes."""
    n = reg.size
    return {
        "offline": ~(reg.active[:n] & reg.online[:n]),
        "thermal": reg.throttled[:n],
        "battery": reg.battery_low[:n],
        "trust": reg.trust[:n] < cfg.min_trust_score,
        "ram": reg.ram_mb[:n] < cfg.min_ram_mb,
    }


def eligible_mask(reg: DeviceRegistry, cfg: ParticipantSelectionConfig) -> npt.NDArray[np.bool_]:
    n = reg.size
    return (
        reg.active[:n]
        & reg.online[:n]
        & ~reg.throttled[:n]
        & ~reg.battery_low[:n]
        & (reg.trust[:n] >= cfg.min_trust_score)
        & (reg.ram_mb[:n] >= cfg.min_ram_mb)
    )


def reasons(reg: DeviceRegistry, r: int, cfg: ParticipantSelectionConfig) -> list[str]:
    out = []
    if not (reg.active[r] and reg.online[r]):
        out.append("offline" if reg.verified[r] else "unverified: no heartbeat yet")
    if reg.throttled[r]:
        out.append(
            f"thermal throttled at {float(reg.thermal[r]):.1f} C (resumes at "
            f"{cfg.thermal_resume_celsius:.0f} C)"
        )
    if reg.battery_low[r]:
        out.append(
            f"battery {float(reg.battery[r]):.0f}% on battery power (needs "
            f"{cfg.min_battery_percent:.0f}% to start, "
            f"{cfg.min_battery_percent + cfg.battery_resume_margin_percent:.0f}% to resume)"
        )
    if reg.trust[r] < cfg.min_trust_score:
        out.append(f"trust {float(reg.trust[r]):.2f} below {cfg.min_trust_score}")
    if reg.ram_mb[r] < cfg.min_ram_mb:
        out.append(f"RAM {int(reg.ram_mb[r])} MB below {cfg.min_ram_mb} MB")
    return out
