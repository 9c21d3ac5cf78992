"""Revenue: exact shares, the validator and refund rules, pending payouts, idempotent payment."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogcoord.config import RevenueSharingConfig
from fogcoord.contracts.errors import Conflict, ValidationFailed
from fogcoord.contracts.marketplace import AuctionSettled, CompletedTask, RevenueDistributed
from fogcoord.contracts.tokenomics import PLATFORM_WALLET
from fogcoord.contracts.units import FUEL_PER_GFLOP
from fogcoord.marketplace.revenue import (
    PPM,
    percent_ppm,
    pro_rata,
    split_batch,
    split_equal,
    task_gross,
)
from tests.marketplace.support import GRANT, REQUESTER, Market, drain, micro, task

# --- the split, as pure functions --------------------------------------------------------------

percents = st.tuples(st.integers(0, 1_000_000), st.integers(0, 1_000_000)).filter(
    lambda t: t[0] + t[1] <= 1_000_000
)
"""(platform, validator) in ppm of the gross: percentages on a 0.0001 % grid summing to 100."""


def shares_of(platform_ppm: int, validator_ppm: int) -> RevenueSharingConfig:
    provider_ppm = PPM - platform_ppm - validator_ppm
    return RevenueSharingConfig(
        platform_fee_percent=platform_ppm / 10_000,
        provider_share_percent=provider_ppm / 10_000,
        validator_share_percent=validator_ppm / 10_000,
    )


@settings(max_examples=400, deadline=None)
@given(
    percents,
    st.integers(0, 10**7),
    st.integers(0, 10**15),
    st.integers(0, 6),
)
def test_one_task_splits_exactly_by_the_documented_rounding(
    pct: tuple[int, int], price: int, fuel: int, n_validators: int
) -> None:
    shares = shares_of(*pct)
    f_ppm, v_ppm = (
        percent_ppm(shares.platform_fee_percent),
        percent_ppm(shares.validator_share_percent),
    )
    assert (f_ppm, v_ppm) == pct
    validators = tuple(f"v{i}" for i in reversed(range(n_validators)))
    t = CompletedTask(task_id="t", provider="p", validators=validators, fuel=fuel)
    split = split_batch([t], price, shares, {})
    gross = price * fuel // FUEL_PER_GFLOP
    assert split.gross == {"t": gross} == {"t": task_gross(price, t)}
    provider = split.providers.get("p", 0)
    paid_validators = sum(split.validators.values())
    assert provider + paid_validators + split.platform + split.refund == gross
    assert min(provider, paid_validators, split.platform, split.refund) >= 0
    assert all(v >= 0 for v in split.validators.values())
    # platform and validator shares are floored; the provider takes every remainder
    assert split.platform == gross * f_ppm // PPM
    assert paid_validators + split.refund == gross * v_ppm // PPM
    assert provider == gross - gross * f_ppm // PPM - gross * v_ppm // PPM
    if n_validators:
        # equal shares; what does not divide goes one each to the first validators by id
        base, extra = divmod(gross * v_ppm // PPM, n_validators)
        want = {f"v{i}": base + (1 if i < extra else 0) for i in range(n_validators)}
        assert {k: v for k, v in split.validators.items() if v} == {
            k: v for k, v in want.items() if v
        }
        assert split.refund == 0
    else:
        # nobody re-executed anything in the job: the validator share goes back
        assert split.validators == {}
        assert split.refund == gross * v_ppm // PPM


@settings(max_examples=200, deadline=None)
@given(
    percents,
    st.integers(1, 10**6),
    st.lists(
        st.tuples(
            st.integers(0, 5),
            st.lists(st.integers(0, 5), max_size=4),
            st.integers(0, 10**13),
        ),
        max_size=12,
    ),
    st.dictionaries(st.sampled_from([f"d{i}" for i in range(6)]), st.integers(0, 10**6)),
)
def test_a_batch_splits_exactly(
    pct: tuple[int, int],
    price: int,
    raw: list[tuple[int, list[int], int]],
    weights: dict[str, int],
) -> None:
    shares = shares_of(*pct)
    tasks = [
        CompletedTask(
            task_id=f"t{i}",
            provider=f"d{p}",
            validators=tuple(f"d{v}" for v in vs),
            fuel=fuel,
        )
        for i, (p, vs, fuel) in enumerate(raw)
    ]
    split = split_batch(tasks, price, shares, weights)
    total = sum(price * t.fuel // FUEL_PER_GFLOP for t in tasks if t.fuel is not None)
    assert split.total == total
    assert (
        sum(split.providers.values()) + sum(split.validators.values()) + split.platform
        == total - split.refund
    )
    assert all(v >= 0 for v in (*split.providers.values(), *split.validators.values()))
    assert split.platform >= 0
    assert split.refund >= 0
    # a task's own validators get its validator share; a device never validates its own task
    v_ppm = percent_ppm(shares.validator_share_percent)
    for t in tasks:
        checkers = set(t.validators) - {t.provider}
        if checkers and task_gross(price, t) * v_ppm // PPM > 0:
            assert any(split.validators.get(v, 0) > 0 for v in checkers)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(-5, 10**12),
    st.dictionaries(st.text(min_size=1, max_size=3), st.integers(-3, 10**9), max_size=8),
)
def test_pro_rata_sums_exactly(amount: int, weights: dict[str, int]) -> None:
    parts = pro_rata(amount, weights)
    live = {k: w for k, w in weights.items() if w > 0}
    if amount <= 0 or not live:
        assert parts == {}
        return
    assert sum(parts.values()) == amount
    assert set(parts) == set(live)
    total = sum(live.values())
    for k, w in live.items():
        exact = amount * w // total
        assert parts[k] in (exact, exact + 1)  # largest remainder: never off by more than one


@settings(max_examples=300, deadline=None)
@given(st.integers(-5, 10**12), st.lists(st.text(min_size=1, max_size=3), max_size=8))
def test_split_equal_sums_exactly(amount: int, ids: list[str]) -> None:
    parts = split_equal(amount, ids)
    if amount <= 0 or not ids:
        assert parts == {}
        return
    members = sorted(set(ids))
    assert sum(parts.values()) == amount
    assert list(parts) == members
    base = amount // len(members)
    assert [parts[m] - base for m in members] == sorted(
        [parts[m] - base for m in members], reverse=True
    )
    assert all(parts[m] in (base, base + 1) for m in members)


def test_pooled_shares_follow_what_each_validator_earned() -> None:
    assert pro_rata(1000, {"v1": 1000, "v2": 2000}) == {"v1": 333, "v2": 667}
    assert pro_rata(2, {"b": 1, "a": 1, "c": 1}) == {"a": 1, "b": 1, "c": 0}
    assert split_equal(1000, ["c", "a", "b", "a"]) == {"a": 334, "b": 333, "c": 333}


def test_no_accepted_configuration_gives_a_negative_provider_share() -> None:
    shares = RevenueSharingConfig(
        platform_fee_percent=50.00005000049,
        provider_share_percent=0.0,
        validator_share_percent=49.99995,
    )
    t = CompletedTask(task_id="t", provider="p", validators=("v",), fuel=10**6 * FUEL_PER_GFLOP)
    split = split_batch([t], 1, shares, {})
    assert split.providers["p"] >= 0


# --- through the service -------------------------------------------------------------------


async def settled(m: Market, devices: int = 5) -> tuple[str, list[str]]:
    """An auction for 100 GFLOP settled at 1000 micro/GFLOP: d00 and d01 win (captured 100000)."""
    d = await m.devices_n(devices)
    aid = await m.auction(slots=2, gflop=100.0)
    for device, price in zip(d, (800, 900, 1000), strict=False):
        await m.bid(aid, device, price)
    result = (await m.mkt.get_auction(aid)).result
    assert result is not None
    assert (result.winners, micro(result.clearing_price_per_gflop)) == ((d[0], d[1]), 1000)
    assert micro(result.captured) == 100_000
    return aid, d


def balances(m: Market, devices: list[str]) -> dict[str, int]:
    out = {m.owner_of(d): m.balance(m.owner_of(d)) - GRANT for d in devices}
    out[REQUESTER] = m.balance(REQUESTER) - GRANT
    out[PLATFORM_WALLET] = m.balance(PLATFORM_WALLET)
    return out


async def test_validators_share_ten_percent_and_the_provider_takes_the_rest(m: Market) -> None:
    aid, d = await settled(m)
    o = [m.owner_of(x) for x in d]
    out = await m.pay(aid, aid, [task("t1", d[0], 10.0, (d[2], d[3]))])
    assert (out.tasks_paid, out.tasks_already_paid, out.pending) == (1, 0, False)
    assert {k: micro(v) for k, v in out.providers.items()} == {d[0]: 8_500}
    assert {k: micro(v) for k, v in out.validators.items()} == {d[2]: 500, d[3]: 500}
    assert (micro(out.platform), micro(out.refunded)) == (500, 0)
    assert balances(m, d) == {
        o[0]: 8_500,
        o[1]: 0,
        o[2]: 500,
        o[3]: 500,
        o[4]: 0,
        REQUESTER: -100_000,
        PLATFORM_WALLET: 500,
    }
    # 10.001 GFLOP: 10001 gross; 1000 among three validators: 334 to the first by id
    out = await m.pay(aid, aid, [task("t2", d[1], 10.001, (d[4], d[3], d[2]))])
    assert {k: micro(v) for k, v in out.validators.items()} == {d[2]: 334, d[3]: 333, d[4]: 333}
    assert {k: micro(v) for k, v in out.providers.items()} == {d[1]: 10_001 - 500 - 1_000}
    assert micro(out.platform) == 500
    # a provider listed among its own task's validators gets no validator share for it
    out = await m.pay(aid, aid, [task("t3", d[1], 10.0, (d[1], d[2]))])
    assert {k: micro(v) for k, v in out.validators.items()} == {d[2]: 1_000}


async def test_an_unvalidated_task_pools_its_share_to_the_jobs_validators(m: Market) -> None:
    aid, d = await settled(m)
    o = [m.owner_of(x) for x in d]
    await m.pay(aid, aid, [task("t1", d[0], 10.0, (d[2],)), task("t2", d[1], 20.0, (d[3],))])
    assert (balances(m, d)[o[2]], balances(m, d)[o[3]]) == (1_000, 2_000)
    # nobody re-executed t3: its 1000 validator micro-tokens go 1:2 to what each validated
    out = await m.pay(aid, aid, [task("t3", d[0], 10.0)])
    assert {k: micro(v) for k, v in out.validators.items()} == {d[2]: 333, d[3]: 667}
    assert micro(out.refunded) == 0
    assert (balances(m, d)[o[2]], balances(m, d)[o[3]]) == (1_333, 2_667)
    assert balances(m, d)[o[0]] == 8_500 + 8_500


async def test_an_unvalidated_job_refunds_the_validator_share_to_the_requester(
    m: Market,
) -> None:
    aid, d = await settled(m)
    out = await m.pay(aid, aid, [task("t1", d[0], 10.0), task("t2", d[1], 20.0)])
    assert out.validators == {}
    assert micro(out.refunded) == 3_000  # 10 % of 30000
    assert micro(out.platform) == 1_500
    b = balances(m, d)
    assert b[REQUESTER] == -100_000 + 3_000
    assert (b[m.owner_of(d[0])], b[m.owner_of(d[1])]) == (8_500, 17_000)
    assert m.escrow_balance(aid) == 100_000 - 30_000
    final = await m.pay(aid, aid, [], final=True)
    assert micro(final.refunded) == 70_000
    assert balances(m, d)[REQUESTER] == -30_000 + 3_000
    assert m.escrow_balance(aid) == 0


async def test_held_payouts_stay_pending_until_final_and_a_cheat_is_voided(m: Market) -> None:
    aid, d = await settled(m)
    o = [m.owner_of(x) for x in d]
    out = await m.pay(
        aid,
        aid,
        [task("t1", d[0], 10.0, (d[2],)), task("t2", d[1], 10.0, (d[2],))],
        hold_payouts=True,
    )
    assert out.pending is True
    # pending: nothing in the payees' balances yet, all of it in their pending_in
    assert [m.balance(x) - GRANT for x in o[:3]] == [0, 0, 0]
    assert [m.pending_in(x) for x in o[:3]] == [8_500, 8_500, 2_000]  # d02 checked both
    assert m.tok.wallet_info(o[0]).pending_in == Decimal("0.0085")
    assert m.balance(PLATFORM_WALLET) == 1_000  # the platform fee is never held
    assert m.escrow_balance(aid) == 100_000 - 1_000
    assert m.tok.escrow_available(aid) == 100_000 - 20_000

    # d01 is shown to have cheated: its pending payout is voided, the rest stays pending
    out = await m.pay(aid, aid, [], void_devices=(d[1],))
    assert micro(out.voided) == 8_500
    assert m.pending_in(o[1]) == 0
    assert m.balance(o[1]) == GRANT
    assert [m.pending_in(x) for x in (o[0], o[2])] == [8_500, 2_000]

    final = await m.pay(aid, aid, [], final=True)
    assert [m.pending_in(x) for x in o] == [0] * 5
    assert [m.balance(x) - GRANT for x in o[:3]] == [8_500, 0, 2_000]
    # the requester got back everything not earned, the voided 8500 included
    assert micro(final.refunded) == 100_000 - 20_000 + 8_500
    assert m.balance(REQUESTER) == GRANT - 8_500 - 2_000 - 1_000
    assert m.escrow_balance(aid) == 0


async def test_void_on_the_final_call_voids_before_posting(m: Market) -> None:
    aid, d = await settled(m)
    o = [m.owner_of(x) for x in d]
    await m.pay(aid, aid, [task("t1", d[0], 10.0, (d[1],))], hold_payouts=True)
    final = await m.pay(aid, aid, [], final=True, void_devices=(d[0],))
    assert micro(final.voided) == 8_500
    assert (m.balance(o[0]), m.balance(o[1]) - GRANT) == (GRANT, 1_000)
    assert m.balance(REQUESTER) == GRANT - 1_000 - 500
    assert m.escrow_balance(aid) == 0


async def test_more_work_than_bought_is_refused_and_nothing_moves(m: Market) -> None:
    aid, d = await settled(m)
    before = balances(m, d)
    with pytest.raises(Conflict) as info:
        await m.pay(aid, aid, [task("t1", d[0], 60.0), task("t2", d[1], 40.001)])
    assert info.value.fields["job_id"] == aid
    assert balances(m, d) == before
    assert m.escrow_balance(aid) == 100_000
    assert m.mkt.store.paid_tasks(aid) == {}
    assert m.mkt.store.payouts(aid) == []
    # exactly what was bought is fine, and the same task ids can be paid now
    out = await m.pay(aid, aid, [task("t1", d[0], 60.0), task("t2", d[1], 40.0)])
    assert out.tasks_paid == 2
    assert m.escrow_balance(aid) == 0
    with pytest.raises(Conflict):
        await m.pay(aid, aid, [task("t3", d[0], 0.001)])
    assert m.escrow_balance(aid) == 0


async def test_revenue_is_refused_where_there_is_nothing_to_pay_from(m: Market) -> None:
    d = await m.devices_n(2)
    aid = await m.auction(slots=2, job_id="job-7")
    with pytest.raises(Conflict):  # still open
        await m.pay(aid, "job-7", [task("t1", d[0])])
    await m.bid(aid, d[0], 900)
    await m.bid(aid, d[1], 900)
    await m.mkt.settle_auction(aid)
    with pytest.raises(ValidationFailed) as info:
        await m.pay(aid, "another-job", [task("t1", d[0])])
    assert info.value.fields["field"] == "job_id"
    with pytest.raises(ValidationFailed):  # a task of a device nobody knows: no one to pay
        await m.pay(aid, "job-7", [task("t1", "ghost")])
    await m.pay(aid, "job-7", [], final=True)
    with pytest.raises(Conflict):  # the job has ended
        await m.pay(aid, "job-7", [task("t1", d[0])])
    assert m.escrow_balance("job-7") == 0


# --- idempotency -------------------------------------------------------------------------------


async def test_settling_twice_gives_the_same_result_and_captures_once(m: Market) -> None:
    d = await m.devices_n(3)
    aid = await m.auction(slots=2)
    await m.bid(aid, d[0], 900)
    await m.bid(aid, d[1], 950)
    first, second, *rest = await asyncio.gather(*(m.mkt.settle_auction(aid) for _ in range(4)))
    assert first == second
    assert all(r == first for r in rest)
    assert first == await m.mkt.settle_auction(aid)
    assert (first.status, micro(first.clearing_price_per_gflop)) == ("settled", 950)
    await drain()
    assert len(m.events.escrow_steps(aid, "capture")) == 1
    assert len([e for e in m.events.of(AuctionSettled) if e.auction_id == aid]) == 1
    assert m.balance(REQUESTER) == GRANT - 95_000


async def test_each_task_is_paid_once_whatever_the_batches(m: Market) -> None:
    aid, d = await settled(m)
    first = await m.pay(aid, aid, [task("t1", d[0], 10.0, (d[2],)), task("t2", d[1], 10.0)])
    assert (first.tasks_paid, first.tasks_already_paid) == (2, 0)
    after_first = balances(m, d)

    again = await m.pay(aid, aid, [task("t1", d[0], 10.0, (d[2],)), task("t2", d[1], 10.0)])
    assert (again.tasks_paid, again.tasks_already_paid) == (0, 2)
    assert (again.providers, again.validators, again.platform) == ({}, {}, 0)
    assert balances(m, d) == after_first

    # overlapping batch: t2 was paid, t3 is new; t3 twice in one call counts once
    overlap = await m.pay(
        aid, aid, [task("t2", d[1], 10.0), task("t3", d[0], 10.0), task("t3", d[0], 10.0)]
    )
    assert (overlap.tasks_paid, overlap.tasks_already_paid) == (1, 2)
    assert {k: micro(v) for k, v in overlap.providers.items()} == {d[0]: 8_500}

    # the same new batch sent three times at once is paid once
    batch = [task("t4", d[0], 10.0), task("t5", d[1], 10.0, (d[3],))]
    results = await asyncio.gather(*(m.pay(aid, aid, batch) for _ in range(3)))
    assert sorted(r.tasks_paid for r in results) == [0, 0, 2]
    assert m.escrow_balance(aid) == 100_000 - 50_000
    assert set(m.mkt.store.paid_tasks(aid)) == {"t1", "t2", "t3", "t4", "t5"}

    end = await m.pay(aid, aid, [task("t1", d[0], 10.0)], final=True)
    assert (end.tasks_paid, end.tasks_already_paid, micro(end.refunded)) == (0, 1, 50_000)
    end_again = await m.pay(aid, aid, [], final=True)
    assert micro(end_again.refunded) == 0
    # every unvalidated task's share was pooled to the job's validators: nothing came back
    assert m.balance(REQUESTER) == GRANT - 50_000
    await drain()
    distributed = m.events.of(RevenueDistributed)
    assert sum(e.tasks for e in distributed) == 5
