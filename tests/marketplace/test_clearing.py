"""Uniform-price clearing: winners and price over random asks, against a brute-force model."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fogcoord.contracts.marketplace import AuctionStatus
from fogcoord.marketplace.auction import AskRec, BidRefused, clear, rank
from tests.marketplace.support import MICRO, market, micro

TRUSTS = (0.6, 0.65, 0.8, 0.95)


def beats(a: AskRec, ta: float, b: AskRec, tb: float) -> bool:
    """Whether ``a`` ranks before ``b``: lower price, then higher trust, then the earlier ask."""
    if a.price != b.price:
        return a.price < b.price
    if ta != tb:
        return ta > tb
    return a.seq < b.seq


def model_order(asks: list[AskRec], trust: list[float]) -> list[int]:
    """Selection by repeated minimum: next comes the ask every other remaining one loses to."""
    left = list(range(len(asks)))
    out: list[int] = []
    while left:
        best = next(
            i
            for i in left
            if all(i == j or beats(asks[i], trust[i], asks[j], trust[j]) for j in left)
        )
        out.append(best)
        left.remove(best)
    return out


@dataclass(frozen=True)
class Model:
    winners: tuple[str, ...]
    price: int | None
    status: AuctionStatus


def model_clear(asks: list[AskRec], trust: list[float], slots: int, partial: bool) -> Model:
    order = model_order(asks, trust)
    prices = sorted(a.price for a in asks)
    n = len(asks)
    if n > slots:
        return Model(
            tuple(asks[i].provider for i in order[:slots]), prices[slots], AuctionStatus.SETTLED
        )
    if n == slots:
        return Model(tuple(asks[i].provider for i in order), prices[-1], AuctionStatus.SETTLED)
    if n and partial:
        return Model(tuple(asks[i].provider for i in order), prices[-1], AuctionStatus.PARTIAL)
    return Model((), None, AuctionStatus.FAILED)


@st.composite
def ask_sets(draw: st.DrawFn) -> tuple[list[AskRec], list[float]]:
    n = draw(st.integers(0, 12))
    prices = draw(st.lists(st.integers(1, 6), min_size=n, max_size=n))  # few levels: many ties
    trust = draw(st.lists(st.sampled_from(TRUSTS), min_size=n, max_size=n))
    seqs = draw(st.permutations(list(range(1, n + 1))))
    asks = [AskRec(f"p{i}", f"o{i}", prices[i] * 10, seqs[i], 0.0) for i in range(n)]
    return asks, trust


@settings(max_examples=300, deadline=None)
@given(ask_sets(), st.integers(1, 8), st.booleans())
def test_clear_matches_the_brute_force_model(
    data: tuple[list[AskRec], list[float]], slots: int, partial: bool
) -> None:
    asks, trust = data
    got = clear(asks, trust, slots, partial)
    want = model_clear(asks, trust, slots, partial)
    assert (got.winners, got.price, got.status) == (want.winners, want.price, want.status)
    assert [asks[i].provider for i in rank(asks, trust)] == [
        asks[i].provider for i in model_order(asks, trust)
    ]

    by_id = {a.provider: a for a in asks}
    won = set(got.winners)
    assert len(won) == len(got.winners)
    if len(asks) >= slots:
        assert len(got.winners) == slots
    elif partial:
        assert len(got.winners) == len(asks)
        assert got.status is (AuctionStatus.PARTIAL if asks else AuctionStatus.FAILED)
    else:
        assert got.winners == ()
        assert got.price is None
        assert got.status is AuctionStatus.FAILED
    if got.price is not None:
        assert all(by_id[w].price <= got.price for w in won)
        assert all(a.price >= got.price for a in asks if a.provider not in won)
        # the (N+1)-th lowest ask when there is one, else the highest winning ask
        prices = sorted(a.price for a in asks)
        assert got.price == (prices[slots] if len(asks) > slots else prices[-1])
    # every winner ranks before every loser
    index = {a.provider: i for i, a in enumerate(asks)}
    for w in won:
        for loser in (a for a in asks if a.provider not in won):
            i, j = index[w], index[loser.provider]
            assert beats(asks[i], trust[i], asks[j], trust[j])


def test_ties_go_to_higher_trust_then_to_the_earlier_ask() -> None:
    asks = [
        AskRec("late-trusted", "a", 100, 3, 0.0),
        AskRec("early", "b", 100, 1, 0.0),
        AskRec("late", "c", 100, 2, 0.0),
        AskRec("cheap", "d", 90, 4, 0.0),
    ]
    trust = [0.9, 0.7, 0.7, 0.1]
    got = clear(asks, trust, 3, allow_partial=False)
    assert got.winners == ("cheap", "late-trusted", "early")
    assert got.price == 100
    assert clear(asks, trust, 4, allow_partial=False).price == 100  # exactly N: the N-th ask
    assert clear(asks[:2], trust[:2], 3, allow_partial=False).status is AuctionStatus.FAILED
    partial = clear(asks[:2], trust[:2], 3, allow_partial=True)
    assert (partial.winners, partial.price, partial.status) == (
        ("late-trusted", "early"),
        100,
        AuctionStatus.PARTIAL,
    )


# --- end to end through the service ----------------------------------------------------------

STEP = 10
FLOOR = 700
CEILING = 2000
GRID = st.integers(FLOOR // STEP, CEILING // STEP).map(lambda k: k * STEP)


@st.composite
def bid_scripts(draw: st.DrawFn) -> tuple[int, bool, list[tuple[int, int]], list[int], str]:
    devices = draw(st.integers(1, 7))
    slots = draw(st.integers(1, 5))
    partial = draw(st.booleans())
    bids = draw(st.lists(st.tuples(st.integers(0, devices - 1), GRID), min_size=0, max_size=14))
    boosts = draw(st.lists(st.integers(0, 3), min_size=devices, max_size=devices))
    ending = draw(st.sampled_from(["settle", "expire"]))
    return slots, partial, bids, boosts, ending


@settings(max_examples=12, deadline=None)
@given(bid_scripts())
def test_service_clears_like_the_model(
    script: tuple[int, bool, list[tuple[int, int]], list[int], str],
) -> None:
    slots, partial, bids, boosts, ending = script

    async def scenario(db: Path) -> None:
        async with market(db) as m:
            devices = await m.devices_n(len(boosts))
            for device, boost in zip(devices, boosts, strict=True):
                for _ in range(boost):  # verified results raise trust: ties then differ
                    await m.harv.record_result(device, valid=True)
            aid = await m.auction(slots=slots, allow_partial=partial, ceiling="0.002")
            view = await m.mkt.get_auction(aid)
            assert (micro(view.bid_increment), micro(view.reserve_price_per_gflop)) == (
                STEP,
                FLOOR,
            )
            # the model of the ask book: accepted asks, their order, early settlement
            book: dict[str, tuple[int, int]] = {}
            seq = 0
            settled_early = False
            for i, price in bids:
                device = devices[i]
                try:
                    await m.bid(aid, device, price)
                    accepted, rule = True, ""
                except BidRefused as exc:
                    accepted, rule = False, exc.rule
                if settled_early:
                    assert (accepted, rule) == (False, "auction_closed")
                    continue
                current = book.get(device)
                if current is not None and price > current[0] - STEP:
                    assert (accepted, rule) == (False, "not_lower")
                    continue
                assert accepted, rule
                seq += 1
                book[device] = (price, seq)
                settled_early = len(book) > slots
            if not settled_early:
                if ending == "settle" and (len(book) >= slots or (partial and book)):
                    await m.mkt.settle_auction(aid)
                else:
                    await m.clock.advance_and_settle(view.closes_at - m.clock.time() + 1)
            result = (await m.mkt.get_auction(aid)).result
            assert result is not None

            standing = await m.harv.device_standing(list(book))
            asks = [AskRec(d, "", p, s, 0.0) for d, (p, s) in book.items()]
            trust = [standing[d].trust for d in book]
            want = model_clear(asks, trust, slots, partial)
            assert result.status == want.status.value
            assert result.winners == want.winners
            want_price = want.price
            assert result.clearing_price_per_gflop == (
                None if want_price is None else Decimal(want_price) / MICRO
            )
            captured = micro(result.captured)
            assert captured == (0 if want_price is None else want_price * 100)
            assert captured + micro(result.released) == micro(view.held)
            await asyncio.sleep(0)
            m.verify()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp) / "m.db"))
