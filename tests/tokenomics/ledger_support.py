"""Shared scaffolding for the ledger tests: request builders, sync batches, open ledgers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from sqlalchemy.engine import Engine

from fogcoord.clock import Clock
from fogcoord.storage.engine import create_engine
from fogcoord.tokenomics.codes import Code
from fogcoord.tokenomics.engine import BatchBuilder, LedgerState
from fogcoord.tokenomics.ledger import Ledger
from fogcoord.tokenomics.model import (
    Account,
    AccountFlags,
    AccountKind,
    Batch,
    TransferFlags,
    TransferRequest,
    TransferResult,
)
from fogcoord.tokenomics.store import LedgerStore, SqlLedgerStore

LINKED = TransferFlags.LINKED
PENDING = TransferFlags.PENDING
POST = TransferFlags.POST_PENDING
VOID = TransferFlags.VOID_PENDING
LIMITED = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS

Totals = tuple[int, int, int, int]


def wallet(acc_id: str, reserve: int = 0, owner: str = "owner") -> Account:
    """A limited account: it can never be overdrawn below ``reserve``."""
    return Account(acc_id, AccountKind.WALLET, owner, LIMITED, reserve)


def system(acc_id: str) -> Account:
    """An unlimited account (may go negative), like ``mint``."""
    return Account(acc_id, AccountKind.SYSTEM, "system")


def pay(
    tid: str,
    debit: str,
    credit: str,
    amount: int | None,
    flags: int = 0,
    *,
    timeout: float = 0.0,
    memo: str = "",
) -> TransferRequest:
    return TransferRequest(tid, debit, credit, amount, flags, None, timeout, memo)


def hold(
    tid: str, debit: str, credit: str, amount: int, *, timeout: float = 0.0
) -> TransferRequest:
    return TransferRequest(tid, debit, credit, amount, PENDING, None, timeout)


def post(tid: str, pending_id: str, amount: int | None = None, flags: int = 0) -> TransferRequest:
    return TransferRequest(tid, amount=amount, flags=POST | flags, pending_id=pending_id)


def void(tid: str, pending_id: str, flags: int = 0) -> TransferRequest:
    return TransferRequest(tid, amount=None, flags=VOID | flags, pending_id=pending_id)


def codes(results: Sequence[TransferResult]) -> list[str]:
    return [r.code for r in results]


def totals(acc: Account) -> Totals:
    return (acc.debits_pending, acc.debits_posted, acc.credits_pending, acc.credits_posted)


def state_totals(state: LedgerState) -> dict[str, Totals]:
    return {a.id: totals(a) for a in state.accounts.values()}


def store_totals(store: LedgerStore) -> dict[str, Totals]:
    return {a.id: totals(a) for a in store.accounts()}


def double_entry_holds(accounts: Sequence[Account]) -> bool:
    dp = sum(a.debits_pending for a in accounts)
    cp = sum(a.credits_pending for a in accounts)
    dpost = sum(a.debits_posted for a in accounts)
    cpost = sum(a.credits_posted for a in accounts)
    return dp == cp and dpost == cpost


class Book:
    """A ledger driven synchronously, batch by batch, exactly as the writer drives it.

    Ids the state no longer holds in memory are looked up in ``store`` (when there is one);
    each batch expires due pending transfers first, then applies the operations; a batch is
    written to the store (if any) and only then committed to memory.
    """

    def __init__(self, store: LedgerStore | None = None, now: float = 1_000.0) -> None:
        self.store = store
        self.now = now
        self.state = LedgerState()
        if store is not None:
            self.state = LedgerState.from_loaded(store.load())
        self.batches: list[Batch] = []

    def begin(self, ids: Sequence[str] = (), parent: BatchBuilder | None = None) -> BatchBuilder:
        unknown = self.state.unknown_ids(ids)
        known = self.store.lookup(unknown) if unknown and self.store is not None else {}
        builder = self.state.begin(self.now, known, parent)
        builder.expire_due()
        return builder

    def land(self, builder: BatchBuilder) -> Batch:
        batch = builder.finish()
        if self.store is not None:
            self.store.write(batch)
        self.state.commit(builder)
        self.batches.append(batch)
        return batch

    def run(self, *requests: TransferRequest) -> list[TransferResult]:
        builder = self.begin([r.id for r in requests])
        results = builder.submit(list(requests))
        self.land(builder)
        return results

    def tick(self) -> list[str]:
        builder = self.begin()
        expired = list(builder.expired)
        self.land(builder)
        return expired

    def accounts(self, *accounts: Account) -> None:
        builder = self.begin()
        for acc in accounts:
            assert builder.create_account(acc) == Code.OK
        self.land(builder)

    def acc(self, acc_id: str) -> Account:
        found = self.state.accounts.get(acc_id)
        assert found is not None, acc_id
        return found

    def available(self, acc_id: str) -> int:
        return self.acc(acc_id).available

    def balance(self, acc_id: str) -> int:
        return self.acc(acc_id).balance


@contextmanager
def sqlite_engine(path: Path, synchronous: str = "FULL") -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{path}", synchronous=synchronous)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def sqlite_store(path: Path, synchronous: str = "FULL") -> Iterator[SqlLedgerStore]:
    with sqlite_engine(path, synchronous) as engine:
        yield SqlLedgerStore(engine)


@asynccontextmanager
async def open_ledger(
    store: LedgerStore, clock: Clock, *, max_retry_attempts: int = 5
) -> AsyncIterator[Ledger]:
    ledger = Ledger(store, clock, max_retry_attempts=max_retry_attempts)
    await ledger.open()
    try:
        yield ledger
    finally:
        await ledger.close()


@asynccontextmanager
async def sqlite_ledger(
    path: Path, clock: Clock, *, max_retry_attempts: int = 5
) -> AsyncIterator[Ledger]:
    with sqlite_store(path) as store:
        async with open_ledger(store, clock, max_retry_attempts=max_retry_attempts) as ledger:
            yield ledger
