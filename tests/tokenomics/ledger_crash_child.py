"""The victim of test_crash: a ledger on a SQLite file, writing transfers as fast as it can.

Usage: ``python ledger_crash_child.py DB_PATH GENERATION [LIMIT]``.

It prints ``READY`` once the ledger is open, then one line per answered transfer, written and
flushed only after the ledger answered: ``ACK <id>`` for an applied transfer, ``REFUSED <id>``
for one the ledger refused. Ids carry the generation, so every run uses fresh ones. Chains are
``<gen>-c-<worker>-<n>-<leg>`` with three legs. With LIMIT it stops after that many ACK lines,
closes the ledger and prints ``DONE``; without, it runs until it is killed.
"""

from __future__ import annotations

import asyncio
import sys

from fogcoord.clock import SystemClock
from fogcoord.storage.engine import create_engine
from fogcoord.tokenomics.ledger import MINT, Ledger
from fogcoord.tokenomics.model import (
    Account,
    AccountFlags,
    AccountKind,
    TransferFlags,
    TransferRequest,
    TransferResult,
)
from fogcoord.tokenomics.store import SqlLedgerStore

WALLETS = ("w0", "w1", "w2", "w3")
CHAIN_LEGS = 3
WORKERS = 4


class Runner:
    def __init__(self, ledger: Ledger, gen: str, limit: int) -> None:
        self.ledger = ledger
        self.gen = gen
        self.limit = limit
        self.acked = 0
        self.done = asyncio.Event()

    def report(self, results: list[TransferResult]) -> None:
        lines = []
        for r in results:
            if r.code in ("ok", "exists"):
                lines.append(f"ACK {r.id}\n")
                self.acked += 1
            else:
                lines.append(f"REFUSED {r.id}\n")
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
        if self.limit and self.acked >= self.limit:
            self.done.set()

    async def worker(self, w: int) -> None:
        src, dst = WALLETS[w], WALLETS[(w + 1) % len(WALLETS)]
        n = 0
        while not self.done.is_set():
            n += 1
            base = f"{self.gen}-{w}-{n}"
            kind = n % 3
            if kind == 0:
                self.report(await self.ledger.transfer(self._pay(f"{base}-s", src, dst, 3)))
            elif kind == 1:
                # every fifth chain cannot go through: its last leg asks far too much
                last = 10**12 if n % 5 == 1 else 2
                legs = [
                    self._pay(f"{self.gen}-c-{w}-{n}-{k}", src if k % 2 == 0 else dst,
                              dst if k % 2 == 0 else src, last if k == CHAIN_LEGS - 1 else 2,
                              TransferFlags.LINKED if k < CHAIN_LEGS - 1 else 0)
                    for k in range(CHAIN_LEGS)
                ]  # fmt: skip
                self.report(await self.ledger.transfers(legs))
            else:
                hold = TransferRequest(f"{base}-h", src, dst, 10, TransferFlags.PENDING, None, 30.0)
                self.report(await self.ledger.transfer(hold))
                post = TransferRequest(
                    f"{base}-p", amount=4, flags=TransferFlags.POST_PENDING, pending_id=hold.id
                )
                self.report(await self.ledger.transfer(post))

    @staticmethod
    def _pay(tid: str, debit: str, credit: str, amount: int, flags: int = 0) -> TransferRequest:
        return TransferRequest(tid, debit, credit, amount, flags)


async def main(path: str, gen: str, limit: int) -> None:
    engine = create_engine(f"sqlite:///{path}")
    try:
        ledger = Ledger(SqlLedgerStore(engine), SystemClock())
        await ledger.open()
        try:
            for name in WALLETS:
                account = Account(
                    name, AccountKind.WALLET, "crash", AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
                )
                assert await ledger.create_account(account) in ("ok", "account_exists")
                fund = TransferRequest(f"{gen}-fund-{name}", MINT, name, 10**7)
                [result] = await ledger.transfer(fund)
                assert result.code == "ok", result
            print("READY", flush=True)
            runner = Runner(ledger, gen, limit)
            await asyncio.gather(*(runner.worker(w) for w in range(WORKERS)))
        finally:
            await ledger.close()
    finally:
        engine.dispose()
    print("DONE", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0))
