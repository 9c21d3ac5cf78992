"""The market end to end: a real `fogcoord serve`, real `fogcoord agent` processes bidding on their
own, and a requester driving the auction with `fogcoord market` and `fogcoord wallet`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import ROUND_CEILING, Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from fogcoord.agent.identity import FileIdentityStore
from tests.served import Served, cli, start

pytestmark = pytest.mark.slow

ENV_DROP = ("FOGCOORD_URL", "FOGCOORD_API_KEY", "FOGCOORD_AGENT_DIR")
CEILING = Decimal("0.01")
GFLOP = 100
MIDDLE_MIN = Decimal("0.005")
"""The second agent's --min-price: above any reserve, below the ceiling."""
MANUAL = Decimal("0.008")
"""What the third device asks by hand: the highest ask, so the clearing price."""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def _finish(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.kill()
    output, _ = proc.communicate(timeout=10)
    return output or ""


def _wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _grid(price: Decimal, step: Decimal) -> Decimal:
    """The agent's rounding onto the auction's grid, written as the agent writes it."""
    return ((price / step).to_integral_value(rounding=ROUND_CEILING) * step).normalize()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = start(tmp_path / "data", env=_env())
    try:
        yield server
    finally:
        server.proc.send_signal(signal.SIGINT)
        try:
            server.proc.wait(timeout=10)
        finally:
            _finish(server.proc)


def _agent(served: Served, state: Path, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fogcoord",
            "agent",
            "--coordinator",
            served.url,
            "--api-key",
            served.key,
            "--state-dir",
            str(state),
            "--interval",
            "0.5",
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )


def _registered(state: Path) -> str:
    """The device id of the agent keeping its identity in ``state``, once it has registered."""

    def device_id() -> str | None:
        identity = FileIdentityStore(state).load()
        return identity.device_id if identity is not None and identity.registered else None

    found: str = _wait_for(device_id, what=f"the agent in {state.name} to register")
    return found


def _requester(served: Served) -> tuple[str, dict[str, str]]:
    operator = {"FOGCOORD_URL": served.url, "FOGCOORD_API_KEY": served.key}
    created = cli("keys", "create", "--kind", "requester", "--name", "buyer", env=_env(**operator))
    assert created.returncode == 0, created.stderr
    principal = re.search(r"principal (\S+) \(requester\)", created.stdout)
    key = re.search(r"(fc_[0-9a-f]{16}_\S{43})", created.stdout)
    assert principal is not None, created.stdout
    assert key is not None, created.stdout
    return principal.group(1), _env(FOGCOORD_URL=served.url, FOGCOORD_API_KEY=key.group(1))


def test_agents_bid_on_their_own_and_the_auction_clears_at_one_price(
    served: Served, tmp_path: Path
) -> None:
    buyer, as_buyer = _requester(served)
    assert cli("wallet", "create", env=as_buyer).returncode == 0

    states = {name: tmp_path / name for name in ("cheap", "middle", "manual")}
    procs = {
        "cheap": _agent(served, states["cheap"]),
        "middle": _agent(served, states["middle"], "--min-price", str(MIDDLE_MIN)),
        "manual": _agent(served, states["manual"], "--no-bid"),
    }
    outputs: dict[str, str] = {}
    try:
        devices = {name: _registered(state) for name, state in states.items()}

        def eligible(device_id: str) -> bool:
            # a heartbeat has come over the channel, so the device hears of new auctions
            score = served.get(f"/v1/devices/{device_id}/suitability")
            if score["reasons"] and not any("heartbeat" in r for r in score["reasons"]):
                pytest.skip(f"this machine cannot offer work now: {score['reasons']}")
            return bool(score["eligible"])

        for device_id in devices.values():
            _wait_for(partial(eligible, device_id), what=f"{device_id} to be eligible")

        quote = cli("market", "quote", "--gflop", str(GFLOP), env=as_buyer)
        assert quote.returncode == 0, quote.stderr
        assert "per GFLOP" in quote.stdout

        created = cli(
            "market",
            "create",
            "--slots",
            "2",
            "--gflop",
            str(GFLOP),
            "--max-price",
            str(CEILING),
            env=as_buyer,
        )
        assert created.returncode == 0, created.stderr
        found = re.search(r"auction (auc-[0-9a-f]+) opened: 2 slots, 1 tokens held", created.stdout)
        assert found is not None, created.stdout
        auction_id = found.group(1)

        # the two bidding agents ask by themselves; the --no-bid one stays out
        view = _wait_for(
            lambda: (v := served.get(f"/v1/auctions/{auction_id}"))["asks"] == 2 and v,
            what="the agents' asks",
        )
        assert view["status"] == "open"
        time.sleep(1.0)
        assert served.get(f"/v1/auctions/{auction_id}")["asks"] == 2

        wallet = served.get(f"/v1/wallets/{buyer}")
        assert Decimal(wallet["balance"]) == 10
        assert Decimal(wallet["pending_out"]) == 1
        [hold] = served.get(f"/v1/wallets/{buyer}/holds")
        assert hold["state"] == "pending"
        assert Decimal(hold["held"]) == 1

        asks = cli("market", "asks", auction_id, env=as_buyer)
        assert asks.returncode == 0, asks.stderr
        reserve = Decimal(view["reserve_price_per_gflop"])
        step = Decimal(view["bid_increment"])
        middle_ask = _grid(MIDDLE_MIN, step)
        for device, ask in ((devices["cheap"], reserve), (devices["middle"], middle_ask)):
            assert re.search(rf"{device}\s.*\s{re.escape(str(ask))}\s", asks.stdout), asks.stdout

        # the third device asks by hand with its own key: N+1 asks settle the auction at once
        manual = FileIdentityStore(states["manual"]).load()
        assert manual is not None
        assert manual.device_key is not None
        price = _grid(MANUAL, step)
        as_device = _env(FOGCOORD_URL=served.url, FOGCOORD_API_KEY=manual.device_key)
        bid = cli(
            "market",
            "bid",
            auction_id,
            "--provider",
            devices["manual"],
            "--price",
            str(price),
            env=as_device,
        )
        assert bid.returncode == 0, bid.stderr
        assert "auction settled" in bid.stdout
        assert f"winners         {devices['cheap']}, {devices['middle']}" in bid.stdout
        assert f"clearing price  {price} per GFLOP (every winner)" in bid.stdout

        result = served.get(f"/v1/auctions/{auction_id}")["result"]
        assert result["winners"] == [devices["cheap"], devices["middle"]]
        assert Decimal(result["clearing_price_per_gflop"]) == price
        captured = Decimal(result["captured"])
        assert captured == price * GFLOP
        assert captured + Decimal(result["released"]) == 1

        wallet = served.get(f"/v1/wallets/{buyer}")
        assert Decimal(wallet["balance"]) == 10 - captured
        assert Decimal(wallet["pending_out"]) == 0
        [hold] = served.get(f"/v1/wallets/{buyer}/holds")
        assert Decimal(hold["captured"]) == captured

        shown = cli("market", "auction", auction_id, env=as_buyer)
        assert shown.returncode == 0, shown.stderr
        assert "settled" in shown.stdout
        listed = cli("market", "auctions", "--status", "settled", env=as_buyer)
        assert auction_id in listed.stdout
        metrics = cli("market", "metrics", env=as_buyer)
        assert metrics.returncode == 0, metrics.stderr
        assert re.search(r"settled / failed\s+.\s*1 / 0", metrics.stdout), metrics.stdout

        late = cli(
            "market",
            "bid",
            auction_id,
            "--provider",
            devices["manual"],
            "--price",
            str(reserve),
            env=as_device,
        )
        assert late.returncode == 1
        assert "bid_refused" in late.stderr
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for name, proc in procs.items():
            try:
                proc.wait(timeout=10)
            finally:
                outputs[name] = _finish(proc)
    for name, output in outputs.items():
        assert procs[name].returncode == 0, output
    assert f"in auction {auction_id}" in outputs["cheap"]
    assert f"asked {middle_ask} per GFLOP in auction {auction_id}" in outputs["middle"]
    assert "asked" not in outputs["manual"]
