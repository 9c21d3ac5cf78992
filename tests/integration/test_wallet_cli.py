"""The wallet and ledger CLI against a real `fogcoord serve`, then `ledger verify` offline."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.served import Served, cli, finish, start

pytestmark = pytest.mark.slow


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def served(data_dir: Path) -> Iterator[Served]:
    server = start(data_dir)
    try:
        yield server
    finally:
        finish(server.proc)


def _new_requester(served: Served, name: str) -> tuple[str, dict[str, str]]:
    operator = {"FOGCOORD_URL": served.url, "FOGCOORD_API_KEY": served.key}
    created = cli("keys", "create", "--kind", "requester", "--name", name, env=operator)
    assert created.returncode == 0, created.stderr
    principal = re.search(r"principal (\S+) \(requester\)", created.stdout)
    key = re.search(r"(fc_[0-9a-f]{16}_\S{43})", created.stdout)
    assert principal is not None, created.stdout
    assert key is not None, created.stdout
    return principal.group(1), {"FOGCOORD_URL": served.url, "FOGCOORD_API_KEY": key.group(1)}


def _verify(config: Path) -> subprocess.CompletedProcess[str]:
    return cli("ledger", "verify", "--config", str(config))


def test_wallet_cli_then_ledger_verify_detects_tampering(
    served: Served, data_dir: Path, tmp_path: Path
) -> None:
    alice, as_alice = _new_requester(served, "alice")
    bob, as_bob = _new_requester(served, "bob")

    created = cli("wallet", "create", env=as_alice)
    assert created.returncode == 0, created.stderr
    assert f"wallet {alice}: balance 10 tokens" in created.stdout
    assert cli("wallet", "create", env=as_bob).returncode == 0
    named = cli("wallet", "create", "alice-travel", "--funding", alice, env=as_alice)
    assert named.returncode == 0, named.stderr

    balance = cli("wallet", "balance", env=as_alice)
    assert balance.returncode == 0, balance.stderr
    rows = [line for line in balance.stdout.splitlines() if alice in line]
    assert len(rows) == 2  # the default wallet and alice-travel (funded by it)
    assert any("alice-travel" in row and " 10 " in row for row in rows)

    sent = cli(
        "wallet", "send", alice, bob, "1.5", "--id", "pay-1", "--memo", "lunch", env=as_alice
    )
    assert sent.returncode == 0, sent.stderr
    committed = re.search(r"pay-1: committed in block (\d+)", sent.stdout)
    assert committed is not None, sent.stdout
    again = cli(
        "wallet", "send", alice, bob, "1.5", "--id", "pay-1", "--memo", "lunch", env=as_alice
    )
    assert again.returncode == 0, again.stderr
    assert f"pay-1: exists in block {committed.group(1)}" in again.stdout

    one = cli("wallet", "balance", alice, env=as_alice)
    assert "8.49958" in one.stdout  # 10 - 1.5 - 0.00042 gas fee
    assert "11.5" in cli("wallet", "balance", bob, env=as_bob).stdout

    history = cli("wallet", "history", alice, env=as_alice)
    assert history.returncode == 0, history.stderr
    ids = re.findall(r"^│ (\S+)", history.stdout, flags=re.MULTILINE)
    assert ids == ["fee:pay-1", "pay-1", f"grant:{alice}"]
    assert "-1.5" in history.stdout
    assert "lunch" in history.stdout
    paged = cli("wallet", "history", alice, "--limit", "1", "--before", "pay-1", env=as_alice)
    assert re.findall(r"^│ (\S+)", paged.stdout, flags=re.MULTILINE) == [f"grant:{alice}"]
    assert "+1.5" in cli("wallet", "history", bob, env=as_bob).stdout

    # refusals: clean messages, non-zero exits, nothing moved
    poor = cli("wallet", "send", alice, bob, "9", "--id", "pay-2", env=as_alice)
    assert poor.returncode == 1
    assert "transfer_failed" in poor.stderr
    assert "exceeds_credits" in poor.stderr
    theft = cli("wallet", "send", bob, alice, "1", "--id", "pay-3", env=as_alice)
    assert theft.returncode == 1
    assert "forbidden" in theft.stderr
    for bad in ("0.0000001", "abc"):
        refused = cli("wallet", "send", alice, bob, bad, env=as_alice)
        assert refused.returncode == 2, refused.stderr
        assert "amount" in refused.stderr
        assert "Traceback" not in refused.stderr + refused.stdout
    bad_id = cli("wallet", "create", "no spaces", env=as_alice)
    assert bad_id.returncode == 2
    assert "wallet_id" in bad_id.stderr
    assert "8.49958" in cli("wallet", "balance", alice, env=as_alice).stdout

    served.proc.send_signal(signal.SIGINT)
    assert served.proc.wait(timeout=10) == 0

    config = tmp_path / "fog.yaml"
    config.write_text(f"server:\n  data_dir: {data_dir}\n")
    verified = _verify(config)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "ledger verified" in verified.stdout

    with closing(sqlite3.connect(data_dir / "fogcoord.db")) as db, db:
        changed = db.execute(
            "UPDATE ledger_transfers SET amount = amount + 1 WHERE id = 'pay-1'"
        ).rowcount
    assert changed == 1
    tampered = _verify(config)
    assert tampered.returncode == 1
    assert "ledger verified" not in tampered.stdout
    problems = tampered.stderr
    assert f"account {alice}: stored" in problems
    assert f"account {bob}: stored" in problems
    assert f"block {committed.group(1)} hash does not match its contents" in problems


def test_ledger_verify_of_an_untouched_empty_ledger(tmp_path: Path) -> None:
    config = tmp_path / "fog.yaml"
    config.write_text(f"server:\n  data_dir: {tmp_path / 'fresh'}\n")
    result = _verify(config)
    assert result.returncode == 0, result.stderr
    assert "0 accounts, 0 transfers, 0 blocks" in result.stdout
    assert "ledger verified" in result.stdout
