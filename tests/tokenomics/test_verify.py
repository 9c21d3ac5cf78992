"""verify_ledger: a clean ledger verifies; every kind of tampering with the rows is reported."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fogcoord.clock import FakeClock
from fogcoord.tokenomics.codes import Code
from fogcoord.tokenomics.ledger import MINT
from fogcoord.tokenomics.verify import VerifyReport, verify_ledger
from tests.tokenomics.ledger_support import (
    LINKED,
    codes,
    hold,
    pay,
    post,
    sqlite_ledger,
    sqlite_store,
    void,
    wallet,
)


async def build(path: Path, clock: FakeClock) -> tuple[int, str]:
    """A ledger with every kind of row; returns its head."""
    async with sqlite_ledger(path, clock) as ledger:
        for name in ("alice", "bob", "carol"):
            await ledger.create_account(wallet(name))
        await ledger.transfer(pay("f1", MINT, "alice", 1000), pay("f2", MINT, "bob", 500))
        await ledger.transfer(pay("t1", "alice", "bob", 100, memo="tea"))
        # an int timeout: hashed exactly as the float the database gives back
        await ledger.transfer(hold("h1", "alice", "carol", 300, timeout=30))
        await ledger.transfer(hold("h2", "bob", "carol", 50), hold("h3", "bob", "alice", 20))
        await ledger.transfer(post("c1", "h2", 20), void("v3", "h3"))
        await ledger.transfer(pay("l1", "bob", "carol", 5, LINKED), pay("l2", "carol", "alice", 5))
        await ledger.transfer(pay("x1", "carol", "alice", 10**6))
        clock.advance(30.0)
        await ledger.tick()
        # a refused post of the expired transfer re-reads it: that must not move its expiry
        assert codes(await ledger.transfer(post("c9", "h1"))) == [Code.PENDING_TRANSFER_EXPIRED]
        await ledger.transfer(pay("t2", "bob", "alice", 1))
        return ledger.head


@pytest.fixture
async def db(tmp_path: Path, fake_clock: FakeClock) -> Path:
    path = tmp_path / "ledger.db"
    await build(path, fake_clock)
    return path


def verify(path: Path) -> VerifyReport:
    with sqlite_store(path) as store:
        return verify_ledger(store)


def tamper(path: Path, *statements: str) -> None:
    con = sqlite3.connect(path)
    try:
        for sql in statements:
            assert con.execute(sql).rowcount == 1, sql
        con.commit()
    finally:
        con.close()


def block_of(path: Path, transfer_id: str) -> int:
    con = sqlite3.connect(path)
    try:
        row = con.execute(
            "SELECT block FROM ledger_transfers WHERE id = ?", (transfer_id,)
        ).fetchone()
    finally:
        con.close()
    return int(row[0])


async def test_a_clean_ledger_verifies(tmp_path: Path, fake_clock: FakeClock) -> None:
    path = tmp_path / "ledger.db"
    head = await build(path, fake_clock)
    report = verify(path)
    assert report.ok, report.problems
    assert report.problems == []
    assert (report.block_count, report.head_hash) == head
    assert report.accounts == 5  # mint, platform, alice, bob, carol
    with sqlite_store(path) as store:
        assert report.transfers == len(list(store.all_transfers()))
        expired = [r.number for r in store.blocks() if store.block_content(r)[2]]
    assert len(expired) == 1


def test_an_empty_ledger_verifies(tmp_path: Path) -> None:
    with sqlite_store(tmp_path / "empty.db") as store:
        report = verify_ledger(store)
    assert report.ok
    assert (report.accounts, report.transfers, report.block_count) == (0, 0, 0)


def test_a_changed_amount_is_reported(db: Path) -> None:
    block = block_of(db, "t1")
    tamper(db, "UPDATE ledger_transfers SET amount = amount + 1 WHERE id = 't1'")
    problems = verify(db).problems
    assert f"block {block} hash does not match its contents" in problems
    assert any(p.startswith("account alice: stored") for p in problems)
    assert any(p.startswith("account bob: stored") for p in problems)


def test_a_changed_memo_is_reported(db: Path) -> None:
    block = block_of(db, "t1")
    tamper(db, "UPDATE ledger_transfers SET memo = 'coffee' WHERE id = 't1'")
    assert verify(db).problems == [f"block {block} hash does not match its contents"]


def test_a_changed_account_total_is_reported(db: Path) -> None:
    tamper(db, "UPDATE ledger_accounts SET credits_posted = credits_posted + 5 WHERE id = 'bob'")
    problems = verify(db).problems
    assert any(p.startswith("account bob: stored") for p in problems)
    assert any(p.startswith("posted debits") for p in problems)


def test_a_consistent_forgery_of_both_totals_is_still_caught(db: Path) -> None:
    tamper(
        db,
        "UPDATE ledger_accounts SET credits_posted = credits_posted + 5 WHERE id = 'bob'",
        "UPDATE ledger_accounts SET debits_posted = debits_posted + 5 WHERE id = 'mint'",
    )
    problems = verify(db).problems
    assert any(p.startswith("account bob: stored") for p in problems)
    assert any(p.startswith("account mint: stored") for p in problems)


def test_a_changed_block_hash_is_reported(db: Path) -> None:
    tamper(db, f"UPDATE ledger_blocks SET hash = '{'f' * 64}' WHERE number = 3")
    problems = verify(db).problems
    assert "block 3 hash does not match its contents" in problems
    assert "block 4 does not chain to the block before it" in problems


def test_a_deleted_transfer_is_reported(db: Path) -> None:
    block = block_of(db, "t1")
    tamper(db, "DELETE FROM ledger_transfers WHERE id = 't1'")
    problems = verify(db).problems
    assert f"block {block} holds 0 transfers, header says 1" in problems
    assert f"block {block} hash does not match its contents" in problems
    assert any(p.startswith("account alice: stored") for p in problems)


def test_a_deleted_block_is_reported(db: Path) -> None:
    tamper(db, "DELETE FROM ledger_blocks WHERE number = 2")
    problems = verify(db).problems
    assert "block 2 is missing (found 3)" in problems
    assert "block 3 does not chain to the block before it" in problems


def test_a_revived_pending_transfer_is_reported(db: Path) -> None:
    tamper(db, "UPDATE ledger_pending SET state = 'pending', expired_block = NULL WHERE id = 'h1'")
    problems = verify(db).problems
    assert any(p.startswith("account alice: stored") for p in problems)
    assert any("hash does not match" in p for p in problems)  # the expiry was in a block


def test_a_pending_without_state_is_reported(db: Path) -> None:
    tamper(db, "DELETE FROM ledger_pending WHERE id = 'h2'")
    assert "pending transfer h2 has no state" in verify(db).problems


def test_an_overdrawn_limited_account_is_reported(db: Path) -> None:
    tamper(db, "UPDATE ledger_accounts SET flags = 1 WHERE id = 'mint'")
    problems = verify(db).problems
    assert "account mint is overdrawn" in problems
    assert "block 1 hash does not match its contents" in problems  # flags are hashed too


def test_a_transfer_naming_a_missing_account_is_reported(db: Path) -> None:
    tamper(db, "DELETE FROM ledger_accounts WHERE id = 'carol'")
    problems = verify(db).problems
    assert "transfers name account carol, which does not exist" in problems


def test_the_number_of_problems_is_capped(db: Path) -> None:
    tamper(db, f"UPDATE ledger_blocks SET hash = '{'f' * 64}' WHERE number = 1")
    tamper(db, "UPDATE ledger_transfers SET amount = amount + 1 WHERE id = 't1'")
    with sqlite_store(db) as store:
        assert len(verify_ledger(store, max_problems=2).problems) == 2
        assert len(verify_ledger(store).problems) > 2
