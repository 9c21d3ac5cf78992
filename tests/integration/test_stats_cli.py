"""`fogcoord stats` against a real `fogcoord serve` collecting twice a second."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.served import Served, cli, finish, start

pytestmark = pytest.mark.slow

INTERVAL_ENV = "FOGCOORD__SYSTEM_STATS__METRICS_COLLECTION__INTERVAL_SECONDS"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = start(tmp_path / "data", env={**os.environ, "COLUMNS": "200", INTERVAL_ENV: "0.5"})
    try:
        yield server
    finally:
        finish(server.proc)


def wait_for_collections(served: Served, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(served.get("/v1/stats/series/process.rss_mb", seconds=60)) >= count:
            return
        time.sleep(0.2)
    pytest.fail(f"fewer than {count} collections in {timeout:g} s")


def test_stats_prints_the_health_line_and_a_table_per_group(served: Served) -> None:
    started = time.monotonic()
    wait_for_collections(served, 4)
    # the interval came from the environment: the default would take 30 s a collection
    assert time.monotonic() - started < 15

    env = {"FOGCOORD_URL": served.url, "FOGCOORD_API_KEY": served.key}
    shown = cli("stats", "--window", "60", env=env)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert re.search(r"^health: (passing|warning|critical)$", out, re.MULTILINE), out
    lines = out.splitlines()
    header = next(line for line in lines if re.search(r"\bdevices\b.*\bnow\b", line))
    assert re.search(r"\bmean 60s\b.*\bp95\b.*\bmax\b", header), header
    for row in ("registered", "online", "charging", "connected"):
        assert any(re.search(rf"\b{row}\b\s.*\b0\b", line) for line in lines), (row, out)
    for group in ("jobs", "market", "host", "process", "bus"):
        assert any(re.search(rf"\b{group}\b.*\bnow\b", line) for line in lines), (group, out)
    assert "no alerts" in out


def test_stats_lists_alert_rules_and_refuses_a_bad_key(served: Served) -> None:
    wait_for_collections(served, 2)
    rule = {"name": "rss_seen", "series": "process.rss_mb", "comparison": ">", "threshold": 1}
    added = httpx.post(
        f"{served.url}/v1/stats/alerts",
        json=rule,
        headers={"Authorization": f"Bearer {served.key}"},
        timeout=10,
    )
    assert added.status_code == 201, added.text
    wait_for_collections(served, 4)

    shown = cli("stats", env={"FOGCOORD_URL": served.url, "FOGCOORD_API_KEY": served.key})
    assert shown.returncode == 0, shown.stderr
    [row] = [line for line in shown.stdout.splitlines() if "rss_seen" in line]
    assert re.search(r"rss_seen\s.*\bdefault\b\s.*\bfiring\b", row), row

    denied = cli("stats", env={"FOGCOORD_URL": served.url, "FOGCOORD_API_KEY": "nope"})
    assert denied.returncode == 1
