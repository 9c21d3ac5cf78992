"""A restarted marketplace keeps results, pays nothing twice and finishes what it started."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from fogcoord.clock import FakeClock
from fogcoord.contracts.errors import Conflict, ServiceUnavailable
from fogcoord.contracts.marketplace import AuctionFailed, AuctionSettled, AuctionStatus
from fogcoord.contracts.tokenomics import PLATFORM_WALLET
from fogcoord.marketplace.service import HOLD_GRACE_S
from fogcoord.marketplace.store import SqlMarketStore
from fogcoord.tokenomics.escrow import hold_id
from fogcoord.tokenomics.model import PendingState
from tests.marketplace.support import (
    GRANT,
    REQUESTER,
    Collector,
    Market,
    drain,
    eventually,
    market,
    micro,
    task,
)


def stored(m: Market, auction_id: str) -> dict[str, Any]:
    (row,) = [r for r in SqlMarketStore(m.engine).load_auctions() if r["auction_id"] == auction_id]
    return row


async def test_results_survive_and_no_task_is_paid_twice(tmp_path: Path) -> None:
    db, clock, events = tmp_path / "m.db", FakeClock(), Collector()
    async with market(db, clock=clock, events=events) as m:
        d = await m.devices_n(4)
        aid = await m.auction(slots=2, job_id="job-1")
        for device, price in zip(d, (800, 900, 1000), strict=False):
            await m.bid(aid, device, price)
        before = await m.mkt.get_auction(aid)
        first = await m.pay(aid, "job-1", [task("t1", d[0], 10.0, (d[2],)), task("t2", d[1], 10.0)])
        assert first.tasks_paid == 2
        paid_once = {w: m.balance(w) for w in [REQUESTER, PLATFORM_WALLET, *map(m.owner_of, d)]}
        owners = [m.owner_of(x) for x in d]

    clock.advance(10)
    async with market(db, clock=clock, events=events) as m:
        after = await m.mkt.get_auction(aid)
        # asks live in memory only; everything else of the auction, its result above all, stays
        volatile = {"asks", "best_ask"}
        assert after.model_dump(exclude=volatile) == before.model_dump(exclude=volatile)
        assert after.result == before.result
        assert await m.mkt.settle_auction(aid) == before.result
        assert [v.auction_id for v in m.mkt.list_auctions()] == [aid]
        # already paid before the restart: paid no second time
        again = await m.pay(aid, "job-1", [task("t1", d[0], 10.0, (d[2],)), task("t2", d[1], 10.0)])
        assert (again.tasks_paid, again.tasks_already_paid) == (0, 2)
        assert {w: m.balance(w) for w in paid_once} == paid_once
        more = await m.pay(aid, "job-1", [task("t2", d[1], 10.0), task("t3", d[1], 10.0)])
        assert (more.tasks_paid, more.tasks_already_paid) == (1, 1)
        # the job-id stays taken, the auction stays closed to bids
        with pytest.raises(Conflict):
            await m.auction(slots=1, job_id="job-1")
        assert await m.refused(aid, d[3], 700) == "auction_closed"
        end = await m.pay(aid, "job-1", [], final=True)
        assert micro(end.refunded) == 100_000 - 30_000
        assert m.escrow_balance("job-1") == 0
        assert m.balance(REQUESTER) == GRANT - 30_000
        assert sum(m.balance(o) - GRANT for o in owners) + m.balance(PLATFORM_WALLET) == 30_000
        m.verify()
    assert len(events.escrow_steps("job-1", "capture")) == 1


async def test_a_job_ended_before_a_restart_stays_ended(tmp_path: Path) -> None:
    db, clock = tmp_path / "m.db", FakeClock()
    async with market(db, clock=clock) as m:
        d = await m.devices_n(3)
        aid = await m.auction(slots=2)
        for device, price in zip(d, (800, 900, 1000), strict=False):
            await m.bid(aid, device, price)
        await m.pay(aid, aid, [task("t1", d[0], 10.0)], final=True)
        ended = m.balance(REQUESTER)
    async with market(db, clock=clock) as m:
        with pytest.raises(Conflict):
            await m.pay(aid, aid, [task("t2", d[0], 10.0)])
        again = await m.pay(aid, aid, [], final=True)
        assert micro(again.refunded) == 0
        assert m.balance(REQUESTER) == ended
        m.verify()


async def test_a_settlement_interrupted_after_its_plan_is_finished_on_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, clock, events = tmp_path / "m.db", FakeClock(), Collector()
    async with market(db, clock=clock, events=events) as m:
        d = await m.devices_n(3)
        aid = await m.auction(slots=2)
        await m.bid(aid, d[0], 900)
        await m.bid(aid, d[1], 950)

        async def down(job_id: str, amount: int) -> Any:
            raise ServiceUnavailable("tokenomics went away")

        monkeypatch.setattr(m.tok, "capture_escrow", down)
        with pytest.raises(ServiceUnavailable):
            await m.mkt.settle_auction(aid)
        row = stored(m, aid)
        assert row["status"] == "open"
        plan = json.loads(row["settling"])
        assert (plan["winners"], plan["price"], plan["capture"]) == ([d[0], d[1]], 950, 95_000)
        assert m.pending_out(REQUESTER) > 0  # still only held
        monkeypatch.undo()

    clock.advance(5)
    async with market(db, clock=clock, events=events) as m:
        # finished during start, with the stored plan: nobody had to ask
        view = await m.mkt.get_auction(aid)
        assert view.status is AuctionStatus.SETTLED
        assert view.result is not None
        assert view.result.winners == (d[0], d[1])
        assert micro(view.result.clearing_price_per_gflop) == 950
        assert micro(view.result.captured) == 95_000
        assert m.balance(REQUESTER) == GRANT - 95_000
        assert m.pending_out(REQUESTER) == 0
        row = stored(m, aid)
        assert row["status"] == "settled"
        assert json.loads(row["settling"])["winners"] == [d[0], d[1]]  # the plan is kept
        # and the winners are paid from it
        out = await m.pay(aid, aid, [task("t1", d[0], 10.0)], final=True)
        assert {k: micro(v) for k, v in out.providers.items()} == {d[0]: 8_075}
        assert m.escrow_balance(aid) == 0
        m.verify()
    await drain()
    assert len(events.escrow_steps(aid, "capture")) == 1
    assert len([e for e in events.of(AuctionSettled) if e.auction_id == aid]) == 1


async def test_a_capture_whose_answer_was_lost_is_not_taken_twice_after_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, clock, events = tmp_path / "m.db", FakeClock(), Collector()
    async with market(db, clock=clock, events=events) as m:
        d = await m.devices_n(3)
        aid = await m.auction(slots=2)
        await m.bid(aid, d[0], 900)
        await m.bid(aid, d[1], 950)
        real = m.tok.capture_escrow

        async def lost(job_id: str, amount: int) -> Any:
            await real(job_id, amount)
            raise ServiceUnavailable("the answer was lost")

        monkeypatch.setattr(m.tok, "capture_escrow", lost)
        with pytest.raises(ServiceUnavailable):
            await m.mkt.settle_auction(aid)
        assert m.balance(REQUESTER) == GRANT - 95_000  # the ledger did capture
        monkeypatch.undo()

    async with market(db, clock=clock, events=events) as m:
        view = await m.mkt.get_auction(aid)
        assert view.result is not None
        assert (view.result.status, micro(view.result.captured)) == ("settled", 95_000)
        assert m.balance(REQUESTER) == GRANT - 95_000
        assert m.escrow_balance(aid) == 95_000
        info = m.tok.ledger.pending(hold_id(aid))
        assert info is not None
        assert info.state is PendingState.POSTED
        m.verify()
    await drain()
    assert len(events.escrow_steps(aid, "capture")) == 1


async def test_a_retried_settlement_keeps_the_plan_whose_capture_went_through(
    m: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = await m.devices_n(3)
    aid = await m.auction(slots=2)
    await m.bid(aid, d[0], 900)
    await m.bid(aid, d[1], 800)
    real = m.tok.capture_escrow

    async def lost(job_id: str, amount: int) -> Any:
        await real(job_id, amount)
        raise ServiceUnavailable("the answer was lost")

    monkeypatch.setattr(m.tok, "capture_escrow", lost)
    with pytest.raises(ServiceUnavailable):
        await m.mkt.settle_auction(aid)
    monkeypatch.undo()
    assert m.escrow_balance(aid) == 90_000  # captured at the planned 900
    # the decision is taken: no ask may move it any more
    assert await m.refused(aid, d[0], 850) == "auction_settling"
    result = await m.mkt.settle_auction(aid)
    assert (result.status, micro(result.clearing_price_per_gflop)) == ("settled", 900)
    assert micro(result.captured) == m.escrow_balance(aid) == 90_000
    await m.pay(aid, aid, [], final=True)
    assert m.escrow_balance(aid) == 0


async def test_a_hold_that_expired_while_down_fails_the_planned_settlement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, clock, events = tmp_path / "m.db", FakeClock(), Collector()
    async with market(db, clock=clock, events=events) as m:
        d = await m.devices_n(3)
        aid = await m.auction(slots=2)
        view = await m.mkt.get_auction(aid)
        await m.bid(aid, d[0], 900)
        await m.bid(aid, d[1], 950)

        async def down(job_id: str, amount: int) -> Any:
            raise ServiceUnavailable("tokenomics went away")

        monkeypatch.setattr(m.tok, "capture_escrow", down)
        with pytest.raises(ServiceUnavailable):
            await m.mkt.settle_auction(aid)
        monkeypatch.undo()

    # down past the close and the hold's grace: the ledger's own expiry gives the money back
    clock.advance(view.closes_at - clock.time() + HOLD_GRACE_S + 1)
    async with market(db, clock=clock, events=events) as m:
        result = (await m.mkt.get_auction(aid)).result
        assert result is not None
        assert (result.status, result.winners, micro(result.captured)) == ("failed", (), 0)
        assert "could not be captured" in result.reason
        assert micro(result.released) == micro(view.held)
        await eventually(lambda: m.balance(REQUESTER) == GRANT and m.pending_out(REQUESTER) == 0)
        assert m.escrow_balance(aid) == 0
        with pytest.raises(Conflict):
            await m.pay(aid, aid, [task("t1", d[0], 1.0)])
        m.verify()
    await drain()
    assert events.escrow_steps(aid, "capture") == []
    assert len([e for e in events.of(AuctionFailed) if e.auction_id == aid]) == 1


async def test_an_open_auction_whose_hold_expired_while_down_fails_with_money_back(
    tmp_path: Path,
) -> None:
    db, clock = tmp_path / "m.db", FakeClock()
    async with market(db, clock=clock) as m:
        d = await m.devices_n(3)
        aid = await m.auction(slots=2)
        view = await m.mkt.get_auction(aid)
        await m.bid(aid, d[0], 900)
        await m.bid(aid, d[1], 950)  # N asks: it would settle at its close
        assert m.pending_out(REQUESTER) == micro(view.held)

    clock.advance(view.closes_at - clock.time() + HOLD_GRACE_S + 1)
    async with market(db, clock=clock) as m:
        # asks live in memory only: after the restart the auction has none, and fails
        await clock.advance_and_settle(1.0)
        await eventually(lambda: m.mkt.list_auctions()[0].status is AuctionStatus.FAILED)
        result = (await m.mkt.get_auction(aid)).result
        assert result is not None
        assert (result.status, micro(result.captured)) == ("failed", 0)
        await eventually(lambda: m.balance(REQUESTER) == GRANT and m.pending_out(REQUESTER) == 0)
        assert (await m.mkt.get_market_metrics()).open_auctions == 0
        m.verify()


async def test_an_open_auction_survives_a_short_restart_and_collects_asks_afresh(
    tmp_path: Path,
) -> None:
    db, clock = tmp_path / "m.db", FakeClock()
    async with market(db, clock=clock) as m:
        d = await m.devices_n(3)
        aid = await m.auction(slots=2)
        view = await m.mkt.get_auction(aid)
        await m.bid(aid, d[0], 900)
    clock.advance(60)
    async with market(db, clock=clock) as m:
        reopened = await m.mkt.get_auction(aid)
        assert reopened.status is AuctionStatus.OPEN
        assert (reopened.closes_at, reopened.held, reopened.asks) == (view.closes_at, view.held, 0)
        for device, price in zip(d, (900, 950, 1000), strict=True):
            await m.harv.heartbeat(device, battery_percent=90, charging=True, thermal_celsius=30)
            await m.bid(aid, device, price)
        result = (await m.mkt.get_auction(aid)).result
        assert result is not None
        assert (result.winners, micro(result.clearing_price_per_gflop)) == ((d[0], d[1]), 1000)
        assert m.balance(REQUESTER) == GRANT - 100_000
        m.verify()


async def test_a_batch_interrupted_before_the_ledger_is_paid_once_on_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, clock = tmp_path / "m.db", FakeClock()
    async with market(db, clock=clock) as m:
        d = await m.devices_n(3)
        aid = await m.auction(slots=2)
        for device, price in zip(d, (800, 900, 1000), strict=True):
            await m.bid(aid, device, price)

        async def down(job_id: str, legs: Any) -> Any:
            raise ServiceUnavailable("tokenomics went away")

        monkeypatch.setattr(m.tok, "pay_from_escrow", down)
        batch = [task("t1", d[0], 10.0, (d[2],)), task("t2", d[1], 10.0)]
        with pytest.raises(ServiceUnavailable):
            await m.pay(aid, aid, batch)
        monkeypatch.undo()
        assert [b["state"] for b in m.mkt.store.unfinished_batches()] == ["paying"]
        assert m.escrow_balance(aid) == 100_000
        owners = [m.owner_of(x) for x in d]

    async with market(db, clock=clock) as m:
        # driven to the end during start, with the legs it recorded
        assert m.mkt.store.unfinished_batches() == []
        assert m.escrow_balance(aid) == 100_000 - 20_000
        assert [m.balance(o) - GRANT for o in owners] == [8_500, 8_500, 2_000]
        again = await m.pay(aid, aid, batch)
        assert (again.tasks_paid, again.tasks_already_paid) == (0, 2)
        assert [m.balance(o) - GRANT for o in owners] == [8_500, 8_500, 2_000]
        await m.pay(aid, aid, [], final=True)
        assert m.balance(REQUESTER) == GRANT - 20_000
        m.verify()


async def test_a_batch_interrupted_before_the_ledger_is_finished_by_the_next_call(
    m: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = await m.devices_n(3)
    aid = await m.auction(slots=2)
    for device, price in zip(d, (800, 900, 1000), strict=True):
        await m.bid(aid, device, price)
    real = m.tok.pay_from_escrow
    calls = 0

    async def flaky(job_id: str, legs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ServiceUnavailable("tokenomics went away")
        return await real(job_id, legs)

    monkeypatch.setattr(m.tok, "pay_from_escrow", flaky)
    with pytest.raises(ServiceUnavailable):
        await m.pay(aid, aid, [task("t1", d[0], 10.0)])
    out = await m.pay(aid, aid, [task("t1", d[0], 10.0), task("t2", d[1], 10.0)])
    assert (out.tasks_paid, out.tasks_already_paid) == (1, 1)
    assert m.escrow_balance(aid) == 100_000 - 20_000
    assert m.balance(m.owner_of(d[0])) - GRANT == 8_500
    await m.mkt.flush()
    assert m.mkt.store.unfinished_batches() == []


async def test_stopping_the_services_leaves_no_task_running(tmp_path: Path) -> None:
    async with market(tmp_path / "m.db") as m:
        await m.devices_n(1)
        await m.auction(slots=1)  # every auction holds its escrow with a timeout
    await drain()
    me = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not me] == []
