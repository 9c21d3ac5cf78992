"""Reading the real machine: cores, memory, free disk, battery, temperature, network, platform.

Everything comes from psutil where the platform offers it, with documented fall-backs:

- no battery (desktops, servers, most VMs): ``100 %`` and ``charging=True``, i.e. mains powered;
- no temperature sensors: :data:`DEFAULT_THERMAL_CELSIUS` (a typical idle CPU package);
- network type from interface names (``eth*``/``en*`` ethernet, ``wl*`` Wi-Fi, ``wwan*``/
  ``rmnet*`` cellular); ``unknown`` when nothing recognisable is up.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from fogcoord.contracts.harvesting import NetworkType

DEFAULT_THERMAL_CELSIUS = 35.0
"""Reported when the machine exposes no temperature sensor: a typical idle CPU package."""
MIN_VALID_CELSIUS = -40.0
MAX_VALID_CELSIUS = 150.0

_IGNORED_PREFIXES: tuple[str, ...] = ("lo", "docker", "veth", "br-", "virbr", "vmnet", "tun", "tap")
_IGNORED_PREFIXES += ("utun", "zt", "wg", "tailscale", "awdl", "llw", "anpi", "bridge", "gif")
_IGNORED_PREFIXES += ("stf", "vboxnet")
_WIFI_PREFIXES = ("wl", "wifi", "ath", "ra", "wi-fi", "wireless")
_CELLULAR_PREFIXES = ("wwan", "rmnet", "ccmni", "pdp_ip", "usb", "cellular", "mobile")
_ETHERNET_PREFIXES = ("eth", "en", "em", "ethernet", "ib")


@dataclass(frozen=True, slots=True)
class LiveState:
    """What changes between heartbeats."""

    battery_percent: float
    charging: bool
    thermal_celsius: float


@dataclass(frozen=True, slots=True)
class MachineInfo:
    """What a device offers, read once at start-up."""

    cpu_cores: int
    ram_mb: int
    storage_gb: float
    network: NetworkType
    bandwidth_mbps: float
    platform: str


def cpu_cores() -> int:
    return int(psutil.cpu_count(logical=True) or os.cpu_count() or 1)


def ram_mb() -> int:
    return max(1, int(psutil.virtual_memory().total // 2**20))


def free_storage_gb(path: Path) -> float:
    """Free disk space where the agent keeps its state (and would keep task data), in GB."""
    probe_at = Path(path)
    while not probe_at.exists() and probe_at != probe_at.parent:
        probe_at = probe_at.parent
    return round(psutil.disk_usage(str(probe_at)).free / 1e9, 3)


def battery() -> tuple[float, bool]:
    """(percent, charging); mains-powered machines without a battery report (100, True)."""
    read = getattr(psutil, "sensors_battery", None)
    try:
        status = read() if read is not None else None
    except (OSError, RuntimeError, NotImplementedError):
        status = None
    if status is None:
        return 100.0, True
    percent = min(100.0, max(0.0, float(status.percent)))
    plugged = status.power_plugged
    # power_plugged is None when the platform cannot tell; a full battery usually means mains
    return percent, bool(plugged) if plugged is not None else percent >= 100.0


def temperature() -> float:
    """The hottest current sensor reading, or :data:`DEFAULT_THERMAL_CELSIUS`."""
    read = getattr(psutil, "sensors_temperatures", None)
    try:
        sensors = read() if read is not None else {}
    except (OSError, RuntimeError, NotImplementedError):
        sensors = {}
    values = [
        float(entry.current)
        for entries in (sensors or {}).values()
        for entry in entries
        if entry.current is not None and MIN_VALID_CELSIUS <= entry.current <= MAX_VALID_CELSIUS
    ]
    return max(values) if values else DEFAULT_THERMAL_CELSIUS


def classify_interface(name: str) -> NetworkType | None:
    """The network type an interface name suggests; None for loopback and virtual interfaces."""
    low = name.lower()
    if low.startswith(_IGNORED_PREFIXES):
        return None
    if low.startswith(_WIFI_PREFIXES):
        return NetworkType.WIFI
    if low.startswith(_CELLULAR_PREFIXES):
        return NetworkType.CELLULAR
    if low.startswith(_ETHERNET_PREFIXES):
        return NetworkType.ETHERNET
    return None


_PREFERENCE = (NetworkType.ETHERNET, NetworkType.WIFI, NetworkType.CELLULAR)


def network() -> tuple[NetworkType, float]:
    """(type, link speed in Mbps or 0) of the best interface that is up, best effort."""
    try:
        stats = psutil.net_if_stats()
    except (OSError, RuntimeError):
        return NetworkType.UNKNOWN, 0.0
    found: dict[NetworkType, float] = {}
    for name, st in stats.items():
        kind = classify_interface(name)
        if kind is None or not st.isup:
            continue
        found[kind] = max(found.get(kind, 0.0), float(max(st.speed, 0)))
    for kind in _PREFERENCE:
        if kind in found:
            return kind, found[kind]
    return NetworkType.UNKNOWN, 0.0


def platform_name() -> str:
    return f"{sys.platform}/{platform.machine() or 'unknown'}"[:64]


def machine_info(state_dir: Path) -> MachineInfo:
    net, speed = network()
    return MachineInfo(
        cpu_cores=cpu_cores(),
        ram_mb=ram_mb(),
        storage_gb=free_storage_gb(state_dir),
        network=net,
        bandwidth_mbps=speed,
        platform=platform_name(),
    )


def live_state() -> LiveState:
    percent, charging = battery()
    return LiveState(battery_percent=percent, charging=charging, thermal_celsius=temperature())
