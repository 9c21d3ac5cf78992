"""`fogcoord serve` as a real process: readiness, the CLI against it, clean Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.served import Served, cli, finish, start

pytestmark = pytest.mark.slow


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = start(tmp_path / "data")
    yield server
    finish(server.proc)


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
    created = cli("keys", "create", "--kind", "requester", "--name", "alice", env=env)
    assert created.returncode == 0, created.stderr
    key_id = re.search(r"key id\s+([0-9a-f]{16})", created.stdout)
    assert key_id is not None
    listed = cli("keys", "list", env=env)
    assert key_id.group(1) in listed.stdout
    services = cli("services", env=env)
    assert services.returncode == 0
    assert "storage" in services.stdout
    assert "auth" in services.stdout
    revoked = cli("keys", "revoke", key_id.group(1), env=env)
    assert revoked.returncode == 0
    assert "revoked" in revoked.stdout
    denied = cli("services", env={"FOGCOORD_URL": served.url, "FOGCOORD_API_KEY": "nope"})
    assert denied.returncode == 1
    assert "unauthenticated" in denied.stderr


def test_restart_keeps_keys_and_prints_no_new_operator_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start(data)
    first.proc.send_signal(signal.SIGINT)
    assert first.proc.wait(timeout=5) == 0
    finish(first.proc)
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
        finish(proc)


def test_config_show_and_validate(tmp_path: Path) -> None:
    shown = cli(
        "config", "show", env={"FOGCOORD__HARVESTING__PARTICIPANT_SELECTION__MIN_RAM_MB": "4096"}
    )
    assert shown.returncode == 0
    assert "min_ram_mb: 4096" in shown.stdout
    good = tmp_path / "good.yaml"
    good.write_text("harvesting:\n  participant_selection:\n    min_trust_score: 0.7\n")
    assert cli("config", "validate", str(good)).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "harvesting:\n  participant_selection:\n    min_trust: 0.7\n    min_ram_mb: -1\n"
    )
    result = cli("config", "validate", str(bad))
    assert result.returncode == 1
    assert "harvesting.participant_selection.min_trust: unknown key" in result.stderr
    assert "harvesting.participant_selection.min_ram_mb" in result.stderr


def test_serve_refuses_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("bus:\n  url: redis://nope\n")
    result = cli("serve", "--config", str(bad), "--port", "0")
    assert result.returncode == 2
    assert "bus.url" in result.stderr
