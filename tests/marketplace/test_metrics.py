"""Market metrics and the events every auction transition and payout publishes."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from fogcoord.clock import FakeClock
from fogcoord.contracts.marketplace import (
    AuctionFailed,
    AuctionOpened,
    AuctionSettled,
    BidAccepted,
    MarketMetrics,
    PriceChanged,
    PriceStats,
    RevenueDistributed,
)
from tests.marketplace.support import Market, drain, market, market_config, micro, task


def stats(count: int, last: str, mean: str, p50: str, p95: str) -> PriceStats:
    return PriceStats(
        count=count,
        last=Decimal(last),
        mean=Decimal(mean),
        p50=Decimal(p50),
        p95=Decimal(p95),
    )


async def trade(m: Market) -> dict[str, str]:
    """Four auctions: settled early at 1000, settled with N at 950, partial at 800, cancelled."""
    d = await m.devices_n(6)
    a = await m.auction(slots=2)
    for device, price in zip(d, (800, 900, 1000), strict=False):
        await m.bid(a, device, price)
    b = await m.auction(slots=2)
    await m.bid(b, d[3], 900)
    await m.bid(b, d[4], 950)
    await m.mkt.settle_auction(b)
    c = await m.auction(slots=3, allow_partial=True)
    await m.bid(c, d[5], 800)
    await m.mkt.settle_auction(c)
    x = await m.auction(slots=2)
    await m.bid(x, d[0], 800)
    await m.mkt.cancel_auction(x, "req")
    # revenue on the first: one validated task, then the job ends
    await m.pay(a, a, [task("t1", d[0], 10.0, (d[2],))])
    await m.pay(a, a, [], final=True)
    return {"early": a, "exact": b, "partial": c, "cancelled": x}


async def test_metrics_after_some_auctions(m: Market) -> None:
    empty = await m.mkt.get_market_metrics()
    assert empty.volume == 0
    assert (empty.open_auctions, empty.auctions_settled, empty.auctions_failed) == (0, 0, 0)
    assert (empty.last_clearing_price, empty.mean_clearing_price, empty.fill_rate) == (
        None,
        None,
        0.0,
    )
    assert empty.clearing_prices["all"] == PriceStats()

    ids = await trade(m)
    got = await m.mkt.get_market_metrics()
    # prices 1000, 950, 800 micro-tokens per GFLOP: mean 916.67, p50 950, p95 995 (linear)
    every = stats(3, "0.0008", "0.000917", "0.00095", "0.000995")
    assert got.clearing_prices == {"1h": every, "24h": every, "all": every}
    assert (got.last_clearing_price, got.mean_clearing_price) == (every.last, every.mean)
    assert (got.open_auctions, got.auctions_settled, got.auctions_failed) == (0, 3, 1)
    assert got.fill_rate == pytest.approx((2 + 2 + 1 + 0) / (2 + 2 + 3 + 2))
    # 10000 paid out of the first escrow: 8500 provider, 1000 validator, 500 platform
    assert got.volume == Decimal("0.01")
    assert got.revenue_by_role == {
        "platform": Decimal("0.0005"),
        "provider": Decimal("0.0085"),
        "refund": Decimal("0.09"),  # what the first job did not use went back
        "validator": Decimal("0.001"),
    }
    assert got.market_factor == 1.0
    assert got.supply_demand_ratio == 6.0  # six eligible devices, nothing asked for

    # two hours later only the 24h and all-time windows still hold those prices
    m.clock.advance(2 * 3600)
    later = await m.mkt.get_market_metrics()
    assert later.clearing_prices["1h"] == PriceStats()
    assert later.clearing_prices["24h"] == every
    assert later.last_clearing_price == every.last
    # a new auction: open, the demand counted against the supply
    fresh = await m.auction(slots=4)
    now = await m.mkt.get_market_metrics()
    assert now.open_auctions == 1
    assert now.supply_demand_ratio == 6 / 4
    d = m.devices
    for device, price in zip(d, (700, 700, 710, 720, 730), strict=False):
        await m.bid(fresh, device, price)
    done = await m.mkt.get_market_metrics()
    assert done.clearing_prices["1h"] == stats(1, "0.00073", "0.00073", "0.00073", "0.00073")
    assert done.clearing_prices["all"].count == 4
    assert done.open_auctions == 0
    assert done.fill_rate == pytest.approx(9 / 13)
    assert micro(m.mkt.list_auctions(status="settled")[0].held) == 200_000
    assert set(ids) == {"early", "exact", "partial", "cancelled"}


async def test_every_transition_publishes_its_event(m: Market) -> None:
    ids = await trade(m)
    await drain()
    opened = {e.auction_id: e for e in m.events.of(AuctionOpened)}
    assert set(opened) == set(ids.values())
    first = opened[ids["early"]]
    assert (first.requester, first.slots, first.gflop) == ("req", 2, 100.0)
    assert (
        micro(first.max_price_per_gflop),
        micro(first.reserve_price_per_gflop),
        micro(first.bid_increment),
    ) == (2000, 700, 10)
    assert first.source == "marketplace"

    bids = [
        (e.auction_id, e.provider, micro(e.price_per_gflop), e.asks)
        for e in m.events.of(BidAccepted)
    ]
    d = m.devices
    assert [b for b in bids if b[0] == ids["early"]] == [
        (ids["early"], d[0], 800, 1),
        (ids["early"], d[1], 900, 2),
        (ids["early"], d[2], 1000, 3),
    ]
    assert len(bids) == 3 + 2 + 1 + 1

    settled = {e.auction_id: e for e in m.events.of(AuctionSettled)}
    assert set(settled) == {ids["early"], ids["exact"], ids["partial"]}
    early = settled[ids["early"]]
    assert (early.status, early.winners, micro(early.clearing_price_per_gflop)) == (
        "settled",
        (d[0], d[1]),
        1000,
    )
    assert (micro(early.captured), micro(early.released)) == (100_000, 100_000)
    assert settled[ids["partial"]].status == "partial"
    assert settled[ids["partial"]].winners == (d[5],)

    (failed,) = m.events.of(AuctionFailed)
    assert failed.auction_id == ids["cancelled"]
    assert micro(failed.released) == 200_000
    assert "cancelled" in failed.reason

    distributed = m.events.of(RevenueDistributed)
    assert len(distributed) == 1
    r = distributed[0]
    assert (r.job_id, r.tasks, r.pending) == (ids["early"], 1, False)
    assert (micro(r.provider), micro(r.validator), micro(r.platform), micro(r.refunded)) == (
        8_500,
        1_000,
        500,
        0,
    )
    assert m.events.of(PriceChanged) == []  # the factor is pinned in this market


async def test_price_changes_are_published_as_demand_moves(tmp_path: Path) -> None:
    async with market(tmp_path / "m.db", config=market_config(factor=None)) as m:
        await m.devices_n(3)
        await m.auction(slots=1)  # demand 1 for supply 3: sqrt(2/4)
        aid = await m.auction(slots=5)  # demand 6: sqrt(7/4)
        await m.mkt.cancel_auction(aid, "req")
        await drain()
        got = [(round(e.market_factor, 6), e.demand, e.supply) for e in m.events.of(PriceChanged)]
        assert got == [
            (0.5, 0, 3),
            (round((2 / 4) ** 0.5, 6), 1, 3),
            (round((7 / 4) ** 0.5, 6), 6, 3),
            (round((2 / 4) ** 0.5, 6), 1, 3),
        ]
        metrics = await m.mkt.get_market_metrics()
        assert metrics.market_factor == pytest.approx((2 / 4) ** 0.5)
        assert metrics.supply_demand_ratio == 3.0


def comparable(metrics: MarketMetrics) -> dict[str, object]:
    return metrics.model_dump(exclude={"supply_demand_ratio", "market_factor"})


async def test_counts_volume_and_prices_survive_a_restart(tmp_path: Path) -> None:
    db, clock = tmp_path / "m.db", FakeClock()
    async with market(db, clock=clock) as m:
        await trade(m)
        before = await m.mkt.get_market_metrics()
    async with market(db, clock=clock) as m:
        after = await m.mkt.get_market_metrics()
    assert (after.volume, after.auctions_settled, after.auctions_failed) == (
        before.volume,
        before.auctions_settled,
        before.auctions_failed,
    )
    assert after.fill_rate == before.fill_rate
    assert after.clearing_prices["all"] == before.clearing_prices["all"]
    assert after.last_clearing_price == before.last_clearing_price
    for role in ("platform", "provider", "validator"):
        assert after.revenue_by_role[role] == before.revenue_by_role[role]


async def test_price_windows_survive_a_restart(tmp_path: Path) -> None:
    db, clock = tmp_path / "m.db", FakeClock()
    async with market(db, clock=clock) as m:
        d = await m.devices_n(2)
        aid = await m.auction(slots=2)
        await m.bid(aid, d[0], 900)
        await m.bid(aid, d[1], 800)
        await clock.advance_and_settle(601)  # it settles at its close, ten minutes after opening
        await drain()
        assert (await m.mkt.get_auction(aid)).result is not None
        clock.advance(3_300)  # 55 minutes after it settled, 65 after it opened
        before = await m.mkt.get_market_metrics()
        assert before.clearing_prices["1h"].count == 1
    async with market(db, clock=clock) as m:
        after = await m.mkt.get_market_metrics()
    assert after.clearing_prices == before.clearing_prices


async def test_revenue_by_role_survives_a_restart(tmp_path: Path) -> None:
    db, clock = tmp_path / "m.db", FakeClock()
    async with market(db, clock=clock) as m:
        await trade(m)
        before = await m.mkt.get_market_metrics()
    async with market(db, clock=clock) as m:
        after = await m.mkt.get_market_metrics()
    assert after.revenue_by_role == before.revenue_by_role
