"""The stats service over SQLite: collection, events, windows, health, alerts, exports, retention.

Each test runs the real service on a temporary SQLite file with a fake probe (the figures the
coordinator would gather) and a fake health source, on a :class:`FakeClock`. The collection
interval is far in the future, so nothing is collected unless a test asks; advancing the clock
still runs the service's flush loop (every 5 s), so chunks reach the database as in production.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import math
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil
import pytest
import zstandard
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from fogcoord.clock import FakeClock
from fogcoord.config import SystemStatsConfig
from fogcoord.contracts.errors import ValidationFailed
from fogcoord.contracts.events import ServiceEvent
from fogcoord.contracts.harvesting import DeviceStateChangedEvent
from fogcoord.contracts.lifecycle import HealthState, HealthStatus
from fogcoord.contracts.stats import (
    AlertConfig,
    AlertState,
    AlertTransition,
    Comparison,
    ExportFormat,
    MetricEvent,
    PerformanceStats,
    TimeWindow,
)
from fogcoord.contracts.tokenomics import WalletCreated
from fogcoord.stats.service import RECENT_EVENTS, FogSystemStatsService, prometheus_name
from fogcoord.storage.engine import create_engine

F64 = npt.NDArray[np.float64]

HOST_FIGURES = {
    "process.cpu_percent",
    "process.rss_mb",
    "host.cpu_percent",
    "host.memory_percent",
}
QUIET_INTERVAL = 1e9
"""A collection interval that never comes: tests collect when they choose."""
EVERYTHING = TimeWindow(start=0.0, end=4e9)


# --- fakes and fixtures ----------------------------------------------------------------------


class Probe:
    """The system's figures as the composition root would gather them; tests set ``values``."""

    def __init__(self, **values: float) -> None:
        self.values: dict[str, float] = dict(values)
        self.calls = 0

    async def __call__(self) -> dict[str, float]:
        self.calls += 1
        return dict(self.values)


class Health:
    """The services' health verdicts as the orchestrator would report them."""

    def __init__(self) -> None:
        self.services: dict[str, HealthStatus] = {
            "harvesting": HealthStatus.passing(),
            "marketplace": HealthStatus.passing(),
            "tokenomics": HealthStatus.passing(),
        }

    async def __call__(self) -> dict[str, HealthStatus]:
        return dict(self.services)


class Published:
    """A ``publish`` callable that keeps what the service hands to the bus."""

    def __init__(self) -> None:
        self.events: list[ServiceEvent] = []

    async def __call__(self, event: ServiceEvent) -> None:
        self.events.append(event)

    def transitions(self) -> list[tuple[str, AlertState, AlertState, float]]:
        return [
            (e.rule, e.state_from, e.state_to, e.at)
            for e in self.events
            if isinstance(e, AlertTransition)
        ]


def stats_config(
    *,
    collection: dict[str, Any] | None = None,
    monitoring: dict[str, Any] | None = None,
    alerting: dict[str, Any] | None = None,
) -> SystemStatsConfig:
    return SystemStatsConfig.model_validate(
        {
            "metrics_collection": {"interval_seconds": QUIET_INTERVAL, **(collection or {})},
            "performance_monitoring": monitoring or {},
            "alerting": {"email_notifications": False, **(alerting or {})},
        }
    )


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = create_engine(f"sqlite:///{tmp_path / 'stats.db'}")
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def probe() -> Probe:
    return Probe(**{"devices.online": 12.0, "jobs.running": 3.0, "market.volume": 1.5e6})


@pytest.fixture
def health() -> Health:
    return Health()


@asynccontextmanager
async def running(
    engine: Engine,
    clock: FakeClock,
    probe: Probe,
    health: Health,
    config: SystemStatsConfig | None = None,
    publish: Published | None = None,
) -> AsyncIterator[FogSystemStatsService]:
    svc = FogSystemStatsService(
        config or stats_config(),
        lambda: engine,
        probe=probe,
        health=health,
        clock=clock,
        publish=publish,
    )
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


async def settle(rounds: int = 10) -> None:
    """Let the tasks the service spawned (publishing, notifying) run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait in real time for ``condition()`` (work done in other threads or over sockets)."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"still waiting after {timeout:g} s")


# --- collection ------------------------------------------------------------------------------


async def test_collect_metrics_stores_every_probe_value_and_the_host_figures(
    engine: Engine, fake_clock: FakeClock, probe: Probe, health: Health
) -> None:
    probe.values.update({"not a series name": 1.0, "devices.unknown": math.nan})
    async with running(engine, fake_clock, probe, health) as svc:
        now = fake_clock.time()
        metrics = await svc.collect_metrics()

        assert probe.calls == 1
        assert metrics.timestamp == now
        assert (
            set(metrics.values)
            == {
                "devices.online",
                "jobs.running",
                "market.volume",
            }
            | HOST_FIGURES
        )
        for name in ("devices.online", "jobs.running", "market.volume"):
            assert metrics.values[name] == probe.values[name]
        assert metrics.values["process.rss_mb"] > 1.0
        assert 0.0 < metrics.values["host.memory_percent"] <= 100.0
        assert 0.0 <= metrics.values["host.cpu_percent"] <= 100.0
        assert metrics.values["process.cpu_percent"] >= 0.0
        assert svc.latest == metrics.values
        assert svc.latest_at == now

        # every figure is a stored point at the collection time; the unusable ones are not
        assert await svc.series_names() == sorted(metrics.values)
        for name, value in metrics.values.items():
            assert await svc.series(name, now, now + 1) == [(now, value)]
        assert await svc.series("devices.unknown", 0, 4e9) == []


async def test_record_event_writes_only_full_batches_until_a_query_flushes(
    engine: Engine, fake_clock: FakeClock, probe: Probe, health: Health
) -> None:
    config = stats_config(collection={"batch_size": 5})
    async with running(engine, fake_clock, probe, health, config) as svc:
        t0 = fake_clock.time()

        def stored() -> list[float]:
            # the store itself, which does not flush the service's batch
            ts, _ = svc.store.query("event.job_done", 0, 2**62)
            return [t / 1000 for t in ts.tolist()]

        for i in range(4):
            await svc.record_event(MetricEvent(name="job_done", value=i + 1, timestamp=t0 + i))
        assert stored() == []
        assert svc.event_counts == {"job_done": 4}

        await svc.record_event(MetricEvent(name="job_done", value=5, timestamp=t0 + 4))
        assert stored() == [t0 + i for i in range(5)]

        for i in (5, 6):
            await svc.record_event(MetricEvent(name="job_done", value=i + 1, timestamp=t0 + i))
        assert len(stored()) == 5
        stats = await svc.get_performance_stats(TimeWindow(start=t0, end=t0 + 10))
        s = stats.series["event.job_done"]
        assert (s.count, s.min, s.max, s.mean) == (7, 1.0, 7.0, 4.0)
        assert stored() == [t0 + i for i in range(7)]

        # an event without a time is recorded at the clock's time
        fake_clock.advance(100)
        await svc.record_event(MetricEvent(name="job_done", value=1))
        assert await svc.series("event.job_done", t0 + 7, t0 + 1e6) == [(t0 + 100, 1.0)]

        with pytest.raises(ValidationFailed) as bad:
            await svc.record_event(MetricEvent(name="job done!"))
        assert bad.value.fields["field"] == "name"


async def test_bus_events_are_kept_for_the_live_view_and_counted_by_type(
    engine: Engine, fake_clock: FakeClock, probe: Probe, health: Health
) -> None:
    async with running(engine, fake_clock, probe, health) as svc:
        t0 = fake_clock.time()
        sent: list[ServiceEvent] = []
        for i in range(150):
            sent.append(
                WalletCreated(
                    source="tokenomics",
                    timestamp=t0 + i * 0.01,
                    wallet_id=f"w{i}",
                    owner=f"o{i}",
                    granted=10,
                )
            )
        for i in range(60):
            sent.append(
                DeviceStateChangedEvent(
                    source="harvesting",
                    timestamp=t0 + 2 + i * 0.01,
                    device_id=f"dev-{i}",
                    previous="offline",
                    state="online",
                )
            )
        for event in sent:
            await svc.on_bus_event(event)

        assert svc.event_counts == {"wallet_created": 150, "device_state_changed": 60}
        recent = list(svc.recent)
        assert len(recent) == RECENT_EVENTS
        assert recent[0]["fields"]["wallet_id"] == "w10"  # the oldest ten made room
        assert recent[-1] == {
            "type": "device_state_changed",
            "source": "harvesting",
            "time": t0 + 2 + 59 * 0.01,
            "fields": {"device_id": "dev-59", "previous": "offline", "state": "online"},
        }

        stats = await svc.get_performance_stats(TimeWindow(start=t0, end=t0 + 10))
        assert stats.series["event.wallet_created"].count == 150
        assert stats.series["event.device_state_changed"].count == 60


async def test_events_of_one_type_arriving_at_the_same_instant_are_each_counted(
    engine: Engine, fake_clock: FakeClock, probe: Probe, health: Health
) -> None:
    """Every event counts: events of one type stamped with the same millisecond are stored as one
    point whose value is how many there were, so the window's sum is the number of events."""
    async with running(engine, fake_clock, probe, health) as svc:
        t0 = fake_clock.time()
        for i in range(20):
            await svc.on_bus_event(
                DeviceStateChangedEvent(
                    source="harvesting",
                    timestamp=t0,
                    device_id=f"dev-{i}",
                    previous="offline",
                    state="online",
                )
            )
        assert svc.event_counts == {"device_state_changed": 20}
        stats = await svc.get_performance_stats(TimeWindow(start=t0, end=t0 + 1))
        series = stats.series["event.device_state_changed"]
        assert series.count * series.mean == pytest.approx(20)


# --- windows ---------------------------------------------------------------------------------


def check_window(stats: PerformanceStats, name: str, values: F64, span: float) -> None:
    s = stats.series[name]
    assert s.count == values.size
    assert s.rate == pytest.approx(values.size / span, rel=1e-12)
    assert s.mean == pytest.approx(float(values.mean()), rel=1e-9)
    assert s.min == float(values.min())
    assert s.max == float(values.max())
    for q, got in ((0.5, s.p50), (0.95, s.p95), (0.99, s.p99)):
        exact = float(np.quantile(values, q, method="lower"))
        # the sketch's guarantee: within 1 % of the exact value
        assert abs(got - exact) <= 0.01 * abs(exact) * (1 + 1e-9), (name, q, got, exact)


async def test_window_statistics_agree_with_numpy_over_the_points_fed(
    engine: Engine, fake_clock: FakeClock, probe: Probe, health: Health
) -> None:
    rng = np.random.default_rng(7)
    n = 300
    latency = np.round(rng.lognormal(3.0, 0.8, n), 2)
    delta = np.round(rng.normal(0.0, 50.0, n), 1)  # both signs and zeros
    delta[::17] = 0.0
    times: list[float] = []
    async with running(engine, fake_clock, probe, health) as svc:
        for i in range(n):
            probe.values = {"rpc.latency_ms": float(latency[i]), "ledger.delta": float(delta[i])}
            times.append(fake_clock.time())
            await svc.collect_metrics()
            await fake_clock.advance_and_settle(10.0)  # 50 minutes in all: chunks are flushed
        assert svc.store.stats()["chunks"] >= 2

        ts = np.array(times)
        everything = TimeWindow(start=times[0], end=times[-1] + 1)
        stats = await svc.get_performance_stats(everything)
        assert set(stats.series) == {"rpc.latency_ms", "ledger.delta"} | HOST_FIGURES
        check_window(stats, "rpc.latency_ms", latency, times[-1] + 1 - times[0])
        check_window(stats, "ledger.delta", delta, times[-1] + 1 - times[0])

        # a window that cuts chunks at both ends: start included, end excluded
        part = TimeWindow(start=times[50], end=times[250], series=("rpc.latency_ms",))
        stats = await svc.get_performance_stats(part)
        assert set(stats.series) == {"rpc.latency_ms"}
        inside = (ts >= times[50]) & (ts < times[250])
        assert inside.sum() == 200
        check_window(stats, "rpc.latency_ms", latency[inside], times[250] - times[50])

        # windows that hold no data
        before = TimeWindow(start=times[0] - 3600, end=times[0])
        after = TimeWindow(start=times[-1] + 1, end=times[-1] + 3600)
        between = TimeWindow(start=times[10] + 1, end=times[11])
        for empty in (before, after, between):
            assert (await svc.get_performance_stats(empty)).series == {}
        unknown = TimeWindow(start=times[0], end=times[-1] + 1, series=("no.such.series",))
        assert (await svc.get_performance_stats(unknown)).series == {}

        with pytest.raises(ValidationFailed) as bad:
            await svc.get_performance_stats(TimeWindow(start=times[1], end=times[0]))
        assert bad.value.fields["field"] == "time_window"


async def test_percentiles_lie_between_the_minimum_and_the_maximum(
    engine: Engine, fake_clock: FakeClock, probe: Probe, health: Health
) -> None:
    probe.values = {"ledger.blocks": 2.0}
    async with running(engine, fake_clock, probe, health) as svc:
        t0 = fake_clock.time()
        for _ in range(5):
            await svc.collect_metrics()
            await fake_clock.advance_and_settle(30)
        s = (await svc.get_performance_stats(TimeWindow(start=t0, end=t0 + 150))).series[
            "ledger.blocks"
        ]
        assert (s.min, s.max) == (2.0, 2.0)
        assert s.min <= s.p50 <= s.p95 <= s.p99 <= s.max, s


# --- health ----------------------------------------------------------------------------------

ROOMY = {"cpu_threshold_percent": 100, "memory_threshold_percent": 100}
"""Host limits no reading can exceed: the host's real load cannot change these tests' verdict."""


async def test_health_report_follows_the_services(
    engine: Engine, fake_clock: FakeClock, probe: Probe, health: Health
) -> None:
    probe.values["services.max_latency_ms"] = 20.0
    config = stats_config(monitoring=ROOMY)
    async with running(engine, fake_clock, probe, health, config) as svc:
        await svc.collect_metrics()
        report = await svc.generate_health_report()
        assert report.state is HealthState.PASSING
        assert report.reasons == ()
        assert report.services == health.services

        health.services["marketplace"] = HealthStatus.warning("3 auctions overdue")
        report = await svc.generate_health_report()
        assert report.state is HealthState.WARNING
        assert report.reasons == ("marketplace: warning (3 auctions overdue)",)

        health.services["tokenomics"] = HealthStatus.critical("ledger unreachable")
        report = await svc.generate_health_report()
        assert report.state is HealthState.CRITICAL
        assert set(report.reasons) == {
            "marketplace: warning (3 auctions overdue)",
            "tokenomics: critical (ledger unreachable)",
        }

        health.services["marketplace"] = HealthStatus.passing()
        health.services["tokenomics"] = HealthStatus.passing()
        assert (await svc.generate_health_report()).state is HealthState.PASSING


@pytest.mark.parametrize(
    ("setting", "limit", "feed", "reason"),
    [
        (
            "latency_threshold_ms",
            1000,
            "latency",
            "slowest service call 1500.0 ms above 1000 ms",
        ),
        ("cpu_threshold_percent", 80, "cpu", "host CPU 97.0% above 80%"),
        ("memory_threshold_percent", 85, "memory", "host memory 93.0% above 85%"),
    ],
)
async def test_health_report_warns_above_each_threshold(
    engine: Engine,
    fake_clock: FakeClock,
    probe: Probe,
    health: Health,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    limit: float,
    feed: str,
    reason: str,
) -> None:
    host = {"cpu": 12.0, "memory": 40.0}
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: host["cpu"])
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(percent=host["memory"]))
    # the host figures come from psutil, whatever the probe says
    probe.values.update({"services.max_latency_ms": 20.0, "host.cpu_percent": 99.0})
    config = stats_config(monitoring={**ROOMY, setting: limit})
    async with running(engine, fake_clock, probe, health, config) as svc:
        metrics = await svc.collect_metrics()
        assert metrics.values["host.cpu_percent"] == 12.0
        assert (await svc.generate_health_report()).state is HealthState.PASSING

        if feed == "latency":
            probe.values["services.max_latency_ms"] = 1500.0
        elif feed == "cpu":
            host["cpu"] = 97.0
        else:
            host["memory"] = 93.0
        fake_clock.advance(30)
        await svc.collect_metrics()
        report = await svc.generate_health_report()
        assert report.state is HealthState.WARNING
        assert report.reasons == (reason,)

        # a critical service outranks a threshold
        health.services["harvesting"] = HealthStatus.critical("store down")
        report = await svc.generate_health_report()
        assert report.state is HealthState.CRITICAL
        assert report.reasons == ("harvesting: critical (store down)", reason)


# --- alerts ----------------------------------------------------------------------------------


def offline_rule(for_seconds: float = 60.0, name: str = "many_offline") -> AlertConfig:
    return AlertConfig(
        name=name,
        series="devices.offline",
        comparison=Comparison.GT,
        threshold=10,
        for_seconds=for_seconds,
        group="fleet",
        labels={"severity": "page"},
        summary="devices are dropping off",
    )


async def test_alert_rules_are_stored_and_survive_a_restart(
    engine: Engine, fake_clock: FakeClock, probe: Probe, health: Health
) -> None:
    first = offline_rule()
    second = AlertConfig(
        name="slow_calls", series="services.max_latency_ms", comparison=Comparison.GE, threshold=5
    )
    async with running(engine, fake_clock, probe, health) as svc:
        await svc.setup_alerts(first)
        await svc.setup_alerts(second)
        with pytest.raises(ValidationFailed) as bad:
            await svc.setup_alerts(second.model_copy(update={"series": " "}))
        assert bad.value.fields["field"] == "series"
    async with running(engine, fake_clock, probe, health) as svc:
        assert sorted(svc.alerts.rules(), key=lambda r: r.name) == [first, second]
        changed = first.model_copy(update={"threshold": 50.0})
        await svc.setup_alerts(changed)
        await svc.remove_alert("slow_calls")
    async with running(engine, fake_clock, probe, health) as svc:
        assert svc.alerts.rules() == [changed]


async def test_an_alert_fires_after_its_for_duration_and_each_change_is_published(
    engine: Engine, fake_clock: FakeClock, probe: Probe, health: Health
) -> None:
    published = Published()
    probe.values["devices.offline"] = 25.0
    async with running(engine, fake_clock, probe, health, publish=published) as svc:
        await svc.setup_alerts(offline_rule(for_seconds=60))
        t0 = fake_clock.time()
        await svc.collect_metrics()
        await settle()
        assert published.transitions() == [
            ("many_offline", AlertState.INACTIVE, AlertState.PENDING, t0)
        ]

        await fake_clock.advance_and_settle(30)
        await svc.collect_metrics()
        await settle()
        assert len(published.transitions()) == 1
        assert svc.alerts.get("many_offline").state is AlertState.PENDING

        await fake_clock.advance_and_settle(30)
        await svc.collect_metrics()
        await settle()
        assert published.transitions()[1:] == [
            ("many_offline", AlertState.PENDING, AlertState.FIRING, t0 + 60)
        ]
        firing = [e for e in published.events if isinstance(e, AlertTransition)][-1]
        assert (firing.source, firing.group, firing.series) == ("stats", "fleet", "devices.offline")
        assert (firing.value, firing.threshold) == (25.0, 10.0)

        probe.values["devices.offline"] = 3.0
        await fake_clock.advance_and_settle(30)
        await svc.collect_metrics()
        await fake_clock.advance_and_settle(30)
        await svc.collect_metrics()
        await settle()
        assert [(a, b) for _, a, b, _ in published.transitions()[2:]] == [
            (AlertState.FIRING, AlertState.RESOLVED),
            (AlertState.RESOLVED, AlertState.INACTIVE),
        ]


@dataclass
class Webhook:
    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """A Slack-style incoming webhook on 127.0.0.1 that keeps every JSON body it gets."""
    hook = Webhook()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                hook.bodies.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/services/T0/B0/secret"
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_notifications_reach_a_slack_webhook_and_repeat_after_the_cooldown(
    engine: Engine, fake_clock: FakeClock, probe: Probe, health: Health, webhook: Webhook
) -> None:
    config = stats_config(alerting={"slack_webhook_url": webhook.url, "alert_cooldown_minutes": 1})
    probe.values["devices.offline"] = 25.0
    async with running(engine, fake_clock, probe, health, config) as svc:
        await svc.setup_alerts(offline_rule(for_seconds=0))
        await svc.collect_metrics()
        await until(lambda: len(webhook.bodies) == 1)
        body = webhook.bodies[0]
        assert body["text"] == "[FIRING:1] fleet: many_offline"
        [attachment] = body["attachments"]
        assert attachment["color"] == "danger"
        assert attachment["fields"] == [
            {
                "title": "many_offline",
                "value": "devices.offline = 25 (> 10)\ndevices are dropping off\nseverity=page",
                "short": False,
            }
        ]

        # nothing changed and the cooldown has not passed: no message
        await fake_clock.advance_and_settle(30)
        await svc.collect_metrics()
        await asyncio.sleep(0.2)
        assert len(webhook.bodies) == 1
        # a minute after the first message: the reminder
        await fake_clock.advance_and_settle(30)
        await svc.collect_metrics()
        await until(lambda: len(webhook.bodies) == 2)
        assert webhook.bodies[1]["text"] == "[FIRING:1] fleet: many_offline"

        probe.values["devices.offline"] = 2.0
        await fake_clock.advance_and_settle(5)
        await svc.collect_metrics()
        await until(lambda: len(webhook.bodies) == 3)
        resolved = webhook.bodies[2]
        assert resolved["text"] == "[RESOLVED] fleet: many_offline"
        assert [a["color"] for a in resolved["attachments"]] == ["good"]


async def test_silenced_alerts_are_left_out_of_notifications(
    engine: Engine, fake_clock: FakeClock, probe: Probe, health: Health, webhook: Webhook
) -> None:
    config = stats_config(alerting={"slack_webhook_url": webhook.url})
    probe.values.update({"devices.offline": 25.0, "devices.overheating": 40.0})
    async with running(engine, fake_clock, probe, health, config) as svc:
        await svc.setup_alerts(offline_rule(for_seconds=0))
        hot = AlertConfig(
            name="many_hot",
            series="devices.overheating",
            comparison=Comparison.GT,
            threshold=30,
            group="fleet",
        )
        await svc.setup_alerts(hot)
        svc.alerts.silence({"name": "many_offline"}, fake_clock.time() + 3600, "known outage")
        await svc.collect_metrics()
        await until(lambda: len(webhook.bodies) == 1)
        assert webhook.bodies[0]["text"] == "[FIRING:1] fleet: many_hot"
        assert svc.alerts.get("many_offline").state is AlertState.FIRING
        assert svc.alerts.get("many_offline").silenced


# --- exports ---------------------------------------------------------------------------------


@pytest.fixture
async def filled(
    engine: Engine, fake_clock: FakeClock, probe: Probe, health: Health
) -> AsyncIterator[FogSystemStatsService]:
    """A service holding 20 collections a second apart and some events, the clock just after."""
    async with running(engine, fake_clock, probe, health) as svc:
        for i in range(20):
            probe.values = {
                "devices.online": float(100 + i),
                "market.last_clearing_price": 0.000125 * (1 + i % 3),
                "jobs.tasks_verified": float(i * i),
            }
            await svc.collect_metrics()
            await svc.record_event(MetricEvent(name="job_submitted", timestamp=fake_clock.time()))
            await fake_clock.advance_and_settle(1.0)
        yield svc


async def all_points(svc: FogSystemStatsService) -> dict[str, list[tuple[float, float]]]:
    now = svc.clock.time()
    return {n: await svc.series(n, now - 3600, now) for n in await svc.series_names()}


def strict_json(data: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(data, parse_constant=refuse)


async def test_json_export_holds_every_point(filled: FogSystemStatsService) -> None:
    expected = await all_points(filled)
    assert {n for n in expected if n.startswith("devices.")} == {"devices.online"}
    assert sum(len(p) for p in expected.values()) == 20 * (3 + len(HOST_FIGURES) + 1)

    exported = strict_json(await filled.export_analytics(ExportFormat.JSON))
    assert set(exported) == {"series"}
    assert {n: [tuple(p) for p in pts] for n, pts in exported["series"].items()} == expected


async def test_csv_export_is_a_header_and_a_row_per_point(filled: FogSystemStatsService) -> None:
    expected = await all_points(filled)
    text = (await filled.export_analytics(ExportFormat.CSV)).decode()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["series", "timestamp", "value"]
    got: dict[str, list[tuple[float, float]]] = {}
    for name, ts, value in rows[1:]:
        got.setdefault(name, []).append((float(ts), float(value)))
    assert got == expected


async def test_prometheus_export_parses_with_the_prometheus_client(
    filled: FogSystemStatsService,
) -> None:
    expected = await all_points(filled)
    text = (await filled.export_analytics(ExportFormat.PROMETHEUS)).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {prometheus_name(n) for n in expected}
    for name, points in expected.items():
        family = families[prometheus_name(name)]
        assert family.type == "gauge"
        times: list[float] = []
        for sample in family.samples:
            assert isinstance(sample.timestamp, float)  # the text format's ms, in seconds
            times.append(sample.timestamp)
        assert times == pytest.approx([t for t, _ in points], abs=1e-3)
        assert [s.value for s in family.samples] == [v for _, v in points]


@pytest.mark.parametrize("fmt", list(ExportFormat))
async def test_compressed_streams_decompress_to_the_plain_export(
    filled: FogSystemStatsService, fmt: ExportFormat
) -> None:
    now = filled.clock.time()
    window = TimeWindow(start=now - 600, end=now, series=("devices.online", "event.job_submitted"))

    async def export(compression: str | None) -> bytes:
        return b"".join([c async for c in filled.export_stream(fmt, window, compression)])

    plain = await export(None)
    assert b"devices" in plain
    assert b"host" not in plain  # only the series asked for
    assert gzip.decompress(await export("gzip")) == plain
    assert zstandard.ZstdDecompressor().decompressobj().decompress(await export("zstd")) == plain
    with pytest.raises(ValidationFailed) as bad:
        await export("brotli")
    assert bad.value.fields["field"] == "compression"


# --- retention, restart, live ----------------------------------------------------------------


async def test_compact_drops_only_chunks_older_than_the_retention(
    engine: Engine, fake_clock: FakeClock, probe: Probe, health: Health
) -> None:
    config = stats_config(collection={"retention_days": 1})
    old_start = fake_clock.time()
    async with running(engine, fake_clock, probe, health, config) as svc:
        await svc.collect_metrics()
        await fake_clock.advance_and_settle(60)
        await svc.collect_metrics()
        old_series = await svc.series_names()
    fake_clock.advance(1.5 * 86_400)
    kept_at = fake_clock.time()
    probe.values["devices.online"] = 40.0
    async with running(engine, fake_clock, probe, health, config) as svc:
        await svc.collect_metrics()
    fake_clock.advance(0.75 * 86_400)
    async with running(engine, fake_clock, probe, health, config) as svc:
        # a restarted service sees both eras
        assert len(await svc.series("devices.online", old_start, old_start + 61)) == 2
        assert await svc.series("devices.online", kept_at, kept_at + 1) == [(kept_at, 40.0)]

        # a chunk per series is older than a day: the first era's
        assert await svc.compact() == len(old_series)
        assert await svc.series("devices.online", old_start, old_start + 61) == []
        old_window = TimeWindow(start=old_start, end=old_start + 61)
        assert (await svc.get_performance_stats(old_window)).series == {}
        assert await svc.series("devices.online", kept_at, kept_at + 1) == [(kept_at, 40.0)]
        kept = await svc.get_performance_stats(TimeWindow(start=kept_at, end=kept_at + 1))
        assert kept.series["devices.online"].count == 1
        assert await svc.compact() == 0


async def test_a_restart_keeps_the_stored_series_and_unwritten_events(
    engine: Engine, fake_clock: FakeClock, probe: Probe, health: Health
) -> None:
    t0 = fake_clock.time()
    async with running(engine, fake_clock, probe, health) as svc:
        for i in range(3):
            probe.values["devices.online"] = float(10 + i)
            await svc.collect_metrics()
            await fake_clock.advance_and_settle(30)
        # fewer than a batch: still in memory when the service stops
        await svc.record_event(MetricEvent(name="job_submitted", timestamp=t0 + 1))
        await svc.record_event(MetricEvent(name="job_submitted", timestamp=t0 + 2))
        before = await all_points(svc)
    async with running(engine, fake_clock, probe, health) as svc:
        assert await all_points(svc) == before
        assert before["devices.online"] == [(t0 + 30 * i, 10.0 + i) for i in range(3)]
        assert before["event.job_submitted"] == [(t0 + 1, 1.0), (t0 + 2, 1.0)]
        # new samples follow the stored ones
        probe.values["devices.online"] = 13.0
        await svc.collect_metrics()
        stats = await svc.get_performance_stats(EVERYTHING)
        assert stats.series["devices.online"].count == 4
        assert stats.series["devices.online"].max == 13.0


async def test_live_listeners_get_events_metrics_and_alerts(
    engine: Engine, fake_clock: FakeClock, probe: Probe, health: Health
) -> None:
    probe.values["devices.offline"] = 25.0
    async with running(engine, fake_clock, probe, health) as svc:
        await svc.setup_alerts(offline_rule(for_seconds=0))
        received: list[dict[str, Any]] = []

        async def listen() -> None:
            async for message in svc.live():
                received.append(message)

        listener = asyncio.get_running_loop().create_task(listen())
        await settle()
        event = WalletCreated(
            source="tokenomics",
            timestamp=fake_clock.time(),
            wallet_id="w1",
            owner="alice",
            granted=10,
        )
        await svc.on_bus_event(event)
        metrics = await svc.collect_metrics()
        await settle()
        listener.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listener

        assert [m["type"] for m in received] == ["event", "alert", "metrics"]
        assert received[0]["event"]["type"] == "wallet_created"
        assert received[0]["event"]["fields"]["owner"] == "alice"
        alert = received[1]["alert"]
        assert (alert["rule"], alert["state_from"], alert["state_to"]) == (
            "many_offline",
            "inactive",
            "firing",
        )
        assert received[2] == {
            "type": "metrics",
            "time": metrics.timestamp,
            "values": metrics.values,
        }

        # collecting goes on with the listener gone
        await fake_clock.advance_and_settle(1)
        await svc.collect_metrics()
        assert len(received) == 3
