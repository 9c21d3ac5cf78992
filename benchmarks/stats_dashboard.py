"""``stats.dashboard_latency``: a bus event published -> its row on the live dashboard's screen.

Set-up: a coordinator served on a loopback port in this process (``fogcoord.serve.serve``, as
``fogcoord demo`` runs it; fresh data directory, SQLite), the dashboard page open in a headless
Debian Chromium driven by Playwright, connected to ``/v1/stats/stream``. At the same time a plain
Server-Sent Events client (``httpx`` streaming, in this process's event loop) reads the same
stream: the baseline, what the stream itself costs without a browser.

Each sample: a ``WalletCreated`` event with a unique wallet id and ``timestamp = time.time()``
(the publish time) is broadcast on the coordinator's bus; the stats service records it and tells
its live listeners; the stream sends it; the page parses it and inserts its row in the event feed,
recording ``Date.now()`` in ``window.__seen`` under the row's key. Latency = that wall-clock time
minus the publish time (both the host's clock). Events go one every ``PACE_S`` (a steady live
feed, not a burst); ``WARMUP`` events first are not counted. The baseline's latency is the
moment the plain client has read and decoded the same event's message.

Target: p95 < 250 ms. The rows report the baseline's same percentile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import Figure, Unit, log, percentile
from fogcoord.config import parse_config
from fogcoord.contracts.tokenomics import WalletCreated
from fogcoord.coordinator import Coordinator
from fogcoord.serve import serve

FIGURES = ("stats.dashboard_latency.p50", "stats.dashboard_latency.p95")
UNIT: Unit = "ms"
TIMEOUT_S = 120.0

CHROMIUM = os.environ.get("FOGCOORD_BENCH_CHROMIUM", "/usr/bin/chromium")
SAMPLES = 200
WARMUP = 20
PACE_S = 0.02
P95_TARGET_MS = 250.0
SETTLE_TIMEOUT_S = 15.0
PREFIX = "bench-dash-"


def _need_browser() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(
            f"no Chromium at {CHROMIUM}: install Debian's (apt-get install chromium) "
            "or set FOGCOORD_BENCH_CHROMIUM"
        )
    try:
        import playwright.async_api  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("the playwright package is missing (pip install playwright)") from exc


class PlainClient:
    """Reads the stream like any SSE consumer; notes when each benchmark wallet's event lands."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.arrived: dict[str, float] = {}
        self.connected = asyncio.Event()

    async def run(self) -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as http,
            http.stream("GET", self.url, headers={"Accept": "text/event-stream"}) as response,
        ):
            response.raise_for_status()
            name = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: "):
                    if name == "snapshot":
                        self.connected.set()
                    elif name == "event":
                        self._note(json.loads(line[len("data: ") :]))

    def _note(self, message: dict[str, Any]) -> None:
        now = time.time()
        event = message.get("event", {})
        wallet = str(event.get("fields", {}).get("wallet_id", ""))
        if event.get("type") == "wallet_created" and wallet.startswith(PREFIX):
            self.arrived.setdefault(wallet, now)


async def _publish(coord: Coordinator, wallet_id: str) -> float:
    stamp = time.time()
    event = WalletCreated(
        source="benchmark",
        wallet_id=wallet_id,
        owner="benchmark",
        granted=Decimal(0),
        timestamp=stamp,
    )
    await coord.orchestration.broadcast_event(event)
    return stamp


SEEN_JS = """(prefix) => Object.fromEntries(
    [...window.__seen].filter(([key]) => key.startsWith("wallet_created:" + prefix))
        .map(([key, at]) => [key.slice("wallet_created:".length), at]))"""


async def _measure(coord: Coordinator, port: int) -> tuple[list[float], list[float]]:
    from playwright.async_api import async_playwright

    bootstrap = coord.auth.bootstrap_key
    if bootstrap is None:
        raise RuntimeError("the fresh data directory issued no operator key")
    base = f"http://127.0.0.1:{port}"
    plain = PlainClient(f"{base}/v1/stats/stream?key={bootstrap.key}")
    reader = asyncio.get_running_loop().create_task(plain.run())
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"{base}/?key={bootstrap.key}")
                await page.wait_for_selector('#status[data-state="connected"]', timeout=15_000)
                await asyncio.wait_for(plain.connected.wait(), 15)

                published: dict[str, float] = {}
                for i in range(WARMUP + SAMPLES):
                    wallet = f"{PREFIX}{i:05d}"
                    stamp = await _publish(coord, wallet)
                    if i >= WARMUP:
                        published[wallet] = stamp
                    await asyncio.sleep(PACE_S)

                deadline = time.monotonic() + SETTLE_TIMEOUT_S
                seen: dict[str, float] = {}
                while time.monotonic() < deadline:
                    seen = await page.evaluate(SEEN_JS, PREFIX)
                    if all(w in seen for w in published) and all(
                        w in plain.arrived for w in published
                    ):
                        break
                    await asyncio.sleep(0.1)
                if errors:
                    raise RuntimeError(f"the dashboard raised: {errors[0]}")
            finally:
                await browser.close()
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader

    missing_page = [w for w in published if w not in seen]
    missing_plain = [w for w in published if w not in plain.arrived]
    if missing_page or missing_plain:
        raise RuntimeError(
            f"of {len(published)} events, the page missed {len(missing_page)} and the plain "
            f"client {len(missing_plain)} within {SETTLE_TIMEOUT_S:g} s"
        )
    page_ms = [seen[w] - published[w] * 1000 for w in published]
    plain_ms = [(plain.arrived[w] - published[w]) * 1000 for w in published]
    return page_ms, plain_ms


async def run() -> list[Figure]:
    _need_browser()
    result: list[tuple[list[float], list[float]]] = []

    async def on_ready(coord: Coordinator, port: int) -> bool:
        result.append(await _measure(coord, port))
        return False

    with tempfile.TemporaryDirectory(prefix="fogcoord-bench-") as tmp:
        config = parse_config({"server": {"data_dir": str(Path(tmp) / "data"), "port": 0}})
        code = await serve(config, on_ready=on_ready)
    if not result:
        raise RuntimeError(f"the coordinator did not serve (exit code {code})")
    page_ms, plain_ms = result[0]
    log(
        f"  {len(page_ms)} events one every {PACE_S * 1000:g} ms: page p50 "
        f"{percentile(page_ms, 50):.1f} ms, p95 {percentile(page_ms, 95):.1f} ms, max "
        f"{max(page_ms):.1f} ms; plain SSE client p50 {percentile(plain_ms, 50):.1f} ms, "
        f"p95 {percentile(plain_ms, 95):.1f} ms"
    )
    return [
        Figure(
            "stats.dashboard_latency.p50",
            percentile(page_ms, 50),
            UNIT,
            baseline=percentile(plain_ms, 50),
        ),
        Figure(
            "stats.dashboard_latency.p95",
            percentile(page_ms, 95),
            UNIT,
            baseline=percentile(plain_ms, 95),
            target=P95_TARGET_MS,
            op="<",
        ),
    ]
