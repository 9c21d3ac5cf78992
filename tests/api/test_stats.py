"""The stats routes over ASGI: Prometheus ``/metrics``, windows, series, health, alerts, exports."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard
from prometheus_client.parser import text_string_to_metric_families

from fogcoord.api.app import create_app
from fogcoord.auth.models import PrincipalKind, Scope
from fogcoord.coordinator import Coordinator
from fogcoord.stats.service import prometheus_name
from tests.harvesting.support import cap
from tests.helpers import make_config, running_api

PROMETHEUS_TEXT = "text/plain; version=0.0.4"


@dataclass
class Api:
    coord: Coordinator
    operator: httpx.AsyncClient
    requester: httpx.AsyncClient
    """A requester's key: reads stats (its default scopes) but is no admin."""
    anonymous: httpx.AsyncClient
    narrow: httpx.AsyncClient
    """A key without the stats:read scope."""


def client(coord: Coordinator, key: str | None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(coord, manage_lifecycle=False))
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(make_config(tmp_path)) as (coord, admin, key):
        requester = await admin.create_key(kind=PrincipalKind.REQUESTER, name="rita")
        narrow = await admin.create_key(
            kind=PrincipalKind.REQUESTER, name="wallets-only", scopes=[Scope.WALLETS_READ]
        )
        owner = requester.principal.principal_id
        for i in range(3):
            await coord.harvesting.register_device(
                cap(f"phone-{i}", owner), principal_id=f"p-phone-{i}"
            )
        for i in range(2):  # two of the three heartbeat
            await coord.harvesting.heartbeat(
                f"phone-{i}", battery_percent=90.0, charging=True, thermal_celsius=30.0
            )
        assert await coord.bus.drain(10.0)  # their events have reached the stats service
        clients = [client(coord, k) for k in (key, requester.key, None, narrow.key)]
        try:
            yield Api(coord, *clients)
        finally:
            for c in clients:
                await c.aclose()


async def collect(coord: Coordinator) -> dict[str, float]:
    """One collection, then a moment, so that a window ending 'now' holds its points."""
    metrics = await coord.stats.collect_metrics()
    await asyncio.sleep(0.01)
    return metrics.values


def refused(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    if field is not None:
        assert body["error"] == "validation_failed"
        assert body["field"] == field, body
    return body


# --- /metrics --------------------------------------------------------------------------------


async def test_metrics_is_prometheus_text_of_the_last_collection(api: Api) -> None:
    values = await collect(api.coord)
    assert values["devices.registered"] == 3
    assert values["devices.online"] == 2

    r = await api.operator.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(PROMETHEUS_TEXT)
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name, value in values.items():
        family = families[prometheus_name(name)]
        assert family.type == "gauge"
        [sample] = family.samples
        assert sample.value == pytest.approx(value)
    assert families["fogcoord_devices_online"].samples[0].value == 2
    # bus events are counted by type
    counted = {n for n in families if n.startswith("fogcoord_events_")}
    assert "fogcoord_events_device_state_changed" in counted


async def test_metrics_needs_a_key_that_reads_stats(api: Api) -> None:
    await collect(api.coord)
    refused(await api.anonymous.get("/metrics"), 401)
    body = refused(await api.narrow.get("/metrics"), 403)
    assert "stats:read" in body["detail"]
    assert (await api.requester.get("/metrics")).status_code == 200


# --- figures, windows, series, health --------------------------------------------------------


async def test_overview_has_the_latest_figures_health_and_alerts(api: Api) -> None:
    values = await collect(api.coord)
    r = await api.requester.get("/v1/stats")
    assert r.status_code == 200
    body = r.json()
    assert body["latest"] == values
    assert body["time"] == api.coord.stats.latest_at
    assert body["health"]["state"] in ("passing", "warning", "critical")
    assert "stats" in body["health"]["services"]
    assert body["alerts"] == []
    assert body["event_counts"]["device_state_changed"] >= 2
    assert body["collect_ms"] > 0
    refused(await api.narrow.get("/v1/stats"), 403)


async def test_windows_summarise_the_points_of_the_last_seconds(api: Api) -> None:
    # the coordinator collected once as it started, before the devices came online
    startup = api.coord.stats.latest_at
    first = await collect(api.coord)
    await api.coord.harvesting.heartbeat(
        "phone-2", battery_percent=90.0, charging=True, thermal_celsius=30.0
    )
    second = await collect(api.coord)
    assert (first["devices.online"], second["devices.online"]) == (2, 3)

    r = await api.requester.get("/v1/stats/windows", params={"seconds": 60})
    assert r.status_code == 200
    body = r.json()
    assert body["window"]["end"] - body["window"]["start"] == pytest.approx(60)
    online = body["series"]["devices.online"]
    assert (online["count"], online["min"], online["max"], online["mean"]) == (3, 0, 3, 5 / 3)
    assert set(body["series"]) >= set(second)

    mine = await api.requester.get("/v1/stats/windows", params={"start": startup + 0.001})
    online = mine.json()["series"]["devices.online"]
    assert (online["count"], online["min"], online["max"], online["mean"]) == (2, 2, 3, 2.5)

    only = await api.requester.get(
        "/v1/stats/windows", params={"seconds": 60, "series": ["devices.online", "jobs.failed"]}
    )
    assert set(only.json()["series"]) == {"devices.online", "jobs.failed"}

    now = time.time()
    earlier = await api.requester.get(
        "/v1/stats/windows", params={"start": now - 7200, "end": now - 3600}
    )
    assert earlier.json()["series"] == {}

    refused(await api.requester.get("/v1/stats/windows", params={"seconds": 0}), 422, "seconds")
    backwards = {"start": now, "end": now - 10}
    refused(await api.requester.get("/v1/stats/windows", params=backwards), 422, "end")


async def test_series_names_and_points(api: Api) -> None:
    values = await collect(api.coord)
    at = api.coord.stats.latest_at

    names = (await api.requester.get("/v1/stats/series")).json()
    assert set(names) >= set(values)
    assert names == sorted(names)
    devices = (await api.requester.get("/v1/stats/series", params={"prefix": "devices."})).json()
    assert all(n.startswith("devices.") for n in devices)
    assert "devices.online" in devices

    r = await api.requester.get("/v1/stats/series/devices.online", params={"seconds": 60})
    assert r.status_code == 200
    points = r.json()
    assert len(points) == 2  # the coordinator's own first collection, then this one
    assert points[0][1] == 0.0
    assert points[1] == [pytest.approx(at, abs=1e-3), 2.0]
    since = await api.requester.get("/v1/stats/series/devices.online", params={"start": at})
    assert since.json() == points[1:]
    nothing = await api.requester.get("/v1/stats/series/no.such.series")
    assert nothing.json() == []


async def test_health_report(api: Api) -> None:
    await collect(api.coord)
    r = await api.requester.get("/v1/stats/health")
    assert r.status_code == 200
    body = r.json()
    assert body["state"] in ("passing", "warning", "critical")
    assert {"harvesting", "marketplace", "tokenomics", "stats"} <= set(body["services"])
    assert all(s["state"] == "passing" for s in body["services"].values())
    # a warning here can only be the host's own load
    assert all(reason.startswith("host ") for reason in body["reasons"])
    refused(await api.anonymous.get("/v1/stats/health"), 401)


# --- alerts and silences ---------------------------------------------------------------------

RULE = {
    "name": "fleet_online",
    "series": "devices.online",
    "comparison": ">=",
    "threshold": 1,
    "group": "fleet",
    "summary": "devices are online",
    "labels": {"severity": "info"},
}


async def test_alert_rules_are_added_and_removed_by_an_admin(api: Api) -> None:
    refused(await api.requester.post("/v1/stats/alerts", json=RULE), 403)
    added = await api.operator.post("/v1/stats/alerts", json=RULE)
    assert added.status_code == 201
    assert added.json() == {**RULE, "for_seconds": 0.0}

    listed = (await api.requester.get("/v1/stats/alerts")).json()
    assert [r["name"] for r in listed["rules"]] == ["fleet_online"]
    assert [a["state"] for a in listed["alerts"]] == ["inactive"]

    await collect(api.coord)
    [alert] = (await api.requester.get("/v1/stats/alerts")).json()["alerts"]
    assert (alert["state"], alert["value"], alert["silenced"]) == ("firing", 2.0, False)
    assert [a["name"] for a in (await api.requester.get("/v1/stats")).json()["alerts"]] == [
        "fleet_online"
    ]

    refused(await api.requester.delete("/v1/stats/alerts/fleet_online"), 403)
    assert (await api.operator.delete("/v1/stats/alerts/fleet_online")).status_code == 204
    assert (await api.requester.get("/v1/stats/alerts")).json() == {"rules": [], "alerts": []}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"comparison": "!="}, "comparison"),
        ({"for_seconds": -1}, "for_seconds"),
        ({"threshold": "lots"}, "threshold"),
        ({"name": "  "}, "name"),
        ({"series": ""}, "series"),
        ({"group": " "}, "group"),
    ],
)
async def test_a_bad_alert_rule_is_refused_naming_the_field(
    api: Api, change: dict[str, Any], field: str
) -> None:
    refused(await api.operator.post("/v1/stats/alerts", json={**RULE, **change}), 422, field)
    assert (await api.operator.get("/v1/stats/alerts")).json()["rules"] == []


async def test_silences_mark_matching_alerts(api: Api) -> None:
    await api.operator.post("/v1/stats/alerts", json=RULE)
    silence = {"name": "fleet_online", "seconds": 600, "comment": "maintenance"}
    refused(await api.requester.post("/v1/stats/silences", json=silence), 403)
    r = await api.operator.post("/v1/stats/silences", json=silence)
    assert r.status_code == 201
    assert r.json()["silence_id"].startswith("silence-")
    [alert] = (await api.requester.get("/v1/stats/alerts")).json()["alerts"]
    assert alert["silenced"] is True

    by_group = await api.operator.post("/v1/stats/silences", json={"group": "fleet", "seconds": 5})
    assert by_group.status_code == 201
    refused(await api.operator.post("/v1/stats/silences", json={"seconds": 60}), 422, "name")
    zero = {"name": "fleet_online", "seconds": 0}
    refused(await api.operator.post("/v1/stats/silences", json=zero), 422, "seconds")
    extra = {"name": "fleet_online", "seconds": 60, "until": 1}
    refused(await api.operator.post("/v1/stats/silences", json=extra), 422, "until")


# --- exports ---------------------------------------------------------------------------------


async def test_export_compressed_csv_and_json_decompress_to_the_plain_export(api: Api) -> None:
    start = time.time()  # after the coordinator's own first collection
    await collect(api.coord)
    await collect(api.coord)
    window: dict[str, Any] = {
        "start": start,
        "end": time.time(),
        "series": ["devices.online", "host.cpu_percent"],
    }

    plain = await api.requester.get("/v1/stats/export", params={**window, "format": "csv"})
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/csv")
    assert plain.headers["content-disposition"] == 'attachment; filename="fogcoord-stats.csv"'
    lines = plain.text.splitlines()
    assert lines[0] == "series,timestamp,value"
    assert len(lines) == 1 + 2 * 2
    assert sum(line.startswith("devices.online,") for line in lines) == 2

    params = {**window, "format": "csv", "compression": "gzip"}
    async with api.requester.stream("GET", "/v1/stats/export", params=params) as r:
        assert r.headers["content-encoding"] == "gzip"
        raw = b"".join([chunk async for chunk in r.aiter_raw()])
    assert gzip.decompress(raw) == plain.content

    as_json = await api.requester.get("/v1/stats/export", params={**window, "format": "json"})
    assert set(as_json.json()["series"]) == {"devices.online", "host.cpu_percent"}
    params = {**window, "format": "json", "compression": "zstd"}
    async with api.requester.stream("GET", "/v1/stats/export", params=params) as r:
        assert r.headers["content-encoding"] == "zstd"
        raw = b"".join([chunk async for chunk in r.aiter_raw()])
    assert zstandard.ZstdDecompressor().decompressobj().decompress(raw) == as_json.content

    prom = await api.requester.get("/v1/stats/export", params={**window, "format": "prometheus"})
    assert prom.headers["content-type"].startswith(PROMETHEUS_TEXT)
    families = {f.name: f for f in text_string_to_metric_families(prom.text)}
    assert len(families["fogcoord_devices_online"].samples) == 2


async def test_export_refuses_unknown_formats_and_compressions(api: Api) -> None:
    path = "/v1/stats/export"
    refused(await api.requester.get(path, params={"format": "xml"}), 422, "format")
    bad = {"format": "csv", "compression": "brotli"}
    refused(await api.requester.get(path, params=bad), 422, "compression")
    refused(await api.narrow.get(path), 403)
