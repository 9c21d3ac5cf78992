from __future__ import annotations

import numpy as np
import pytest

from fogcoord.agent.telemetry import FleetStats, NullRecorder, Percentiles


def test_percentiles_in_milliseconds() -> None:
    p = Percentiles.of(np.arange(1, 101, dtype=np.float64) / 1000.0)
    assert p.p50 == pytest.approx(50.5)
    assert p.p99 == pytest.approx(99.01)
    assert p.max == 100.0
    assert p.count == 100
    assert Percentiles.of(np.empty(0)).count == 0


def test_fleet_stats_counts() -> None:
    now = [10.0]
    stats = FleetStats(lambda: now[0])
    stats.registered(0.5)
    now[0] = 12.0
    stats.registered(0.1)
    assert stats.registration_seconds() == pytest.approx(2.5)
    stats.channel(True)
    stats.channel(True)
    stats.channel(False)
    assert (stats.online, stats.peak_online) == (1, 2)
    stats.heartbeat(0.002, "channel")
    stats.heartbeat(0.004, "http")
    stats.mark_steady()
    stats.heartbeat(0.010, "channel")
    stats.error("connect")
    stats.error("connect")
    stats.reconnect()
    assert (stats.heartbeats, stats.http_heartbeats) == (3, 1)
    assert stats.error_count == 2
    assert stats.reconnects == 1
    assert stats.latency().count == 3
    assert stats.latency(stats.steady_index or 0).p50 == 10.0
    stats.heartbeat(0.001, "channel")  # the array still grows after a percentile was taken
    assert stats.latency().count == 4


def test_null_recorder_accepts_everything() -> None:
    r = NullRecorder()
    r.registered(1.0)
    r.heartbeat(0.1, "http")
    r.error("x")
    r.channel(True)
    r.reconnect()
