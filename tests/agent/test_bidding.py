"""Auto-bidding: what to ask (on the auction's grid, within its bounds, never below the owner's
minimum), when to stay out, how refusals and failures are handled, and agents bidding on their
own in an auction a real coordinator announces to them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogcoord.agent.bidding import AskPolicy, AuctionOffer, AutoBidder, choose_ask, on_grid
from fogcoord.agent.device import DeviceSpec
from fogcoord.agent.identity import DeviceIdentity, MemoryIdentityStore
from fogcoord.agent.runner import Agent
from fogcoord.api.schemas import Heartbeat
from fogcoord.auth.models import PrincipalKind
from fogcoord.client import FogClient
from fogcoord.contracts.marketplace import AuctionStatus
from tests.agent.conftest import LiveApi

MICRO = Decimal(1_000_000)
NOW = 1_700_000_000.0
PLUGGED = Heartbeat(battery_percent=90.0, charging=True, thermal_celsius=30.0)


def offer(**over: Any) -> AuctionOffer:
    data: dict[str, Any] = {
        "auction_id": "auc-1",
        "slots": 2,
        "gflop": 100.0,
        "max_price_per_gflop": Decimal("0.002"),
        "reserve_price_per_gflop": Decimal("0.0007"),
        "bid_increment": Decimal("0.00001"),
        "closes_at": NOW + 600,
        "requester": "req_0123456789abcdef",
    }
    data.update(over)
    return AuctionOffer.model_validate(data)


def tokens(micro: int) -> Decimal:
    return Decimal(micro) / MICRO


# --- choose_ask --------------------------------------------------------------------------------


@st.composite
def markets(draw: st.DrawFn) -> tuple[AskPolicy, AuctionOffer]:
    step = draw(st.integers(1, 10_000))
    reserve = step * draw(st.integers(1, 1_000))
    ceiling = draw(st.integers(1, 20_000_000))
    policy = AskPolicy(
        min_price_per_gflop=tokens(draw(st.integers(0, 20_000_000))),
        markup=draw(st.decimals(0, 3, places=4)),
    )
    auction = offer(
        max_price_per_gflop=tokens(ceiling),
        reserve_price_per_gflop=tokens(reserve),
        bid_increment=tokens(step),
    )
    return policy, auction


@given(markets())
def test_an_ask_is_the_lowest_grid_price_meeting_the_policy_within_the_auction(
    market: tuple[AskPolicy, AuctionOffer],
) -> None:
    policy, auction = market
    ask = choose_ask(policy, auction, PLUGGED, NOW)
    step = auction.bid_increment
    reserve = auction.reserve_price_per_gflop
    wanted = max(policy.min_price_per_gflop, reserve * (1 + policy.markup))
    if ask is None:
        assert on_grid(wanted, step) > auction.max_price_per_gflop
        return
    assert ask % step == 0, "on the auction's grid"
    assert (ask * MICRO) % 1 == 0, "whole micro-tokens"
    assert "E" not in str(ask), "written plainly, as the coordinator and people read it"
    assert reserve <= ask <= auction.max_price_per_gflop
    assert ask >= policy.min_price_per_gflop
    assert ask >= reserve * (1 + policy.markup)
    assert ask - step < wanted, "the lowest such grid price"


def test_without_a_minimum_the_ask_is_the_reserve() -> None:
    assert choose_ask(AskPolicy(), offer(), PLUGGED, NOW) == Decimal("0.0007")


def test_grid_prices_are_written_plainly() -> None:
    assert str(on_grid(Decimal("0.0049"), Decimal("0.0010"))) == "0.005"
    assert str(on_grid(Decimal("19.5"), Decimal("0.50"))) == "19.5"
    assert str(on_grid(Decimal("19.6"), Decimal("0.50"))) == "20"
    assert str(on_grid(Decimal("0.0000001"), Decimal("0.000001"))) == "0.000001"


def test_a_minimum_off_the_grid_rounds_up_onto_it() -> None:
    policy = AskPolicy(min_price_per_gflop=Decimal("0.0010001"))
    assert choose_ask(policy, offer(), PLUGGED, NOW) == Decimal("0.00101")
    marked_up = AskPolicy(markup=Decimal("0.5"))
    assert choose_ask(marked_up, offer(), PLUGGED, NOW) == Decimal("0.00105")


@pytest.mark.parametrize(
    ("policy", "state", "now"),
    [
        (AskPolicy(enabled=False), PLUGGED, NOW),
        (
            AskPolicy(only_when_charging=True),
            Heartbeat(battery_percent=100.0, charging=False, thermal_celsius=30.0),
            NOW,
        ),
        (
            AskPolicy(min_battery_percent=60.0),
            Heartbeat(battery_percent=59.5, charging=True, thermal_celsius=30.0),
            NOW,
        ),
        (AskPolicy(), PLUGGED, NOW + 600),
        (AskPolicy(min_price_per_gflop=Decimal("0.002001")), PLUGGED, NOW),
        (AskPolicy(markup=Decimal(2)), PLUGGED, NOW),
    ],
    ids=["disabled", "not-charging", "battery-low", "closed", "above-ceiling", "markup-above"],
)
def test_the_policy_stays_out(policy: AskPolicy, state: Heartbeat, now: float) -> None:
    assert choose_ask(policy, offer(), state, now) is None


def test_the_conditions_met_it_bids() -> None:
    policy = AskPolicy(only_when_charging=True, min_battery_percent=60.0)
    assert choose_ask(policy, offer(), PLUGGED, NOW) == Decimal("0.0007")
    at_ceiling = AskPolicy(min_price_per_gflop=Decimal("0.002"))
    assert choose_ask(at_ceiling, offer(), PLUGGED, NOW) == Decimal("0.002")


# --- AutoBidder against a scripted coordinator -------------------------------------------------


class FixedDevice:
    def __init__(self, reading: Heartbeat = PLUGGED) -> None:
        self.live = reading

    def spec(self) -> DeviceSpec:
        return DeviceSpec(cpu_cores=4, gflops=25.0, ram_mb=8192, storage_gb=50.0)

    def reading(self) -> Heartbeat:
        return self.live


class Coordinator:
    """Answers bids as told and records them."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    def factory(self, url: str, key: str) -> FogClient:
        return FogClient(url, key, transport=httpx.MockTransport(self))


def accepted(request: httpx.Request) -> httpx.Response:
    now = time.time()
    body = {
        "accepted": True,
        "auction_id": "auc-1",
        "requester": "r",
        "escrow_id": "auc-1",
        "job_id": None,
        "slots": 2,
        "gflop": 100.0,
        "status": "open",
        "max_price_per_gflop": "0.002",
        "reserve_price_per_gflop": "0.0007",
        "bid_increment": "0.00001",
        "quoted_price_per_gflop": "0.001",
        "held": "0.2",
        "opened_at": now,
        "closes_at": now + 600,
        "allow_partial": False,
        "asks": 1,
    }
    return httpx.Response(201, json=body)


def refused(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        409, json={"error": "bid_refused", "detail": "ask refused", "rule": "auction_closed"}
    )


def bidder_for(
    coordinator: Coordinator, device: FixedDevice | None = None, policy: AskPolicy | None = None
) -> AutoBidder:
    identity = DeviceIdentity.generate("http://coordinator").with_key("fc_device_key")
    agent = Agent(
        "http://coordinator",
        device=device or FixedDevice(),
        identities=MemoryIdentityStore(identity),
        rng=np.random.default_rng(0),
    )
    agent.identity = identity
    return AutoBidder(agent, policy, client_factory=coordinator.factory)


def announcement(**over: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "auction", **offer(closes_at=time.time() + 600).model_dump()}
    message.update(over)
    decoded: dict[str, Any] = json.loads(json.dumps(message, default=str))  # as sent over a channel
    return decoded


async def test_an_announcement_becomes_an_ask_with_the_device_key_and_no_reply() -> None:
    coordinator = Coordinator(accepted)
    bidder = bidder_for(coordinator)
    assert bidder.agent.handlers.get("auction") == bidder.on_auction
    await bidder.on_auction(announcement())  # typed to return None: no reply on the channel
    [request] = coordinator.requests
    assert request.url.path == "/v1/auctions/auc-1/bids"
    assert request.headers["authorization"] == "Bearer fc_device_key"
    identity = bidder.agent.identity
    assert identity is not None
    assert json.loads(request.content) == {
        "provider": identity.device_id,
        "price_per_gflop": "0.0007",
    }
    assert (bidder.offers, bidder.bids, bidder.refused, bidder.errors) == (1, 1, 0, 0)
    await bidder.close()


async def test_a_refused_ask_is_counted_and_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    coordinator = Coordinator(refused)
    bidder = bidder_for(coordinator)
    with caplog.at_level("DEBUG", logger="fogcoord.agent.bidding"):
        await bidder.on_auction(announcement())
    assert len(coordinator.requests) == 1
    assert (bidder.bids, bidder.refused, bidder.errors) == (0, 1, 0)
    assert bidder.last_refusal == "auction_closed"
    [record] = [r for r in caplog.records if "refused" in r.getMessage()]
    assert record.levelname == "DEBUG"
    await bidder.close()


async def test_failures_are_counted_and_logged() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": "service_unavailable", "detail": "busy"})

    for answer in (down, broken):
        coordinator = Coordinator(answer)
        bidder = bidder_for(coordinator)
        await bidder.on_auction(announcement())
        assert (bidder.bids, bidder.refused, bidder.errors) == (0, 0, 1)
        await bidder.close()


async def test_declined_and_malformed_announcements_send_nothing() -> None:
    coordinator = Coordinator(accepted)
    on_battery = FixedDevice(Heartbeat(battery_percent=80.0, charging=False, thermal_celsius=30.0))
    bidder = bidder_for(coordinator, on_battery, AskPolicy(only_when_charging=True))
    await bidder.on_auction(announcement())
    await bidder.on_auction(announcement(bid_increment="0"))
    await bidder.on_auction({"type": "auction", "auction_id": "auc-2"})
    assert coordinator.requests == []
    assert (bidder.offers, bidder.declined, bidder.errors) == (3, 1, 2)
    await bidder.close()


async def test_a_new_device_key_gets_a_new_client() -> None:
    coordinator = Coordinator(accepted)
    bidder = bidder_for(coordinator)
    await bidder.on_auction(announcement())
    identity = bidder.agent.identity
    assert identity is not None
    bidder.agent.identity = identity.with_key("fc_new_key")
    await bidder.on_auction(announcement())
    assert [r.headers["authorization"] for r in coordinator.requests] == [
        "Bearer fc_device_key",
        "Bearer fc_new_key",
    ]
    await bidder.close()


# --- agents bidding in a real coordinator's auction --------------------------------------------


async def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def requester(live_api: LiveApi) -> AsyncIterator[tuple[str, FogClient]]:
    issued = await live_api.operator.create_key(kind=PrincipalKind.REQUESTER, name="buyer")
    async with FogClient(live_api.url, issued.key) as client:
        await client.create_wallet()
        yield issued.principal.principal_id, client


async def test_agents_hear_of_an_auction_and_fill_it_by_themselves(
    live_api: LiveApi, requester: tuple[str, FogClient], tmp_path: Path
) -> None:
    buyer, client = requester
    markups = {"cheap": Decimal(0), "middle": Decimal("0.5"), "dear": Decimal(1), "off": None}
    async with AsyncExitStack() as stack:
        agents: dict[str, Agent] = {}
        bidders: dict[str, AutoBidder] = {}
        for name, markup in markups.items():
            agent = Agent(
                live_api.url,
                live_api.operator_key,
                tmp_path / name,
                interval=0.1,
                device=FixedDevice(),
                identities=MemoryIdentityStore(),
                rng=np.random.default_rng(0),
            )
            policy = AskPolicy(markup=markup or 0, enabled=markup is not None)
            bidders[name] = bidder = AutoBidder(agent, policy)
            stack.push_async_callback(bidder.close)
            task = asyncio.create_task(agent.run())
            stack.push_async_callback(asyncio.wait_for, task, 5)
            stack.callback(agent.stop)
            agents[name] = agent
        coord = live_api.coord

        def all_eligible() -> bool:
            ids = [a.device_id for a in agents.values()]
            return all(
                i is not None and coord.channels.is_connected(i) and a.heartbeats >= 1
                for i, a in zip(ids, agents.values(), strict=True)
            )

        await eventually(all_eligible)
        standing = await coord.harvesting.device_standing(
            [a.device_id or "" for a in agents.values()]
        )
        assert all(s.eligible for s in standing.values())

        view = await client.create_auction(2, 100.0, Decimal("0.01"))
        await eventually(lambda: coord.marketplace.list_auctions()[0].status != "open")
        settled = await client.auction(view.auction_id)
        assert settled.status is AuctionStatus.SETTLED
        result = settled.result
        assert result is not None
        device = {name: a.device_id for name, a in agents.items()}
        assert result.winners == (device["cheap"], device["middle"])
        # one price for every winner: the (N+1)-th ask, the dear device's
        reserve, step = view.reserve_price_per_gflop, view.bid_increment
        assert result.clearing_price_per_gflop == on_grid(2 * reserve, step)
        assert result.captured == result.clearing_price_per_gflop * 100
        wallet = await client.wallet(buyer)
        assert (wallet.balance, wallet.pending_out) == (Decimal(10) - result.captured, Decimal(0))
        await eventually(lambda: all(b.offers == 1 for b in bidders.values()))
        assert [bidders[n].bids for n in ("cheap", "middle", "dear", "off")] == [1, 1, 1, 0]
        assert bidders["off"].declined == 1
        assert all(a.errors == 0 for a in agents.values())
