"""One contract, every ledger store: SqlLedgerStore on SQLite (a temp file) and PostgreSQL.

Batches are built with the real engine (LedgerState / BatchBuilder) and written with
``store.write``, exactly as the group-commit writer does. Each PostgreSQL test gets a schema of
its own and drops it afterwards.
"""

from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fogcoord.tokenomics import blocks
from fogcoord.tokenomics.codes import Code
from fogcoord.tokenomics.engine import LedgerState
from fogcoord.tokenomics.model import MAX_AMOUNT, MAX_MEMO, FailedId, PendingState, Transfer
from fogcoord.tokenomics.store import SqlLedgerStore
from fogcoord.tokenomics.verify import verify_ledger
from tests.tokenomics.ledger_support import (
    LINKED,
    Book,
    codes,
    hold,
    pay,
    post,
    store_totals,
    system,
    void,
    wallet,
)


@pytest.fixture
def engine(backend_engine: Engine) -> Engine:
    return backend_engine


@pytest.fixture
def store(engine: Engine) -> SqlLedgerStore:
    return SqlLedgerStore(engine)


def scenario(store: SqlLedgerStore) -> Book:
    """A few blocks with every kind of row: accounts, single, pending, post, void, failed,
    linked, an expiry and a refused post of the expired transfer."""
    book = Book(store)
    book.accounts(system("mint"), wallet("alice"), wallet("bob", reserve=10), wallet("carol"))
    assert (
        codes(book.run(pay("f1", "mint", "alice", 1000), pay("f2", "mint", "bob", 500)))
        == [Code.OK] * 2
    )
    book.now += 1
    assert codes(
        book.run(
            hold("h1", "alice", "bob", 300, timeout=30.0),
            hold("h2", "alice", "carol", 100),
            hold("h3", "bob", "carol", 50, timeout=5.0),
            pay("x1", "carol", "alice", 1),
        )
    ) == [Code.OK, Code.OK, Code.OK, Code.EXCEEDS_CREDITS]
    book.now += 1
    assert codes(
        book.run(
            post("c1", "h1", 120),
            void("v1", "h2"),
            pay("t1", "bob", "carol", 40, memo="hello"),
            pay("l1", "alice", "carol", 5, LINKED),
            pay("l2", "carol", "bob", 5),
            pay("l3", "alice", "carol", 5, LINKED),
            pay("l4", "carol", "bob", 10**6),
        )
    ) == [Code.OK] * 5 + [Code.LINKED_EVENT_FAILED, Code.EXCEEDS_CREDITS]
    book.now += 10
    assert book.tick() == ["h3"]
    assert codes(book.run(post("c2", "h3"))) == [Code.PENDING_TRANSFER_EXPIRED]
    return book


def committed(book: Book) -> list[Transfer]:
    return [t for batch in book.batches for t in batch.transfers]


def test_an_empty_store_loads_a_genesis_ledger(store: SqlLedgerStore) -> None:
    loaded = store.load()
    assert loaded.accounts == []
    assert loaded.pending == []
    assert (loaded.head_number, loaded.head_hash, loaded.next_seq) == (0, None, 1)
    assert loaded.ids == []
    state = LedgerState.from_loaded(loaded)
    assert state.head_hash == blocks.GENESIS
    assert list(store.blocks()) == []
    assert verify_ledger(store).ok


def test_load_gives_back_exactly_the_committed_state(store: SqlLedgerStore, engine: Engine) -> None:
    book = scenario(store)
    for source in (store, SqlLedgerStore(engine)):  # and a second store on the same database
        loaded = source.load()
        assert sorted(loaded.accounts, key=lambda a: a.id) == sorted(
            book.state.accounts.values(), key=lambda a: a.id
        )
        assert {p.transfer.id: p for p in loaded.pending} == book.state.pending
        states = {p.transfer.id: p.state for p in loaded.pending}
        assert states == {
            "h1": PendingState.POSTED,
            "h2": PendingState.VOIDED,
            "h3": PendingState.EXPIRED,
        }
        assert (loaded.head_number, loaded.head_hash) == (
            book.state.head_number,
            book.state.head_hash,
        )
        assert loaded.next_seq == book.state.next_seq
        assert sorted(loaded.ids) == sorted(book.state.recent)
        assert source.pending_states() == states


def test_a_reloaded_state_carries_on_where_it_stopped(store: SqlLedgerStore) -> None:
    book = scenario(store)
    again = Book(store, now=book.now)
    assert again.state.head_hash == book.state.head_hash
    # ids known only to the store are looked up: replays and failed ids are answered exactly
    results = again.run(
        pay("t1", "bob", "carol", 40, memo="hello"),
        pay("x1", "carol", "alice", 1),
        post("c1", "h1", 120),
        post("c3", "h1"),
        pay("t2", "alice", "bob", 1),
    )
    assert codes(results) == [
        Code.EXISTS,
        Code.ID_ALREADY_FAILED,
        Code.EXISTS,
        Code.PENDING_TRANSFER_ALREADY_POSTED,
        Code.OK,
    ]
    assert results[-1].transfer is not None
    assert results[-1].transfer.seq == book.state.next_seq
    assert again.state.head_number == book.state.head_number + 1
    assert verify_ledger(store).ok


def test_lookup_finds_transfers_and_failed_ids(store: SqlLedgerStore) -> None:
    book = scenario(store)
    store.LOOKUP_CHUNK = 3  # several chunks
    every = committed(book)
    failed = {f.id: f for batch in book.batches for f in batch.failed}
    assert set(failed) == {"x1", "l4", "c2"}
    found = store.lookup([t.id for t in every] + list(failed) + ["nope", "l3"])
    assert {k: v for k, v in found.items() if isinstance(v, Transfer)} == {t.id: t for t in every}
    assert {k: v for k, v in found.items() if isinstance(v, FailedId)} == failed
    assert "nope" not in found
    assert "l3" not in found  # a rolled-back leg left no trace
    assert store.lookup([]) == {}
    assert store.transfer("c1") == next(t for t in every if t.id == "c1")
    assert store.transfer("x1") is None


def test_a_stored_transfer_keeps_every_field(store: SqlLedgerStore) -> None:
    book = scenario(store)
    c1 = store.transfer("c1")
    assert c1 is not None
    assert (c1.debit_account, c1.credit_account, c1.amount, c1.pending_id) == (
        "alice",
        "bob",
        120,
        "h1",
    )
    h1 = store.transfer("h1")
    assert h1 is not None
    assert (h1.timeout, h1.amount) == (30.0, 300)
    t1 = store.transfer("t1")
    assert t1 is not None
    assert t1.memo == "hello"
    assert [t for t in committed(book) if t.id in ("c1", "h1", "t1")] == sorted(
        [c1, h1, t1], key=lambda t: t.seq
    )


def test_history_is_newest_first_on_both_sides_with_paging(store: SqlLedgerStore) -> None:
    book = scenario(store)
    book.run(*(pay(f"a{i}", "alice", "carol", 1) for i in range(4)))
    book.run(*(pay(f"b{i}", "carol", "alice", 1) for i in range(3)))
    mine = sorted(
        (t for t in committed(book) if "alice" in (t.debit_account, t.credit_account)),
        key=lambda t: t.seq,
        reverse=True,
    )
    assert store.history("alice", 1000) == mine
    assert {t.debit_account for t in mine} >= {"alice", "mint", "carol"}
    pages: list[Transfer] = []
    before: int | None = None
    while True:
        page = store.history("alice", 3, before)
        if not page:
            break
        assert len(page) <= 3
        pages.extend(page)
        before = page[-1].seq
    assert pages == mine
    assert store.history("alice", 2) == mine[:2]
    assert store.history("nobody", 10) == []


def test_pending_for_lists_an_accounts_pending_transfers(store: SqlLedgerStore) -> None:
    scenario(store)
    alice = store.pending_for("alice")
    assert [(p.transfer.id, p.state, p.resolved_by) for p in alice] == [
        ("h2", PendingState.VOIDED, "v1"),
        ("h1", PendingState.POSTED, "c1"),
    ]
    assert alice[1].expires_at is not None
    bob = store.pending_for("bob")
    assert [(p.transfer.id, p.state) for p in bob] == [("h3", PendingState.EXPIRED)]
    assert store.pending_for("carol") == []


def test_blocks_and_their_contents_rebuild_every_hash(store: SqlLedgerStore) -> None:
    book = scenario(store)
    rows = list(store.blocks())
    assert [r.number for r in rows] == [b.number for b in book.batches]
    prev = blocks.GENESIS
    for row, batch in zip(rows, book.batches, strict=True):
        assert (row.prev_hash, row.hash, row.timestamp) == (prev, batch.hash, batch.timestamp)
        assert row.transfers == len(batch.transfers)
        transfers, accounts, expired = store.block_content(row)
        assert transfers == batch.transfers
        assert sorted(a.id for a in accounts) == sorted(a.id for a in batch.accounts_created)
        content = blocks.content_hash(transfers, accounts, expired)
        assert blocks.block_hash(row.number, row.prev_hash, content, row.timestamp) == row.hash
        prev = row.hash
    expiry_rows = [r for r in rows if store.block_content(r)[2]]
    assert [store.block_content(r)[2] for r in expiry_rows] == [["h3"]]
    report = verify_ledger(store)
    assert report.ok, report.problems
    assert (report.block_count, report.head_hash) == (len(rows), book.state.head_hash)
    assert report.transfers == len(committed(book))


def test_all_transfers_in_seq_order(store: SqlLedgerStore) -> None:
    book = scenario(store)
    every = list(store.all_transfers())
    assert every == committed(book)
    assert [t.seq for t in every] == list(range(1, len(every) + 1))


def test_accounts_match_memory(store: SqlLedgerStore) -> None:
    book = scenario(store)
    assert store_totals(store) == {
        a.id: (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
        for a in book.state.accounts.values()
    }
    assert store_totals(store)["alice"] == (0, 120 + 5, 0, 1000)


def _row_counts(engine: Engine) -> dict[str, int]:
    tables = ["ledger_accounts", "ledger_transfers", "ledger_pending", "ledger_failed"]
    with engine.connect() as conn:
        return {
            t: int(conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one())
            for t in [*tables, "ledger_blocks"]
        }


def test_a_failing_write_leaves_nothing_behind(store: SqlLedgerStore, engine: Engine) -> None:
    book = scenario(store)
    before = store.load()
    counts = _row_counts(engine)
    totals = store_totals(store)
    builder = book.begin(["n1", "n2", "n3", "n4"])
    builder.create_account(wallet("dave"))
    assert codes(
        builder.submit(
            [
                pay("n1", "alice", "dave", 100),
                hold("n2", "alice", "bob", 10, timeout=9.0),
                pay("n3", "carol", "alice", 10**6),
            ]
        )
    ) == [Code.OK, Code.OK, Code.EXCEEDS_CREDITS]
    batch = builder.finish()
    # a block number that is already taken: the block row is written last, so every other
    # row of the batch was already sent when the database refuses it
    clash = dataclasses.replace(batch, number=book.state.head_number)
    with pytest.raises(sa.exc.IntegrityError):
        store.write(clash)
    builder.abandon()
    assert _row_counts(engine) == counts
    assert store_totals(store) == totals
    after = store.load()
    assert (after.head_number, after.head_hash, after.next_seq) == (
        before.head_number,
        before.head_hash,
        before.next_seq,
    )
    assert sorted(after.ids) == sorted(before.ids)
    assert store.lookup(["n1", "n2", "n3"]) == {}
    assert verify_ledger(store).ok
    # the batch as built is still good: written now, it lands whole
    store.write(batch)
    book.state.commit(builder)
    assert set(store.lookup(["n1", "n2", "n3"])) == {"n1", "n2", "n3"}
    assert verify_ledger(store).ok


def test_the_same_batch_cannot_land_twice(store: SqlLedgerStore) -> None:
    book = Book(store)
    book.accounts(system("mint"), wallet("alice"))
    builder = book.begin(["f"])
    builder.submit([pay("f", "mint", "alice", 5)])
    batch = builder.finish()
    store.write(batch)
    with pytest.raises(sa.exc.IntegrityError):
        store.write(batch)
    assert store_totals(store)["alice"] == (0, 0, 0, 5)
    assert [t.id for t in store.all_transfers()] == ["f"]


def test_unicode_and_extreme_values_round_trip(store: SqlLedgerStore) -> None:
    book = Book(store)
    book.accounts(system("mint"), system("rich"), wallet("w", reserve=MAX_AMOUNT))
    memo = "café ☕ 支付 \U0001f4b8 " + "m" * 180
    assert (
        codes(
            book.run(
                pay("big", "mint", "rich", MAX_AMOUNT, memo=memo[:MAX_MEMO]),
                hold("slow", "rich", "mint", 1, timeout=1e9),
                pay("x" * 96, "rich", "w", 1),
            )
        )
        == [Code.OK] * 3
    )
    loaded = store.load()
    assert {a.id: a for a in loaded.accounts} == book.state.accounts
    big = store.transfer("big")
    assert big is not None
    assert (big.amount, big.memo) == (MAX_AMOUNT, memo[:MAX_MEMO])
    report = verify_ledger(store)
    assert report.ok, report.problems
