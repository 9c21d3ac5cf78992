"""`fogcoord serve` as a real process: readiness, the CLI against it, clean Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


@dataclass
class Served:
    proc: subprocess.Popen[str]
    url: str
    key: str


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fogcoord", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        check=False,
    )


def _start(data_dir: Path) -> Served:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fogcoord", "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.stdout is not None
    url = key = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (url and key):
        line = proc.stdout.readline()
        if not line:
            break
        if found := re.search(r"serving on (http://\S+)", line):
            url = found.group(1)
        if found := re.search(r"(fc_[0-9a-f]{16}_\S{43})", line):
            key = found.group(1)
    if not (url and key):
        proc.kill()
        pytest.fail(f"fogcoord serve did not start: {proc.stdout.read()}")
    return Served(proc, url, key)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = _start(tmp_path / "data")
    yield server
    _finish(server.proc)


def _finish(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_readyz_then_ctrl_c_exits_zero_within_two_seconds(served: Served) -> None:
    response = httpx.get(f"{served.url}/readyz", timeout=5)
    assert response.status_code == 200
    assert response.json()["ready"] is True
    started = time.monotonic()
    served.proc.send_signal(signal.SIGINT)
    code = served.proc.wait(timeout=5)
    assert code == 0
    assert time.monotonic() - started < 2.0


def test_sigterm_also_stops_cleanly(served: Served) -> None:
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=5) == 0


def test_cli_talks_to_the_running_coordinator(served: Served) -> None:
    env = {"FOGCOORD_URL": served.url, "FOGCOORD_API_KEY": served.key}
    created = _cli("keys", "create", "--kind", "requester", "--name", "alice", env=env)
    assert created.returncode == 0, created.stderr
    key_id = re.search(r"key id\s+([0-9a-f]{16})", created.stdout)
    assert key_id is not None
    listed = _cli("keys", "list", env=env)
    assert key_id.group(1) in listed.stdout
    services = _cli("services", env=env)
    assert services.returncode == 0
    assert "storage" in services.stdout
    assert "auth" in services.stdout
    revoked = _cli("keys", "revoke", key_id.group(1), env=env)
    assert revoked.returncode == 0
    assert "revoked" in revoked.stdout
    denied = _cli("services", env={"FOGCOORD_URL": served.url, "FOGCOORD_API_KEY": "nope"})
    assert denied.returncode == 1
    assert "unauthenticated" in denied.stderr


def test_restart_keeps_keys_and_prints_no_new_operator_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _start(data)
    first.proc.send_signal(signal.SIGINT)
    assert first.proc.wait(timeout=5) == 0
    _finish(first.proc)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fogcoord", "serve", "--port", "0", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = re.search(r"serving on (http://\S+)", line)
        assert url is not None, line
        who = httpx.get(
            f"{url.group(1)}/v1/whoami", headers={"Authorization": f"Bearer {first.key}"}
        )
        assert who.status_code == 200
        assert who.json()["principal"]["kind"] == "operator"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
        assert proc.stdout is not None
        assert "fc_" not in proc.stdout.read()
        _finish(proc)


def test_config_show_and_validate(tmp_path: Path) -> None:
    shown = _cli(
        "config", "show", env={"FOGCOORD__HARVESTING__PARTICIPANT_SELECTION__MIN_RAM_MB": "4096"}
    )
    assert shown.returncode == 0
    assert "min_ram_mb: 4096" in shown.stdout
    good = tmp_path / "good.yaml"
    good.write_text("harvesting:\n  participant_selection:\n    min_trust_score: 0.7\n")
    assert _cli("config", "validate", str(good)).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "harvesting:\n  participant_selection:\n    min_trust: 0.7\n    min_ram_mb: -1\n"
    )
    result = _cli("config", "validate", str(bad))
    assert result.returncode == 1
    assert "harvesting.participant_selection.min_trust: unknown key" in result.stderr
    assert "harvesting.participant_selection.min_ram_mb" in result.stderr


def test_serve_refuses_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("bus:\n  url: redis://nope\n")
    result = _cli("serve", "--config", str(bad), "--port", "0")
    assert result.returncode == 2
    assert "bus.url" in result.stderr


def test_demo_smoke_run(tmp_path: Path) -> None:
    result = _cli("demo", "--exit", "--data-dir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "readiness: ready" in result.stdout
    assert "storage" in result.stdout
