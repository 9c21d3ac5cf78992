"""FogSystemStatsService: metrics collection, event recording, windows, health, alerts, exports.

Every ``metrics_collection.interval_seconds`` the service asks its probe (supplied by the
composition root, which is the only place that sees every service) for the system's figures,
adds the process and host figures from psutil, stores them as time series in compressed chunks
(``stats.tsdb``), evaluates the alert rules and tells live listeners (the dashboard). Every event
on the bus is recorded too, batched by ``batch_size``: its series counts events by type. Queries
over long windows are answered from per-chunk rollups without decoding samples.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import psutil
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fogcoord.clock import Clock
from fogcoord.config import SystemStatsConfig
from fogcoord.contracts.errors import ValidationFailed
from fogcoord.contracts.events import ServiceEvent
from fogcoord.contracts.lifecycle import HealthState, HealthStatus
from fogcoord.contracts.stats import (
    AlertConfig,
    ExportFormat,
    HealthReport,
    MetricEvent,
    PerformanceStats,
    SeriesStats,
    SystemMetrics,
    TimeWindow,
)
from fogcoord.lifecycle import Publish, ServiceBase
from fogcoord.stats.alerts import AlertEngine
from fogcoord.stats.notify import Dispatcher, Notifier, notifiers_from_config
from fogcoord.stats.tsdb import SeriesStore

log = logging.getLogger(__name__)

NAME = "stats"
Probe = Callable[[], Awaitable[dict[str, float]]]
"""The system's figures now, as series name -> value (supplied by the composition root)."""
HealthSource = Callable[[], Awaitable[dict[str, HealthStatus]]]

SERIES_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$")
RECENT_EVENTS = 200
LIVE_QUEUE = 1_000

rules_t_metadata = sa.MetaData()
rules_t = sa.Table(
    "stats_alert_rules",
    rules_t_metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("rule", sa.Text, nullable=False),
)


def event_summary(event: ServiceEvent) -> dict[str, Any]:
    """What the dashboard shows of an event: its type, source, time and its own fields."""
    data = event.model_dump(mode="json", exclude={"event_id", "target"})
    return {
        "type": event.event_type,
        "source": event.source,
        "time": event.timestamp or time.time(),
        "fields": {k: v for k, v in data.items() if k not in ("source", "timestamp")},
    }


class FogSystemStatsService(ServiceBase):
    service_type = NAME

    def __init__(
        self,
        config: SystemStatsConfig,
        engine: Callable[[], Engine],
        *,
        probe: Probe,
        health: HealthSource,
        clock: Clock | None = None,
        publish: Publish | None = None,
        notifiers: list[Notifier] | None = None,
    ) -> None:
        super().__init__(NAME, dependencies=("storage",), clock=clock, publish=publish)
        self.config = config
        self._engine = engine
        self._probe = probe
        self._health = health
        self._store: SeriesStore | None = None
        alerting = config.alerting
        self.alerts = AlertEngine.from_config(self.clock, alerting)
        self._notifiers = notifiers
        self.dispatcher: Dispatcher | None = None
        self.latest: dict[str, float] = {}
        self.latest_at = 0.0
        self._events: list[tuple[str, int, float]] = []
        self._event_last: dict[str, int] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.event_counts: dict[str, int] = {}
        self._listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent(None)  # the first reading primes the counter
        psutil.cpu_percent(None)
        self.collect_seconds = 0.0

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def store(self) -> SeriesStore:
        if self._store is None:
            raise RuntimeError("stats is not started")
        return self._store

    async def on_start(self) -> None:
        engine = self._engine()
        self._store = await asyncio.to_thread(SeriesStore, engine)
        await asyncio.to_thread(rules_t_metadata.create_all, engine)
        for rule in await asyncio.to_thread(self._load_rules, engine):
            self.alerts.add_rule(rule)
        notifiers = self._notifiers
        if notifiers is None:
            notifiers = notifiers_from_config(self.config.alerting)
        self.dispatcher = Dispatcher(notifiers)
        interval = self.config.metrics_collection.interval_seconds
        self.every(interval, self.collect_metrics)
        self.every(min(5.0, interval), self._persist)
        self.every(3_600.0, self.compact)

    async def on_stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._store is not None:
            await self._persist()
            await asyncio.to_thread(self._store.close)

    async def check_health(self) -> HealthStatus:
        age = self.clock.time() - self.latest_at if self.latest_at else 0.0
        interval = self.config.metrics_collection.interval_seconds
        if self.latest_at and age > 3 * interval:
            return HealthStatus.warning(f"last collection {age:.0f} s ago")
        return HealthStatus.passing(f"{len(self.latest)} series, {len(self.alerts.rules())} rules")

    # --- collection ----------------------------------------------------------------------------

    async def collect_metrics(self) -> SystemMetrics:
        started = time.perf_counter()
        now = self.clock.time()
        values = dict(await self._probe())
        memory = self._process.memory_info()
        values.update(
            {
                "process.cpu_percent": self._process.cpu_percent(None),
                "process.rss_mb": memory.rss / 2**20,
                "host.cpu_percent": psutil.cpu_percent(None),
                "host.memory_percent": psutil.virtual_memory().percent,
            }
        )
        values = {k: float(v) for k, v in values.items() if SERIES_NAME.match(k) and v == v}
        ts = int(now * 1000)
        await asyncio.to_thread(self.store.append_many, [(k, ts, v) for k, v in values.items()])
        self.latest, self.latest_at = values, now
        for transition in self.alerts.evaluate(values, now):
            self.emit(transition)
            self._tell({"type": "alert", "alert": transition.model_dump(mode="json")})
        await self._notify(now)
        self.collect_seconds = time.perf_counter() - started
        self._tell({"type": "metrics", "time": now, "values": values})
        return SystemMetrics(timestamp=now, values=values)

    async def _notify(self, now: float) -> None:
        if self.dispatcher is None:
            return
        for notification in self.alerts.due_notifications(now):
            self.spawn(self.dispatcher.send(notification))

    async def record_event(self, event: MetricEvent) -> None:
        if not SERIES_NAME.match(event.name):
            raise ValidationFailed("name", "a series name: letters, digits, _ . : -")
        ts = int((event.timestamp or self.clock.time()) * 1000)
        self._events.append((f"event.{event.name}", ts, float(event.value)))
        self.event_counts[event.name] = self.event_counts.get(event.name, 0) + 1
        if len(self._events) >= self.config.metrics_collection.batch_size:
            await self._write_events()

    async def on_bus_event(self, event: ServiceEvent) -> None:
        """Bus handler for every event: counted as a series, kept for the live dashboard."""
        summary = event_summary(event)
        self.recent.append(summary)
        self._tell({"type": "event", "event": summary})
        await self.record_event(
            MetricEvent(name=event.event_type, timestamp=summary["time"], service=event.source)
        )

    async def _write_events(self) -> None:
        rows, self._events = self._events, []
        if not rows:
            return
        # a series keeps one point per instant: events of one type at the same millisecond (or
        # arriving after a later one) are summed into one point no earlier than the last stored
        sums: dict[tuple[str, int], float] = {}
        for series, ts, value in rows:
            ts = max(ts, self._event_last.get(series, ts))
            sums[(series, ts)] = sums.get((series, ts), 0.0) + value
        points = sorted(sums.items(), key=lambda kv: (kv[0][0], kv[0][1]))
        out: list[tuple[str, int, float]] = []
        for (series, ts), value in points:
            last = self._event_last.get(series)
            if last is not None and ts <= last:
                ts = last + 1
            self._event_last[series] = ts
            out.append((series, ts, value))
        await asyncio.to_thread(self.store.append_many, out)

    async def _persist(self) -> None:
        await self._write_events()
        now_ms = int(self.clock.time() * 1000)
        await asyncio.to_thread(self.store.seal_due, now_ms)
        await asyncio.to_thread(self.store.flush)

    async def compact(self) -> int:
        """Drop chunks older than ``retention_days`` (the retention job)."""
        keep_s = self.config.metrics_collection.retention_days * 86_400
        cutoff = int((self.clock.time() - keep_s) * 1000)
        return await asyncio.to_thread(self.store.compact, cutoff)

    # --- queries -------------------------------------------------------------------------------

    async def get_performance_stats(self, time_window: TimeWindow) -> PerformanceStats:
        if time_window.end < time_window.start:
            raise ValidationFailed("time_window", "end is before start")
        await self._write_events()
        start_ms, end_ms = int(time_window.start * 1000), int(time_window.end * 1000)
        names = list(time_window.series) or await asyncio.to_thread(self.store.series_names)
        span = max(time_window.end - time_window.start, 1e-9)

        def summarise() -> dict[str, SeriesStats]:
            out: dict[str, SeriesStats] = {}
            for name, s in self.store.summaries(names, start_ms, end_ms).items():
                if s.count == 0:
                    continue
                q = s.sketch
                out[name] = SeriesStats(
                    count=s.count,
                    rate=s.count / span,
                    mean=s.sum / s.count,
                    # the sketch is accurate to 1 %: keep its estimates inside what was seen
                    p50=min(max(q.quantile(0.5), s.min), s.max),
                    p95=min(max(q.quantile(0.95), s.min), s.max),
                    p99=min(max(q.quantile(0.99), s.min), s.max),
                    min=s.min,
                    max=s.max,
                )
            return out

        return PerformanceStats(window=time_window, series=await asyncio.to_thread(summarise))

    async def series_names(self, prefix: str = "") -> list[str]:
        await self._write_events()
        names: list[str] = await asyncio.to_thread(self.store.series_names, prefix)
        return names

    async def series(self, name: str, start: float, end: float) -> list[tuple[float, float]]:
        await self._write_events()
        ts, values = await asyncio.to_thread(
            self.store.query, name, int(start * 1000), int(end * 1000)
        )
        return [(t / 1000, v) for t, v in zip(ts.tolist(), values.tolist(), strict=True)]

    async def generate_health_report(self) -> HealthReport:
        services = await self._health()
        reasons: list[str] = []
        state = HealthState.PASSING
        for sid, status in services.items():
            if status.state is not HealthState.PASSING:
                reasons.append(f"{sid}: {status.state.value} ({status.reason})")
                if status.state is HealthState.CRITICAL or state is HealthState.PASSING:
                    state = status.state
        perf = self.config.performance_monitoring
        latest = self.latest
        checks = (
            ("host.cpu_percent", perf.cpu_threshold_percent, "host CPU", "%"),
            ("host.memory_percent", perf.memory_threshold_percent, "host memory", "%"),
            ("services.max_latency_ms", perf.latency_threshold_ms, "slowest service call", " ms"),
        )
        for series, limit, what, unit in checks:
            value = latest.get(series)
            if value is not None and value > limit:
                reasons.append(f"{what} {value:.1f}{unit} above {limit:g}{unit}")
                if state is HealthState.PASSING:
                    state = HealthState.WARNING
        return HealthReport(state=state, services=services, reasons=tuple(reasons))

    # --- alerts --------------------------------------------------------------------------------

    async def setup_alerts(self, alert_config: AlertConfig) -> None:
        self.alerts.add_rule(alert_config)
        await asyncio.to_thread(self._save_rule, self._engine(), alert_config)

    async def remove_alert(self, name: str) -> None:
        self.alerts.remove_rule(name)
        await asyncio.to_thread(self._delete_rule, self._engine(), name)

    @staticmethod
    def _load_rules(engine: Engine) -> list[AlertConfig]:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(rules_t.c.rule)).scalars().all()
        return [AlertConfig.model_validate_json(r) for r in rows]

    @staticmethod
    def _save_rule(engine: Engine, rule: AlertConfig) -> None:
        with engine.begin() as conn:
            conn.execute(rules_t.delete().where(rules_t.c.name == rule.name))
            conn.execute(rules_t.insert().values(name=rule.name, rule=rule.model_dump_json()))

    @staticmethod
    def _delete_rule(engine: Engine, name: str) -> None:
        with engine.begin() as conn:
            conn.execute(rules_t.delete().where(rules_t.c.name == name))

    # --- exports -------------------------------------------------------------------------------

    async def export_analytics(self, format: ExportFormat) -> bytes:
        """The last hour of every series in ``format`` (see :meth:`export_stream` for more)."""
        now = self.clock.time()
        window = TimeWindow(start=now - 3600, end=now)
        return b"".join([c async for c in self.export_stream(format, window)])

    async def export_stream(
        self, format: ExportFormat, window: TimeWindow, compression: str | None = None
    ) -> AsyncIterator[bytes]:
        """Every point of the window's series, one series at a time, optionally compressed."""
        if compression not in (None, "gzip", "zstd"):
            raise ValidationFailed("compression", "gzip, zstd or none")
        await self._write_events()
        names = list(window.series) or await asyncio.to_thread(self.store.series_names)
        start_ms, end_ms = int(window.start * 1000), int(window.end * 1000)
        compressor = _compressor(compression)
        first = True
        if format is ExportFormat.JSON:
            yield compressor(b'{"series": {')
        elif format is ExportFormat.CSV:
            yield compressor(b"series,timestamp,value\r\n")
        for name in names:
            ts, values = await asyncio.to_thread(self.store.query, name, start_ms, end_ms)
            if format is ExportFormat.JSON:
                points = np.stack([ts / 1000.0, values], axis=1).tolist() if ts.size else []
                body = json.dumps(name) + ": " + json.dumps(points)
                yield compressor(((", " if not first else "") + body).encode())
            elif format is ExportFormat.CSV:
                buf = io.StringIO()
                writer = csv.writer(buf)
                for t, v in zip(ts.tolist(), values.tolist(), strict=True):
                    writer.writerow((name, f"{t / 1000:.3f}", repr(v)))
                yield compressor(buf.getvalue().encode())
            else:
                metric = prometheus_name(name)
                lines = [f"# TYPE {metric} gauge\n"] if ts.size else []
                lines += [
                    f"{metric} {_prom_value(v)} {t}\n"
                    for t, v in zip(ts.tolist(), values.tolist(), strict=True)
                ]
                yield compressor("".join(lines).encode())
            first = False
        if format is ExportFormat.JSON:
            yield compressor(b"}}\n")
        yield compressor(None)

    # --- live view -----------------------------------------------------------------------------

    def _tell(self, message: dict[str, Any]) -> None:
        for queue in list(self._listeners):
            if queue.full():  # a listener that cannot keep up loses its oldest updates
                queue.get_nowait()
            queue.put_nowait(message)

    async def live(self) -> AsyncIterator[dict[str, Any]]:
        """Updates as they happen: events, metrics after each collection, alert transitions."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(LIVE_QUEUE)
        self._listeners.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._listeners.discard(queue)

    async def snapshot(self, history_seconds: float = 1_800.0) -> dict[str, Any]:
        """Everything the dashboard shows, with recent points of the charted series."""
        now = self.clock.time()
        charted = [n for n in CHARTED if n in self.latest]
        history = {n: await self.series(n, now - history_seconds, now) for n in charted}
        return {
            "time": now,
            "latest": self.latest,
            "history": history,
            "alerts": [a.model_dump(mode="json") for a in self.alerts.state()],
            "events": list(self.recent)[-50:],
            "event_counts": dict(self.event_counts),
            "health": (await self.generate_health_report()).model_dump(mode="json"),
        }


CHARTED = (
    "devices.online",
    "devices.charging",
    "jobs.tasks_verified",
    "market.last_clearing_price",
    "market.volume",
    "ledger.transfers",
    "process.cpu_percent",
    "process.rss_mb",
    "host.cpu_percent",
)
"""Series the dashboard draws over time (others appear as numbers)."""


def prometheus_name(series: str) -> str:
    return "fogcoord_" + re.sub(r"[^A-Za-z0-9_]", "_", series)


def _prom_value(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def _compressor(kind: str | None) -> Callable[[bytes | None], bytes]:
    """A function that compresses each piece as a stream (``None`` ends the stream)."""
    if kind is None:
        return lambda data: data or b""
    if kind == "gzip":
        raw = io.BytesIO()
        gz = gzip.GzipFile(fileobj=raw, mode="wb")

        def gzip_piece(data: bytes | None) -> bytes:
            if data is None:
                gz.close()
            else:
                gz.write(data)
            out = raw.getvalue()
            raw.seek(0)
            raw.truncate()
            return out

        return gzip_piece
    import zstandard

    stream = zstandard.ZstdCompressor().compressobj()

    def zstd_piece(data: bytes | None) -> bytes:
        if data is None:
            return stream.flush()
        return stream.compress(data)

    return zstd_piece
