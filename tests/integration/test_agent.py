"""`fogcoord agent` and `fogcoord fleet` as real processes against a real `fogcoord serve`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fogcoord.agent.device import DeviceSpec
from fogcoord.agent.identity import FileIdentityStore, MemoryIdentityStore
from fogcoord.agent.runner import Agent
from fogcoord.api.schemas import Heartbeat
from fogcoord.client import FogClient
from tests.served import Served, start

pytestmark = pytest.mark.slow

ENV_DROP = ("FOGCOORD_URL", "FOGCOORD_API_KEY", "FOGCOORD_AGENT_DIR")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
    env["COLUMNS"] = "200"
    return env


def _finish(proc: subprocess.Popen[str]) -> str:
    """Stop ``proc`` if it still runs; its output, with every pipe closed."""
    if proc.poll() is None:
        proc.kill()
    output, _ = proc.communicate(timeout=10)
    return output or ""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = start(tmp_path, env=_env())
    proc = server.proc
    try:
        yield server
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        finally:
            _finish(proc)


def _agent_proc(served: Served, state: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fogcoord",
            "agent",
            "--coordinator",
            served.url,
            "--state-dir",
            str(state),
            "--interval",
            "0.5",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )


def _wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _interrupt(proc: subprocess.Popen[str], within: float = 5.0) -> tuple[int, str, float]:
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=within + 5)
    return proc.returncode, output, time.monotonic() - started


def test_agent_registers_heartbeats_restarts_with_its_identity_and_stops_on_ctrl_c(
    served: Served, tmp_path: Path
) -> None:
    state = tmp_path / "agent"
    store = FileIdentityStore(state)
    proc = _agent_proc(served, state, "--api-key", served.key)
    try:
        identity = _wait_for(
            lambda: (i := store.load()) is not None and i.registered and i,
            what="the agent's registration",
        )
        device_id = identity.device_id

        def healthy() -> Any:
            view = served.get(f"/v1/devices/{device_id}")
            ok = view["health"]["online"] and view["health"]["state"] in ("passing", "warning")
            return ok and view

        view = _wait_for(healthy, what="the device to be online")
        assert view["device"]["gflops"] > 0
        assert view["device"]["cpu_cores"] >= 1
        first_seen = view["health"]["last_seen"]
        _wait_for(
            lambda: served.get(f"/v1/devices/{device_id}")["health"]["last_seen"] > first_seen,
            what="a second heartbeat",
        )
        code, output, took = _interrupt(proc)
    finally:
        _finish(proc)
    assert code == 0, output
    assert took < 5.0
    assert f"device {device_id} registered" in output

    restarted = _agent_proc(served, state)  # no owner key: it must reuse its registration
    try:
        stopped_at = served.get(f"/v1/devices/{device_id}")["health"]["last_seen"]
        _wait_for(
            lambda: served.get(f"/v1/devices/{device_id}")["health"]["last_seen"] > stopped_at,
            what="heartbeats after the restart",
        )
        code, output, took = _interrupt(restarted)
    finally:
        _finish(restarted)
    assert code == 0, output
    assert took < 5.0
    assert "reusing its registration" in output
    assert "registered with" not in output
    devices = served.get("/v1/devices")
    assert [d["device_id"] for d in devices] == [device_id]
    saved = store.load()
    assert saved is not None
    assert saved.device_key == identity.device_key


def test_agent_without_registration_or_owner_key_exits_1(served: Served, tmp_path: Path) -> None:
    proc = _agent_proc(served, tmp_path / "fresh")
    try:
        output, _ = proc.communicate(timeout=60)
    finally:
        _finish(proc)
    assert proc.returncode == 1
    assert "not registered yet" in output


class _Fixed:
    def spec(self) -> DeviceSpec:
        return DeviceSpec(cpu_cores=2, gflops=10.0, ram_mb=4096, storage_gb=10.0)

    def reading(self) -> Heartbeat:
        return Heartbeat(battery_percent=95.0, charging=True, thermal_celsius=30.0)


async def test_agent_falls_back_to_http_when_the_channel_path_is_refused(served: Served) -> None:
    agent = Agent(
        served.url,
        served.key,
        device=_Fixed(),
        identities=MemoryIdentityStore(),
        interval=0.2,
        channel=served.url.replace("http://", "ws://") + "/v1/devices/nowhere/channel",
        rng=np.random.default_rng(0),
    )
    task = asyncio.create_task(agent.run())
    try:
        deadline = time.monotonic() + 20
        while agent.heartbeats < 3:
            assert time.monotonic() < deadline, "no HTTP heartbeats"
            assert not task.done(), task
            await asyncio.sleep(0.05)
        assert agent.via == "http"
        assert agent.device_id is not None
        async with FogClient(served.url, served.key) as fog:
            view = await fog.device(agent.device_id)
        assert view.health.online
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)


def test_fleet_of_50_devices_registers_all_and_heartbeats_without_errors(
    served: Served, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fogcoord",
            "fleet",
            "--coordinator",
            served.url,
            "--api-key",
            served.key,
            "--devices",
            "50",
            "--duration",
            "8",
            "--interval",
            "2",
            "--seed",
            "7",
            "--report-json",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env=_env(),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["registered"] == 50
    assert report["failed"] == 0
    assert report["errors"] == 0
    assert report["owners"] == 5
    assert report["online"] == 50
    assert report["heartbeats"] >= 50
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    online = served.get("/v1/devices", online="true", limit=1000)
    assert len(online) == 50
    assert len({d["owner"] for d in online}) == 5
    assert "registered" in result.stdout
