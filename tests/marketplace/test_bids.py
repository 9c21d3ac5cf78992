"""submit_bid: every rule refuses with its own name; concurrency and expiry keep the rules."""

from __future__ import annotations

import asyncio
import itertools
import random
from decimal import Decimal
from pathlib import Path

import pytest

from fogcoord.clock import FakeClock
from fogcoord.contracts.errors import Conflict, ValidationFailed
from fogcoord.contracts.marketplace import (
    AuctionFailed,
    AuctionSettled,
    AuctionStatus,
    BidAccepted,
    ResourceBid,
)
from fogcoord.marketplace.auction import BidRefused
from tests.marketplace.support import (
    GRANT,
    REQUESTER,
    Market,
    drain,
    eventually,
    market,
    micro,
)

# with the factor pinned to 1: quoted 1000 micro/GFLOP, step 10, reserve 700; ceiling 2000


async def test_every_rule_refuses_with_its_own_name(m: Market) -> None:
    d = await m.devices_n(3)
    mine = await m.device("own-dev", REQUESTER)
    tired = await m.device("tired", "o-tired", battery=30.0, charging=False)
    aid = await m.auction(slots=2)

    assert await m.refused(aid, mine, 900) == "own_auction"
    assert await m.refused(aid, d[0], 2010) == "above_ceiling"
    assert await m.refused(aid, d[0], 690) == "below_reserve"
    assert await m.refused(aid, d[0], 905) == "off_grid"
    assert await m.refused(aid, "nobody", 900) == "unknown_device"
    assert await m.refused(aid, tired, 900) == "ineligible"
    assert await m.bid(aid, d[0], 2000)  # the ceiling itself is a valid ask
    assert await m.refused(aid, d[0], 2000) == "not_lower"  # sideways
    assert await m.refused(aid, d[0], 1995) == "off_grid"
    assert await m.refused(aid, d[0], 2100) == "above_ceiling"
    assert await m.bid(aid, d[0], 1990)  # exactly one step lower
    assert await m.bid(aid, d[0], 700)  # the reserve itself is a valid ask
    assert await m.refused(aid, d[0], 700) == "not_lower"
    assert [(a.provider, micro(a.price_per_gflop)) for a in m.mkt.asks(aid)] == [(d[0], 700)]
    # refused asks left nothing behind
    assert (await m.mkt.get_auction(aid)).asks == 1

    # a device that stops charging on a low battery is refused from then on
    await m.harv.heartbeat(d[1], battery_percent=20.0, charging=False, thermal_celsius=30.0)
    assert await m.refused(aid, d[1], 900) == "ineligible"
    # a device that does not exist at all, with an otherwise valid ask
    assert await m.refused(aid, "ghost", 800) == "unknown_device"

    await m.bid(aid, d[2], 800)
    await m.mkt.settle_auction(aid)
    assert await m.refused(aid, d[1], 900) == "auction_closed"
    with pytest.raises(BidRefused) as info:
        await m.bid(aid, d[2], 700)
    assert info.value.rule == "auction_closed"
    assert info.value.fields["auction_id"] == aid


async def test_asks_must_be_whole_micro_tokens(m: Market) -> None:
    (d,) = await m.devices_n(1)
    aid = await m.auction(slots=1)
    with pytest.raises(ValidationFailed) as info:
        await m.mkt.submit_bid(aid, ResourceBid(provider=d, price_per_gflop=Decimal("0.0009001")))
    assert info.value.fields["field"] == "price_per_gflop"


async def test_concurrent_bids_keep_the_rules_and_settle_once(tmp_path: Path) -> None:
    for seed in range(4):
        async with market(
            tmp_path / f"c{seed}.db", clock=FakeClock(), yield_in_resolve=True, seed=seed
        ) as m:
            await concurrent_round(m, slots=3, providers=9, seed=seed)
            m.verify()


async def concurrent_round(m: Market, slots: int, providers: int, seed: int) -> None:
    devices = await m.devices_n(providers)
    aid = await m.auction(slots=slots)
    view = await m.mkt.get_auction(aid)
    step = micro(view.bid_increment)
    # one provider lowering concurrently (some asks sideways or off the grid), many providers
    # asking at once, and the requester trying to settle in the middle of it
    plan: list[tuple[str, int]] = [(devices[0], p) for p in (1500, 1500, 1495, 1490, 1480, 1200)]
    plan += [(d, 1000 + 10 * i) for i, d in enumerate(devices[1:])]
    plan += [(devices[1], p) for p in (990, 980, 985)]
    random.Random(seed).shuffle(plan)
    calls = [m.bid(aid, d, p) for d, p in plan]
    settles = [m.mkt.settle_auction(aid) for _ in range(3)]
    results = await asyncio.gather(*calls, *settles, return_exceptions=True)
    await drain()

    allowed = {"not_lower", "off_grid", "auction_closed", "auction_settling"}
    for r in results[: len(calls)]:
        assert r is True or (isinstance(r, BidRefused) and r.rule in allowed), r
    final = await m.mkt.get_auction(aid)
    for r in results[len(calls) :]:
        # the requester asked too early (fewer than N asks) or got the one result
        assert isinstance(r, Conflict) or r == final.result, r
    assert any(r is True for r in results[: len(calls)])

    assert final.status is AuctionStatus.SETTLED
    assert final.result is not None
    settled = [e for e in m.events.of(AuctionSettled) if e.auction_id == aid]
    assert len(settled) == 1
    assert m.events.of(AuctionFailed) == []
    assert len(m.events.escrow_steps(aid, "capture")) == 1
    assert m.escrow_balance(aid) == micro(final.result.captured)
    assert m.balance(REQUESTER) == GRANT - micro(final.result.captured)

    # the accepted asks of every provider went down by at least one step each time
    accepted: dict[str, list[int]] = {}
    for e in m.events.of(BidAccepted):
        if e.auction_id == aid:
            accepted.setdefault(e.provider, []).append(micro(e.price_per_gflop))
    for prices in accepted.values():
        assert all(b <= a - step for a, b in itertools.pairwise(prices)), prices
    # one live ask per provider, the last accepted one
    live = {a.provider: micro(a.price_per_gflop) for a in m.mkt.asks(aid)}
    assert len(live) == len(m.mkt.asks(aid))
    assert live == {p: prices[-1] for p, prices in accepted.items()}
    # early settlement at N+1 asks (or the requester's settle with N); nothing placed after it
    assert len(live) in (slots, slots + 1)
    ranked = sorted(live.items(), key=lambda kv: kv[1])
    assert set(final.result.winners) == {p for p, _ in ranked[:slots]}
    price = ranked[slots][1] if len(live) > slots else ranked[-1][1]
    assert micro(final.result.clearing_price_per_gflop) == price

    # later bids are refused: the auction is closed
    assert await m.refused(aid, devices[-1], 700) == "auction_closed"
    assert len(m.events.escrow_steps(aid, "capture")) == 1


async def test_bids_racing_the_early_settlement_are_refused_while_it_runs(m: Market) -> None:
    devices = await m.devices_n(6)
    aid = await m.auction(slots=2)
    await m.bid(aid, devices[0], 900)
    await m.bid(aid, devices[1], 950)
    # the third ask settles the auction; the ones started with it find it settling or closed
    results = await asyncio.gather(
        *(m.bid(aid, d, 800) for d in devices[2:]), return_exceptions=True
    )
    assert results[0] is True
    for r in results[1:]:
        assert isinstance(r, BidRefused), r
        assert r.rule in ("auction_settling", "auction_closed")
    await drain()
    assert len(m.events.escrow_steps(aid, "capture")) == 1
    result = (await m.mkt.get_auction(aid)).result
    assert result is not None
    assert (result.winners, micro(result.clearing_price_per_gflop)) == (
        (devices[2], devices[0]),
        950,
    )


async def test_an_expired_auction_takes_no_bids_and_fails_with_its_hold_released(
    m: Market,
) -> None:
    devices = await m.devices_n(3)
    aid = await m.auction(slots=2)
    view = await m.mkt.get_auction(aid)
    await m.bid(aid, devices[0], 900)
    assert m.pending_out(REQUESTER) == micro(view.held)

    # just before the close the auction is still open
    await m.clock.advance_and_settle(view.closes_at - m.clock.time() - 1)
    assert (await m.mkt.get_auction(aid)).status is AuctionStatus.OPEN

    # past the close the expiry loop settles it on its own: one ask for two slots fails
    await m.clock.advance_and_settle(2)
    await eventually(lambda: m.mkt.list_auctions()[0].status is AuctionStatus.FAILED, what="expiry")
    assert await m.refused(aid, devices[1], 800) in ("auction_expired", "auction_closed")
    result = (await m.mkt.get_auction(aid)).result
    assert result is not None
    assert (result.status, result.winners, micro(result.captured)) == ("failed", (), 0)
    assert micro(result.released) == micro(view.held)
    assert m.pending_out(REQUESTER) == 0
    assert m.balance(REQUESTER) == GRANT
    await drain()
    failed = [e for e in m.events.of(AuctionFailed) if e.auction_id == aid]
    assert len(failed) == 1
    assert micro(failed[0].released) == micro(view.held)
    assert m.events.escrow_steps(aid, "release") != []
    assert m.events.escrow_steps(aid, "capture") == []


async def test_a_bid_on_an_overdue_auction_settles_it_first(m: Market) -> None:
    devices = await m.devices_n(3)
    aid = await m.auction(slots=2)
    await m.bid(aid, devices[0], 900)
    await m.bid(aid, devices[1], 1000)
    # time passes; the bid runs before the expiry loop gets a turn, so the bid finds the
    # auction overdue itself
    m.clock.advance(601)
    assert await m.refused(aid, devices[2], 800) in ("auction_expired", "auction_closed")
    result = (await m.mkt.get_auction(aid)).result
    assert result is not None
    # it settled with the two asks it had by its close: exactly N, the N-th ask is the price
    assert (result.status, set(result.winners)) == ("settled", {devices[0], devices[1]})
    assert micro(result.clearing_price_per_gflop) == 1000
    assert micro(result.captured) == 1000 * 100
    assert m.balance(REQUESTER) == GRANT - 100_000
    assert m.pending_out(REQUESTER) == 0


async def test_an_expired_auction_with_enough_asks_settles(m: Market) -> None:
    devices = await m.devices_n(3)
    aid = await m.auction(slots=3, allow_partial=True)
    await m.bid(aid, devices[0], 900)
    await m.bid(aid, devices[1], 800)
    await m.clock.advance_and_settle(601)
    await eventually(lambda: m.mkt.list_auctions()[0].status is not AuctionStatus.OPEN)
    result = (await m.mkt.get_auction(aid)).result
    assert result is not None
    assert result.status == "partial"
    assert result.winners == (devices[1], devices[0])
    assert micro(result.clearing_price_per_gflop) == 900
    assert micro(result.captured) == 900 * 100
    assert m.balance(REQUESTER) == GRANT - 90_000
