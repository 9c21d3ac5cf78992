"""The async ledger facade end to end: group commit, SQLite on a temp file, a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy.engine import Engine

from fogcoord.clock import FakeClock, SystemClock
from fogcoord.tokenomics.codes import Code
from fogcoord.tokenomics.engine import Known
from fogcoord.tokenomics.ledger import MINT, PLATFORM, Ledger, ok
from fogcoord.tokenomics.model import (
    AccountKind,
    Batch,
    PendingState,
    TransferRequest,
    TransferResult,
)
from fogcoord.tokenomics.store import SqlLedgerStore
from fogcoord.tokenomics.verify import verify_ledger
from fogcoord.tokenomics.writer import LedgerUnavailable
from tests.tokenomics.ledger_support import (
    LINKED,
    codes,
    hold,
    open_ledger,
    pay,
    post,
    sqlite_engine,
    sqlite_ledger,
    state_totals,
    store_totals,
    void,
    wallet,
)

T = TypeVar("T")


async def setup(ledger: Ledger, **funds: int) -> None:
    """Wallets named by ``funds``, each funded from mint (plus an empty ``sink``)."""
    for name in [*funds, "sink"]:
        assert await ledger.create_account(wallet(name)) == Code.OK
    for name, amount in funds.items():
        if amount:
            assert codes(await ledger.transfer(pay(f"fund-{name}", MINT, name, amount))) == ["ok"]


@pytest.fixture
async def ledger(tmp_path: Path, fake_clock: FakeClock) -> AsyncIterator[Ledger]:
    async with sqlite_ledger(tmp_path / "ledger.db", fake_clock) as led:
        await setup(led, alice=1000, bob=0)
        yield led


def assert_memory_is_the_database(ledger: Ledger) -> None:
    store = ledger.store
    assert state_totals(ledger.state) == store_totals(store)
    loaded = store.load()
    assert (ledger.state.head_number, ledger.state.head_hash) == (
        loaded.head_number,
        loaded.head_hash,
    )
    assert ledger.state.next_seq == loaded.next_seq
    assert {pid: (p.state, p.resolved_by) for pid, p in ledger.state.pending.items()} == {
        p.transfer.id: (p.state, p.resolved_by) for p in loaded.pending
    }
    report = verify_ledger(store)
    assert report.ok, report.problems


async def test_open_creates_the_system_accounts(ledger: Ledger) -> None:
    for name in (MINT, PLATFORM):
        acc = ledger.account(name)
        assert acc is not None
        assert acc.kind is AccountKind.SYSTEM
    mint = ledger.account(MINT)
    assert mint is not None
    assert mint.balance == -1000
    assert ledger.available("alice") == 1000
    assert ledger.available("nobody") is None
    assert ledger.account("nobody") is None
    assert await ledger.create_account(wallet("alice")) == Code.ACCOUNT_EXISTS


async def test_reads_are_copies(ledger: Ledger) -> None:
    acc = ledger.account("alice")
    assert acc is not None
    acc.credits_posted += 10**6
    assert ledger.available("alice") == 1000


async def test_two_phase_with_a_partial_post_releases_the_rest(ledger: Ledger) -> None:
    [r] = await ledger.transfer(hold("h", "alice", "bob", 600))
    assert r.code == Code.OK
    assert ledger.available("alice") == 400
    info = ledger.pending("h")
    assert info is not None
    assert info.state is PendingState.PENDING
    [r] = await ledger.transfer(post("c", "h", 250))
    assert r.code == Code.OK
    assert r.transfer is not None
    assert r.transfer.amount == 250
    assert ledger.available("alice") == 750
    assert ledger.available("bob") == 250
    alice = ledger.account("alice")
    assert alice is not None
    assert (alice.debits_pending, alice.debits_posted) == (0, 250)
    info = ledger.pending("h")
    assert info is not None
    assert (info.state, info.resolved_by) == (PendingState.POSTED, "c")
    assert_memory_is_the_database(ledger)


async def test_a_second_post_or_void_is_refused(ledger: Ledger) -> None:
    await ledger.transfer(hold("h1", "alice", "bob", 100), hold("h2", "alice", "bob", 100))
    assert codes(await ledger.transfer(post("c1", "h1"))) == [Code.OK]
    assert codes(await ledger.transfer(void("v1", "h2"))) == [Code.OK]
    assert codes(await ledger.transfer(post("c2", "h1"))) == [Code.PENDING_TRANSFER_ALREADY_POSTED]
    assert codes(await ledger.transfer(void("v2", "h1"))) == [Code.PENDING_TRANSFER_ALREADY_POSTED]
    assert codes(await ledger.transfer(post("c3", "h2"))) == [Code.PENDING_TRANSFER_ALREADY_VOIDED]
    assert codes(await ledger.transfer(void("v3", "h2"))) == [Code.PENDING_TRANSFER_ALREADY_VOIDED]
    assert ledger.available("alice") == 900
    assert ledger.available("bob") == 100
    assert_memory_is_the_database(ledger)


async def test_pending_expires_on_the_clock(ledger: Ledger, fake_clock: FakeClock) -> None:
    await ledger.transfer(hold("h", "alice", "bob", 600, timeout=30.0))
    info = ledger.pending("h")
    assert info is not None
    assert info.expires_at == fake_clock.time() + 30.0
    fake_clock.advance(29.0)
    await ledger.tick()
    assert ledger.available("alice") == 400
    fake_clock.advance(1.0)
    await ledger.tick()
    info = ledger.pending("h")
    assert info is not None
    assert info.state is PendingState.EXPIRED
    assert ledger.available("alice") == 1000
    bob = ledger.account("bob")
    assert bob is not None
    assert (bob.credits_pending, bob.credits_posted) == (0, 0)
    assert codes(await ledger.transfer(post("c", "h"))) == [Code.PENDING_TRANSFER_EXPIRED]
    assert_memory_is_the_database(ledger)


async def test_the_expiry_loop_fires_by_itself(ledger: Ledger, fake_clock: FakeClock) -> None:
    await ledger.transfer(hold("h", "alice", "bob", 600, timeout=5.0))
    head = ledger.head[0]
    for _ in range(500):  # until the expiry loop sleeps on the clock
        if fake_clock.sleepers:
            break
        await asyncio.sleep(0.002)
    assert fake_clock.sleepers == 1
    fake_clock.advance(5.0)
    for _ in range(500):
        info = ledger.pending("h")
        if info is not None and info.state is PendingState.EXPIRED:
            break
        await asyncio.sleep(0.002)
    info = ledger.pending("h")
    assert info is not None
    assert info.state is PendingState.EXPIRED
    assert ledger.head[0] == head + 1
    assert ledger.available("alice") == 1000


async def test_a_linked_chain_is_all_or_nothing(ledger: Ledger) -> None:
    results = await ledger.transfer(
        pay("l1", "alice", "bob", 300, LINKED),
        pay("l2", "bob", "sink", 300, LINKED),
        pay("l3", "bob", "sink", 1),  # bob is out of funds by now
    )
    assert codes(results) == [Code.LINKED_EVENT_FAILED, Code.LINKED_EVENT_FAILED, "exceeds_credits"]
    assert not ok(results)
    assert (ledger.available("alice"), ledger.available("bob"), ledger.available("sink")) == (
        1000,
        0,
        0,
    )
    assert await ledger.lookup("l1") is None
    results = await ledger.transfer(
        pay("l1", "alice", "bob", 300, LINKED), pay("l2", "bob", "sink", 300)
    )
    assert codes(results) == [Code.OK, Code.OK]
    assert ok(results)
    assert (ledger.available("alice"), ledger.available("bob"), ledger.available("sink")) == (
        700,
        0,
        300,
    )
    assert codes(await ledger.transfer(pay("l3", "alice", "sink", 1))) == [Code.ID_ALREADY_FAILED]
    assert_memory_is_the_database(ledger)


async def test_an_open_chain_is_refused(ledger: Ledger) -> None:
    head = ledger.head
    results = await ledger.transfers(
        [pay("o1", "alice", "bob", 1, LINKED), pay("o2", "alice", "bob", 1, LINKED)]
    )
    assert codes(results) == [Code.LINKED_EVENT_CHAIN_OPEN] * 2
    assert ledger.head == head
    assert ledger.available("alice") == 1000
    assert codes(await ledger.transfer(pay("o1", "alice", "bob", 1))) == [Code.OK]


async def test_every_kind_of_replay_is_exists_and_changes_nothing(ledger: Ledger) -> None:
    sent = [
        [pay("s", "alice", "bob", 10, memo="single")],
        [hold("p", "alice", "bob", 100, timeout=60.0)],
        [post("pp", "p", 40)],
        [hold("q", "alice", "bob", 100)],
        [void("qv", "q")],
        [hold("r", "alice", "bob", 50)],
        [post("rp", "r")],
        [pay("k1", "alice", "bob", 5, LINKED), pay("k2", "bob", "sink", 5)],
    ]
    first: list[list[TransferResult]] = []
    for batch in sent:
        results = await ledger.transfers(batch)
        assert ok(results), results
        first.append(results)
    assert codes(await ledger.transfer(pay("x", "bob", "alice", 10**6))) == ["exceeds_credits"]
    before = state_totals(ledger.state)
    head = ledger.head
    for batch, results in zip(sent, first, strict=True):
        again = await ledger.transfers(batch)
        assert codes(again) == [Code.EXISTS] * len(batch)
        assert [r.transfer for r in again] == [r.transfer for r in results]
    all_at_once = await ledger.transfers([t for batch in sent for t in batch])
    assert set(codes(all_at_once)) == {Code.EXISTS}
    assert codes(await ledger.transfer(pay("x", "bob", "alice", 1))) == [Code.ID_ALREADY_FAILED]
    assert state_totals(ledger.state) == before
    assert ledger.head == head  # replays write no block
    assert ledger.available("alice") == 1000 - 10 - 40 - 50 - 5


async def test_a_failed_id_stays_failed_when_funds_arrive(ledger: Ledger) -> None:
    assert codes(await ledger.transfer(pay("x", "bob", "sink", 100))) == ["exceeds_credits"]
    assert codes(await ledger.transfer(pay("fund-bob", MINT, "bob", 1000))) == [Code.OK]
    assert codes(await ledger.transfer(pay("x", "bob", "sink", 100))) == [Code.ID_ALREADY_FAILED]
    assert codes(await ledger.transfer(post("y", "missing"))) == ["pending_transfer_not_found"]
    await ledger.transfer(hold("missing", "bob", "sink", 1))
    assert codes(await ledger.transfer(post("y", "missing"))) == [Code.ID_ALREADY_FAILED]
    assert ledger.available("bob") == 999
    assert ledger.available("sink") == 0


async def test_validation_failures_can_be_corrected_under_the_same_id(ledger: Ledger) -> None:
    assert codes(await ledger.transfer(pay("v", "alice", "bob", 0))) == ["amount_must_not_be_zero"]
    assert codes(await ledger.transfer(pay("v", "alice", "alice", 5))) == [
        "accounts_must_be_different"
    ]
    assert codes(await ledger.transfer(pay("v", "alice", "bob", 5))) == [Code.OK]


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        pytest.param(hold("bad", "alice", "bob", 1, timeout=math.nan), "amount_invalid", id="nan"),
        pytest.param(pay("bad", "alice", "bob", 1, memo="a\x00b"), "memo_invalid", id="nul"),
        pytest.param(pay("bad", "alice", "bob", 1, memo="\udc80"), "memo_invalid", id="surrogate"),
    ],
)
async def test_an_unstorable_request_fails_alone_not_its_block(
    ledger: Ledger, bad: TransferRequest, code: str
) -> None:
    """NaN would reach SQLite as NULL, NUL is refused by PostgreSQL and a lone surrogate cannot
    even be hashed: each used to fail (or kill) the writer for everyone in the block."""
    results = await asyncio.gather(
        ledger.transfer(pay("before", "alice", "bob", 5)),
        ledger.transfer(bad),
        ledger.transfer(pay("after", "alice", "bob", 5)),
    )
    assert [codes(r) for r in results] == [[Code.OK], [code], [Code.OK]]
    assert codes(await ledger.transfer(pay("later", "alice", "bob", 5))) == [Code.OK]
    assert ledger.available("bob") == 15
    assert_memory_is_the_database(ledger)


@pytest.mark.parametrize(("reserve", "amount"), [(0, 30), (100, 30), (0, 1000), (0, 7)])
async def test_concurrent_payments_never_overspend(
    tmp_path: Path, fake_clock: FakeClock, reserve: int, amount: int
) -> None:
    async with sqlite_ledger(tmp_path / "l.db", fake_clock) as ledger:
        await ledger.create_account(wallet("payer", reserve=reserve))
        await ledger.create_account(wallet("payee"))
        await ledger.transfer(pay("fund", MINT, "payer", 1000))
        results = await asyncio.gather(
            *(ledger.transfer(pay(f"p{i}", "payer", "payee", amount)) for i in range(50))
        )
        flat = [r for rs in results for r in rs]
        expected = min(50, (1000 - reserve) // amount)
        assert sum(r.code == Code.OK for r in flat) == expected
        assert sum(r.code == Code.EXCEEDS_CREDITS for r in flat) == 50 - expected
        payer = ledger.account("payer")
        assert payer is not None
        assert payer.balance == 1000 - expected * amount
        assert payer.balance >= reserve
        assert ledger.available("payee") == expected * amount
        assert_memory_is_the_database(ledger)


async def test_concurrent_mixed_traffic_keeps_double_entry(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    async with sqlite_ledger(tmp_path / "l.db", fake_clock) as ledger:
        await setup(ledger, a=500, b=500, c=500)

        async def worker(n: int) -> None:
            src, dst = ["a", "b", "c"][n % 3], ["b", "c", "a"][n % 3]
            await ledger.transfer(pay(f"s{n}", src, dst, 17))
            await ledger.transfer(hold(f"h{n}", src, dst, 40), post(f"c{n}", f"h{n}", 15))
            await ledger.transfer(
                pay(f"l{n}a", src, "sink", 9, LINKED), pay(f"l{n}b", dst, "sink", 9)
            )

        await asyncio.gather(*(worker(n) for n in range(60)))
        accounts = list(ledger.state.accounts.values())
        assert sum(a.debits_posted for a in accounts) == sum(a.credits_posted for a in accounts)
        assert all(a.debits_pending == a.credits_pending == 0 for a in accounts)
        assert all(a.available >= 0 for a in accounts if a.id in ("a", "b", "c", "sink"))
        assert ledger.writer.batches < 60 * 3  # group commit: far fewer blocks than requests
        assert_memory_is_the_database(ledger)


async def test_a_restart_keeps_everything(tmp_path: Path, fake_clock: FakeClock) -> None:
    path = tmp_path / "ledger.db"
    async with sqlite_ledger(path, fake_clock) as ledger:
        await setup(ledger, alice=1000, bob=0)
        await ledger.transfer(pay("t1", "alice", "bob", 100, memo="before"))
        await ledger.transfer(hold("h1", "alice", "bob", 200, timeout=60.0))
        await ledger.transfer(hold("h2", "alice", "bob", 50), post("c2", "h2", 20))
        await ledger.transfer(pay("x1", "bob", "alice", 10**6))
        totals = state_totals(ledger.state)
        head = ledger.head
        history = await ledger.history("alice", 100)
        pending = {pid: (p.state, p.expires_at) for pid, p in ledger.state.pending.items()}
    async with sqlite_ledger(path, fake_clock) as again:
        assert state_totals(again.state) == totals
        assert again.head == head
        assert await again.history("alice", 100) == history
        assert {pid: (p.state, p.expires_at) for pid, p in again.state.pending.items()} == pending
        t1 = await again.lookup("t1")
        assert t1 is not None
        assert t1.memo == "before"
        assert await again.lookup("x1") is None
        assert codes(await again.transfer(pay("t1", "alice", "bob", 100, memo="before"))) == [
            Code.EXISTS
        ]
        assert codes(await again.transfer(pay("x1", "alice", "bob", 1))) == [Code.ID_ALREADY_FAILED]
        assert codes(await again.transfer(post("c2", "h2", 20))) == [Code.EXISTS]
        # the pending transfer still expires after the restart
        fake_clock.advance(60.0)
        await again.tick()
        info = again.pending("h1")
        assert info is not None
        assert info.state is PendingState.EXPIRED
        assert again.available("alice") == 1000 - 100 - 20
        assert codes(await again.transfer(pay("t2", "alice", "bob", 1))) == [Code.OK]
        assert again.head[0] == head[0] + 2
        assert_memory_is_the_database(again)
    with sqlite_engine(path) as engine:
        report = verify_ledger(SqlLedgerStore(engine))
        assert report.ok, report.problems


async def test_pending_for_and_history(ledger: Ledger) -> None:
    await ledger.transfer(hold("h1", "alice", "bob", 10), hold("h2", "alice", "bob", 20))
    await ledger.transfer(void("v1", "h1"))
    infos = await ledger.pending_for("alice")
    assert [(p.transfer.id, p.state) for p in infos] == [
        ("h2", PendingState.PENDING),
        ("h1", PendingState.VOIDED),
    ]
    history = await ledger.history("alice", 2)
    assert [t.id for t in history] == ["v1", "h2"]
    older = await ledger.history("alice", 10, before_seq=history[-1].seq)
    assert [t.id for t in older] == ["h1", "fund-alice"]
    assert ledger.confirmations(history[0].block) == 0
    assert ledger.confirmations(None) == 0
    assert ledger.confirmations(older[-1].block) == ledger.head[0] - older[-1].block


async def test_block_listeners_see_every_committed_block(ledger: Ledger) -> None:
    seen: list[Batch] = []
    ledger.writer.listeners.append(seen.append)
    await ledger.transfer(pay("t1", "alice", "bob", 1))
    await ledger.transfer(pay("t1", "alice", "bob", 1))  # a replay: no block
    assert [[t.id for t in b.transfers] for b in seen] == [["t1"]]
    assert seen[0].hash == ledger.head[1]


# --- write failures ---------------------------------------------------------------------------


class FlakyStore(SqlLedgerStore):
    """A real store whose writes can be made to fail before, or just after, they commit."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.fail_before = 0
        self.land_then_raise = 0
        self.writes = 0
        self.landed = 0
        self.fail_lookups = 0

    def lookup(self, ids: Sequence[str]) -> dict[str, Known]:
        if self.fail_lookups > 0:
            self.fail_lookups -= 1
            raise OSError("database unreachable")
        return super().lookup(ids)

    def write(self, batch: Batch) -> None:
        self.writes += 1
        if self.fail_before > 0:
            self.fail_before -= 1
            raise OSError("disk unavailable")
        super().write(batch)
        self.landed += 1
        if self.land_then_raise > 0:
            self.land_then_raise -= 1
            raise ConnectionError("connection lost after the commit")


async def advancing(clock: FakeClock, aw: Awaitable[T]) -> T:
    """Await ``aw`` while moving the fake clock along, so retry back-offs elapse."""
    task = asyncio.ensure_future(aw)
    while not task.done():
        clock.advance(1.0)
        await asyncio.sleep(0.001)
    return await task


@pytest.fixture
async def flaky(tmp_path: Path, fake_clock: FakeClock) -> AsyncIterator[tuple[Ledger, FlakyStore]]:
    with sqlite_engine(tmp_path / "ledger.db") as engine:
        store = FlakyStore(engine)
        async with open_ledger(store, fake_clock, max_retry_attempts=0) as led:
            await setup(led, alice=1000, bob=0)
            yield led, store


async def test_a_failed_write_answers_unavailable_and_loses_nothing(
    flaky: tuple[Ledger, FlakyStore],
) -> None:
    ledger, store = flaky
    await ledger.transfer(hold("h", "alice", "bob", 100))
    before = state_totals(ledger.state)
    head = ledger.head
    store.fail_before = 1
    with pytest.raises(LedgerUnavailable):
        await ledger.transfer(pay("t1", "alice", "bob", 10), post("c", "h", 30))
    assert state_totals(ledger.state) == before
    assert ledger.head == head
    assert_memory_is_the_database(ledger)
    info = ledger.pending("h")
    assert info is not None
    assert info.state is PendingState.PENDING
    # the same ids, sent again, apply exactly once
    assert codes(await ledger.transfer(pay("t1", "alice", "bob", 10), post("c", "h", 30))) == [
        Code.OK,
        Code.OK,
    ]
    assert codes(await ledger.transfer(pay("t1", "alice", "bob", 10), post("c", "h", 30))) == [
        Code.EXISTS,
        Code.EXISTS,
    ]
    assert ledger.available("alice") == 1000 - 10 - 30
    assert ledger.available("bob") == 40
    assert_memory_is_the_database(ledger)


async def test_a_failed_write_of_a_failure_records_nothing(
    flaky: tuple[Ledger, FlakyStore],
) -> None:
    ledger, store = flaky
    store.fail_before = 1
    with pytest.raises(LedgerUnavailable):
        await ledger.transfer(pay("x", "bob", "alice", 10))
    await ledger.transfer(pay("fund-bob", MINT, "bob", 10))
    assert codes(await ledger.transfer(pay("x", "bob", "alice", 10))) == [Code.OK]


async def test_a_commit_that_landed_but_raised_is_never_applied_twice(
    flaky: tuple[Ledger, FlakyStore],
) -> None:
    ledger, store = flaky
    await ledger.transfer(hold("h", "alice", "bob", 100))
    store.land_then_raise = 1
    with pytest.raises(LedgerUnavailable):
        await ledger.transfer(pay("t1", "alice", "bob", 10), post("c", "h", 30))
    # memory was reloaded from the database, which did keep the block
    assert_memory_is_the_database(ledger)
    assert ledger.available("alice") == 1000 - 40
    again = await ledger.transfer(pay("t1", "alice", "bob", 10), post("c", "h", 30))
    assert codes(again) == [Code.EXISTS, Code.EXISTS]
    assert codes(await ledger.transfer(post("c2", "h"))) == [Code.PENDING_TRANSFER_ALREADY_POSTED]
    assert ledger.available("alice") == 1000 - 40
    assert ledger.available("bob") == 40
    assert_memory_is_the_database(ledger)


async def test_an_expiry_in_a_failed_write_happens_later(
    flaky: tuple[Ledger, FlakyStore], fake_clock: FakeClock
) -> None:
    ledger, store = flaky
    await ledger.transfer(hold("h", "alice", "bob", 100, timeout=10.0))
    fake_clock.advance(10.0)
    store.fail_before = 1
    with contextlib.suppress(LedgerUnavailable):  # the expiry loop may take the failing write
        await ledger.tick()
    for _ in range(5):
        await ledger.tick()
    info = ledger.pending("h")
    assert info is not None
    assert info.state is PendingState.EXPIRED
    assert ledger.available("alice") == 1000
    assert_memory_is_the_database(ledger)


async def test_a_failed_id_lookup_answers_unavailable_and_the_writer_carries_on(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    path = tmp_path / "ledger.db"
    async with sqlite_ledger(path, fake_clock) as ledger:
        await setup(ledger, alice=1000, bob=0)
        await ledger.transfer(pay("t1", "alice", "bob", 10))
    with sqlite_engine(path) as engine:
        store = FlakyStore(engine)
        async with open_ledger(store, fake_clock, max_retry_attempts=0) as ledger:
            # after a restart an old id is only "maybe seen": it must be looked up
            store.fail_lookups = 1
            with pytest.raises(LedgerUnavailable):
                await asyncio.wait_for(ledger.transfer(pay("t1", "alice", "bob", 10)), 10)
            again = await asyncio.wait_for(ledger.transfer(pay("t1", "alice", "bob", 10)), 10)
            assert codes(again) == [Code.EXISTS]
            fresh = await asyncio.wait_for(ledger.transfer(pay("t2", "alice", "bob", 10)), 10)
            assert codes(fresh) == [Code.OK]
            assert ledger.available("bob") == 20
            assert_memory_is_the_database(ledger)


@pytest.mark.parametrize("land", [False, True], ids=["failed", "landed"])
async def test_concurrent_callers_of_a_failed_batch_can_all_resend(
    tmp_path: Path, fake_clock: FakeClock, land: bool
) -> None:
    with sqlite_engine(tmp_path / "ledger.db") as engine:
        store = FlakyStore(engine)
        async with open_ledger(store, fake_clock, max_retry_attempts=0) as ledger:
            await setup(ledger, alice=10_000, bob=0)
            if land:
                store.land_then_raise = 1
            else:
                store.fail_before = 1
            requests = [
                [pay(f"t{i}", "alice", "bob", 7)]
                if i % 3
                else [hold(f"h{i}", "alice", "bob", 9, timeout=50.0), post(f"c{i}", f"h{i}")]
                for i in range(40)
            ]
            first = await asyncio.gather(
                *(ledger.transfers(r) for r in requests), return_exceptions=True
            )
            failed = [i for i, r in enumerate(first) if isinstance(r, BaseException)]
            assert failed  # at least the first block failed
            assert all(isinstance(first[i], LedgerUnavailable) for i in failed)
            assert_memory_is_the_database(ledger)
            second = await asyncio.gather(*(ledger.transfers(r) for r in requests))
            for i, results in enumerate(second):
                applied_before = i not in failed or land
                expected = Code.EXISTS if applied_before else Code.OK
                assert set(codes(results)) == {expected}, (i, results)
            moved = sum(7 if i % 3 else 9 for i in range(40))
            assert ledger.available("alice") == 10_000 - moved
            assert ledger.available("bob") == moved
            assert_memory_is_the_database(ledger)


@pytest.mark.parametrize("land", [False, True], ids=["failed", "landed"])
async def test_retries_then_reload(tmp_path: Path, fake_clock: FakeClock, land: bool) -> None:
    with sqlite_engine(tmp_path / "ledger.db") as engine:
        store = FlakyStore(engine)
        async with open_ledger(store, fake_clock, max_retry_attempts=2) as ledger:
            await setup(ledger, alice=1000, bob=0)
            # one failure is absorbed by a retry
            store.fail_before = 1
            results = await advancing(fake_clock, ledger.transfer(pay("t1", "alice", "bob", 1)))
            assert codes(results) == [Code.OK]
            # a commit that landed and raised: the retry hits the block already written
            if land:
                store.land_then_raise = 1
            else:
                store.fail_before = 3
            with pytest.raises(LedgerUnavailable):
                await advancing(fake_clock, ledger.transfer(pay("t2", "alice", "bob", 2)))
            assert_memory_is_the_database(ledger)
            again = await ledger.transfer(pay("t2", "alice", "bob", 2))
            assert codes(again) == [Code.EXISTS if land else Code.OK]
            assert ledger.available("bob") == 3
            assert_memory_is_the_database(ledger)


async def test_a_stopped_ledger_is_unavailable(tmp_path: Path) -> None:
    async with sqlite_ledger(tmp_path / "l.db", SystemClock()) as ledger:
        await setup(ledger, alice=5)
    with pytest.raises(LedgerUnavailable):
        await ledger.transfer(pay("late", "alice", "sink", 1))
