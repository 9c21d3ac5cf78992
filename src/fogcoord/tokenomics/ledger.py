"""The ledger: durable double-entry accounts and transfers behind a group-commit writer.

Reads of balances come from memory, kept in step with commits; every change goes through the
single writer. Pending transfers with a timeout expire on the injected clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fogcoord.clock import Clock
from fogcoord.contracts.tokenomics import PLATFORM_WALLET
from fogcoord.tokenomics.codes import Code
from fogcoord.tokenomics.engine import LedgerState
from fogcoord.tokenomics.model import (
    Account,
    AccountKind,
    PendingInfo,
    Transfer,
    TransferRequest,
    TransferResult,
)
from fogcoord.tokenomics.store import LedgerStore
from fogcoord.tokenomics.writer import GroupCommitWriter, LedgerUnavailable

MINT = "mint"
PLATFORM = PLATFORM_WALLET
SYSTEM_ACCOUNTS = (MINT, PLATFORM)


class Ledger:
    def __init__(self, store: LedgerStore, clock: Clock, *, max_retry_attempts: int = 5) -> None:
        self.store = store
        self.clock = clock
        self.state = LedgerState()
        self.writer = GroupCommitWriter(
            self.state, store, clock, max_retry_attempts=max_retry_attempts
        )
        self._expiry_task: asyncio.Task[None] | None = None
        self._expiry_wake = asyncio.Event()

    async def open(self) -> None:
        loaded = await asyncio.to_thread(self.store.load)
        self.state.replace(LedgerState.from_loaded(loaded))
        self.writer.start()
        self.writer.listeners.append(lambda _batch: self._expiry_wake.set())
        for system in SYSTEM_ACCOUNTS:
            await self.create_account(Account(system, AccountKind.SYSTEM, "system"))
        self._expiry_task = asyncio.get_running_loop().create_task(self._expire_loop())

    async def close(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            await asyncio.gather(self._expiry_task, return_exceptions=True)
            self._expiry_task = None
        await self.writer.stop()

    # --- writes ----------------------------------------------------------------------------

    async def create_account(self, account: Account) -> str:
        """``ok`` when created, ``account_exists`` when already there with the same fields."""
        return await self.writer.create_account(account)

    async def transfer(self, *requests: TransferRequest) -> list[TransferResult]:
        return await self.writer.submit(list(requests))

    async def transfers(self, requests: Sequence[TransferRequest]) -> list[TransferResult]:
        return await self.writer.submit(requests)

    async def tick(self) -> None:
        await self.writer.tick()

    # --- reads -----------------------------------------------------------------------------

    def account(self, account_id: str) -> Account | None:
        acc = self.state.accounts.get(account_id)
        return None if acc is None else acc.copy()

    def available(self, account_id: str) -> int | None:
        acc = self.state.accounts.get(account_id)
        return None if acc is None else acc.available

    def pending(self, transfer_id: str) -> PendingInfo | None:
        return self.state.pending.get(transfer_id)

    @property
    def head(self) -> tuple[int, str]:
        return self.state.head_number, self.state.head_hash

    def confirmations(self, block: int | None) -> int:
        return 0 if block is None else max(0, self.state.head_number - block)

    async def lookup(self, transfer_id: str) -> Transfer | None:
        known = self.state.recent.get(transfer_id)
        if isinstance(known, Transfer):
            return known
        return await asyncio.to_thread(self.store.transfer, transfer_id)

    async def history(
        self, account_id: str, limit: int = 50, before_seq: int | None = None
    ) -> list[Transfer]:
        return await asyncio.to_thread(self.store.history, account_id, limit, before_seq)

    async def pending_for(self, account_id: str) -> list[PendingInfo]:
        return await asyncio.to_thread(self.store.pending_for, account_id)

    # --- expiry ----------------------------------------------------------------------------

    async def _expire_loop(self) -> None:
        while True:
            heap = self.state.expiries
            if not heap:
                self._expiry_wake.clear()
                await self._expiry_wake.wait()
                continue
            delay = heap[0][0] - self.clock.time()
            if delay > 0:
                self._expiry_wake.clear()
                sleeper = asyncio.ensure_future(self.clock.sleep(delay))
                waker = asyncio.ensure_future(self._expiry_wake.wait())
                try:
                    await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    # also when this loop itself is cancelled: nothing may outlive the ledger
                    sleeper.cancel()
                    waker.cancel()
                continue
            try:
                await self.writer.tick()
            except LedgerUnavailable:
                await self.clock.sleep(1.0)


def ok(results: Sequence[TransferResult]) -> bool:
    return all(r.code in (Code.OK, Code.EXISTS) for r in results)
