"""``harvesting.fleet_10k``: 10,000 simulated agents heartbeating every 10 s against one serve.

Starts a real ``fogcoord serve`` (fresh data directory, SQLite) and a real ``fogcoord fleet
--devices 10000 --interval 10 --duration 60 --after-startup`` on the same 2-core machine: every
agent registers over HTTP (Ed25519 proof of possession), opens its WebSocket channel and
heartbeats; the 60 s window starts once all are online. The figure is the p99 heartbeat round
trip in that window (``harvesting.fleet_10k.p99``; p50 beside it), measured by the agents
themselves. Afterwards the coordinator is asked how many devices it holds offline: any is a
device wrongly marked offline, and fails the figure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks._procs import free_port
from benchmarks.harness import Figure, Unit, log

FIGURES = ("harvesting.fleet_10k.p50", "harvesting.fleet_10k.p99")
UNIT: Unit = "ms"
TIMEOUT_S = 600.0
DEVICES = 10_000
INTERVAL_S = 10
WINDOW_S = 60
P99_TARGET_MS = 50.0


def _start_server(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fogcoord",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    key = ""
    while time.monotonic() < deadline and not key:
        line = proc.stdout.readline()
        if not line:
            break
        found = re.search(r"(fc_[0-9a-f]{16}_\S{43})", line)
        if found:
            key = found.group(1)
    if not key:
        proc.kill()
        raise RuntimeError("fogcoord serve did not print an operator key")
    return proc, key


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="fogcoord-bench-fleet-") as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server, key = _start_server(Path(tmp) / "data", port)
        report_path = Path(tmp) / "fleet.json"
        try:
            fleet = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "fogcoord",
                    "fleet",
                    "--coordinator",
                    url,
                    "--api-key",
                    key,
                    "--devices",
                    str(DEVICES),
                    "--interval",
                    str(INTERVAL_S),
                    "--duration",
                    str(WINDOW_S),
                    "--after-startup",
                    "--report-json",
                    str(report_path),
                ],
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S - 30,
                check=False,
            )
            if fleet.returncode != 0 or not report_path.exists():
                raise RuntimeError(f"fleet exited {fleet.returncode}: {fleet.stderr[-2000:]}")
            report = json.loads(report_path.read_text())
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
            ) as api:
                offline = api.get("/v1/devices", params={"online": "false", "limit": 10_000})
                offline.raise_for_status()
                wrongly_offline = len(offline.json())
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            if server.stdout is not None:
                server.stdout.close()
    steady = report.get("steady_latency_ms") or report["latency_ms"]
    log(
        f"fleet: registered {report.get('registered')} in {report.get('startup_seconds')} s, "
        f"{report.get('heartbeats')} heartbeats, errors {report.get('errors')}, "
        f"reconnects {report.get('reconnects')}, wrongly offline {wrongly_offline}"
    )
    p99 = float(steady["p99"])
    if wrongly_offline or report.get("registered") != DEVICES:
        return [
            Figure("harvesting.fleet_10k.p50", float(steady["p50"]), "ms"),
            Figure.failed(
                "harvesting.fleet_10k.p99",
                "ms",
                f"{wrongly_offline} devices offline, {report.get('registered')} registered",
            ),
        ]
    return [
        Figure("harvesting.fleet_10k.p50", float(steady["p50"]), "ms"),
        Figure("harvesting.fleet_10k.p99", p99, "ms", target=P99_TARGET_MS, op="<"),
    ]
