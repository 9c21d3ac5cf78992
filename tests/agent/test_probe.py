"""Reading the machine, with psutil's answers replaced."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import psutil
import pytest

from fogcoord.agent import probe
from fogcoord.contracts.harvesting import NetworkType


class sbattery(NamedTuple):
    percent: float
    secsleft: int
    power_plugged: bool | None


class shwtemp(NamedTuple):
    label: str
    current: float
    high: float | None
    critical: float | None


class snicstats(NamedTuple):
    isup: bool
    duplex: int
    speed: int
    mtu: int
    flags: str


def _nic(isup: bool = True, speed: int = 0) -> snicstats:
    return snicstats(isup=isup, duplex=2, speed=speed, mtu=1500, flags="")


def test_battery_reads_percent_and_plugged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "sensors_battery", lambda: sbattery(42.5, 3600, False))
    assert probe.battery() == (42.5, False)
    monkeypatch.setattr(psutil, "sensors_battery", lambda: sbattery(80.0, -2, True))
    assert probe.battery() == (80.0, True)


def test_no_battery_means_mains_powered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "sensors_battery", lambda: None)
    assert probe.battery() == (100.0, True)
    monkeypatch.delattr(psutil, "sensors_battery")
    assert probe.battery() == (100.0, True)


def test_battery_unknown_plug_state_and_out_of_range_percent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(psutil, "sensors_battery", lambda: sbattery(100.4, -2, None))
    assert probe.battery() == (100.0, True)
    monkeypatch.setattr(psutil, "sensors_battery", lambda: sbattery(55.0, -2, None))
    assert probe.battery() == (55.0, False)


def test_battery_sensor_error_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Any:
        raise OSError("no /sys")

    monkeypatch.setattr(psutil, "sensors_battery", broken)
    assert probe.battery() == (100.0, True)


def test_temperature_is_the_hottest_valid_sensor(monkeypatch: pytest.MonkeyPatch) -> None:
    sensors = {
        "coretemp": [shwtemp("Package", 51.0, 80.0, 100.0), shwtemp("Core 0", 48.0, 80, 100)],
        "acpitz": [shwtemp("", 27.8, None, None)],
        "bogus": [shwtemp("", 3000.0, None, None)],
    }
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: sensors, raising=False)
    assert probe.temperature() == 51.0


def test_no_temperature_sensor_reports_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "sensors_temperatures", dict, raising=False)
    assert probe.temperature() == probe.DEFAULT_THERMAL_CELSIUS
    monkeypatch.delattr(psutil, "sensors_temperatures", raising=False)
    assert probe.temperature() == probe.DEFAULT_THERMAL_CELSIUS


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("eth0", NetworkType.ETHERNET),
        ("enp3s0", NetworkType.ETHERNET),
        ("eno1", NetworkType.ETHERNET),
        ("wlan0", NetworkType.WIFI),
        ("wlp2s0", NetworkType.WIFI),
        ("wwan0", NetworkType.CELLULAR),
        ("rmnet_data0", NetworkType.CELLULAR),
        ("lo", None),
        ("docker0", None),
        ("veth1234", None),
        ("tailscale0", None),
        ("mystery0", None),
    ],
)
def test_interface_names(name: str, kind: NetworkType | None) -> None:
    assert probe.classify_interface(name) is kind


def test_network_prefers_ethernet_over_wifi_and_ignores_down_links(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stats = {
        "lo": _nic(speed=0),
        "wlan0": _nic(speed=300),
        "eth0": _nic(isup=False, speed=1000),
    }
    monkeypatch.setattr(psutil, "net_if_stats", lambda: stats)
    assert probe.network() == (NetworkType.WIFI, 300.0)
    stats["eth0"] = _nic(speed=1000)
    assert probe.network() == (NetworkType.ETHERNET, 1000.0)
    monkeypatch.setattr(psutil, "net_if_stats", lambda: {"lo": _nic()})
    assert probe.network() == (NetworkType.UNKNOWN, 0.0)


def test_machine_info_and_live_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class Mem:
        total = 8 * 2**30

    class Disk:
        free = 123_456_000_000

    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 6)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: Mem())
    seen: list[str] = []

    def disk_usage(path: str) -> Disk:
        seen.append(path)
        return Disk()

    monkeypatch.setattr(psutil, "disk_usage", disk_usage)
    monkeypatch.setattr(psutil, "net_if_stats", lambda: {"eth0": _nic(speed=100)})
    monkeypatch.setattr(psutil, "sensors_battery", lambda: sbattery(64.0, 100, False))
    monkeypatch.setattr(psutil, "sensors_temperatures", dict, raising=False)
    info = probe.machine_info(tmp_path / "not" / "yet")
    assert info.cpu_cores == 6
    assert info.ram_mb == 8192
    assert info.storage_gb == 123.456
    assert seen == [str(tmp_path)]  # the nearest existing parent of the state dir
    assert info.network is NetworkType.ETHERNET
    assert info.bandwidth_mbps == 100.0
    assert "/" in info.platform
    live = probe.live_state()
    assert (live.battery_percent, live.charging) == (64.0, False)
    assert live.thermal_celsius == probe.DEFAULT_THERMAL_CELSIUS
