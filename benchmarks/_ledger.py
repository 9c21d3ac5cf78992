"""The payment workload shared by the ledger figures, and its one-per-transaction baseline.

A fleet of wallets opened through ``FogTokenomicsService.initialize_wallet`` with a large opening
grant (so no payer runs dry), then concurrent payers: each is one asyncio task awaiting
``process_payment`` in a loop, with unique transaction ids, random payer/payee pairs and realistic
amounts. Every payment is the user leg plus its linked gas-fee leg, as the service builds it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from time import perf_counter

from sqlalchemy.engine import Engine

from fogcoord.config import TokenomicsConfig, WalletManagementConfig
from fogcoord.contracts.tokenomics import Transaction, TransactionStatus
from fogcoord.tokenomics.codes import Code
from fogcoord.tokenomics.engine import LedgerState
from fogcoord.tokenomics.ledger import MINT, PLATFORM, SYSTEM_ACCOUNTS
from fogcoord.tokenomics.model import (
    Account,
    AccountFlags,
    AccountKind,
    TransferFlags,
    TransferRequest,
)
from fogcoord.tokenomics.service import FogTokenomicsService, micro_of
from fogcoord.tokenomics.store import SqlLedgerStore

PAYERS = 64
WALLETS = 1_000
OPENING_BALANCE = 1_000_000.0
"""Tokens granted to every wallet: far more than 64 x 500 payments of these amounts can spend."""
AMOUNTS = tuple(
    Decimal(a) for a in ("0.25", "0.5", "1.25", "0.05", "2", "0.125", "7.5", "0.01", "3.2")
)
DURABLE = (TransactionStatus.COMMITTED, TransactionStatus.CONFIRMED)
"""A payment answered with either status is in a committed block (confirmed = committed and
``confirmation_blocks`` later blocks exist); only these are counted."""


def ledger_config(opening_balance: float = OPENING_BALANCE) -> TokenomicsConfig:
    return TokenomicsConfig(
        wallet_management=WalletManagementConfig(default_balance=opening_balance)
    )


def wallet_ids(count: int) -> list[str]:
    return [f"wallet-{i:05d}" for i in range(count)]


def payment_plan(
    wallets: Sequence[str], payers: int, per_payer: int, tag: str, seed: int
) -> list[list[Transaction]]:
    """``payers`` lists of ``per_payer`` payments each, with ids unique to ``tag``."""
    rng = random.Random(seed)
    n = len(wallets)
    plan = []
    for p in range(payers):
        txs = []
        for i in range(per_payer):
            a = rng.randrange(n)
            b = (a + 1 + rng.randrange(n - 1)) % n
            txs.append(
                Transaction(
                    transaction_id=f"{tag}-{p:02d}-{i:05d}",
                    from_wallet=wallets[a],
                    to_wallet=wallets[b],
                    amount=rng.choice(AMOUNTS),
                    memo="compute job",
                )
            )
        plan.append(txs)
    return plan


def interleaved(plan: Sequence[Sequence[Transaction]]) -> list[Transaction]:
    """The plan's payments in the order concurrent payers submit them: round-robin."""
    return [tx for row in zip(*plan, strict=True) for tx in row]


@asynccontextmanager
async def running_service(
    engine: Engine, config: TokenomicsConfig
) -> AsyncIterator[FogTokenomicsService]:
    svc = FogTokenomicsService(config, lambda: engine)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


async def open_wallets(svc: FogTokenomicsService, wallets: Sequence[str]) -> None:
    """Create and fund every wallet (concurrently, so the grants are group-committed too)."""
    infos = await asyncio.gather(*(svc.initialize_wallet(w) for w in wallets))
    granted = svc.config.wallet_management.default_balance
    short = [i.wallet_id for i in infos if i.balance != Decimal(repr(granted))]
    if short:
        raise RuntimeError(f"{len(short)} wallets were not granted {granted}: {short[:3]}")


@dataclass
class PaymentRun:
    payments: int
    committed: int
    elapsed_s: float
    latencies_ms: list[float]
    statuses: Counter[str]
    blocks: int

    @property
    def rate(self) -> float:
        return self.committed / self.elapsed_s

    def describe(self) -> str:
        return (
            f"{self.committed}/{self.payments} committed in {self.elapsed_s:.2f} s "
            f"({self.rate:,.0f}/s), {self.blocks} blocks "
            f"({self.payments / max(self.blocks, 1):.1f} payments/block), "
            f"statuses {dict(self.statuses)}"
        )


async def pay_concurrently(
    svc: FogTokenomicsService, plan: Sequence[Sequence[Transaction]]
) -> PaymentRun:
    """One task per payer list, all at once; the latency of every call, wall time of all."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()

    async def payer(txs: Sequence[Transaction]) -> None:
        for tx in txs:
            started = perf_counter()
            result = await svc.process_payment(tx)
            latencies.append((perf_counter() - started) * 1000.0)
            statuses[result.status.value] += 1

    blocks_before = svc.ledger.writer.batches
    started = perf_counter()
    async with asyncio.TaskGroup() as group:
        for txs in plan:
            group.create_task(payer(txs))
    elapsed = perf_counter() - started
    committed = sum(statuses[s.value] for s in DURABLE)
    return PaymentRun(
        payments=sum(len(txs) for txs in plan),
        committed=committed,
        elapsed_s=elapsed,
        latencies_ms=latencies,
        statuses=statuses,
        blocks=svc.ledger.writer.batches - blocks_before,
    )


def payment_legs(tx: Transaction, fee_micro: int) -> list[TransferRequest]:
    """The transfers ``process_payment`` submits for ``tx``: the payment, linked to its fee."""
    legs = [
        TransferRequest(
            tx.transaction_id,
            tx.from_wallet,
            tx.to_wallet,
            micro_of(tx.amount),
            TransferFlags.LINKED if fee_micro > 0 else TransferFlags.NONE,
            memo=tx.memo,
        )
    ]
    if fee_micro > 0:
        legs.append(
            TransferRequest(
                f"fee:{tx.transaction_id}", tx.from_wallet, PLATFORM, fee_micro, memo="gas fee"
            )
        )
    return legs


class OnePerTransaction:
    """The baseline ledger: the real state machine and ``SqlLedgerStore``, no group commit.

    Each payment becomes its own block -- ``LedgerState.begin``, ``submit`` of its two linked
    legs, ``finish`` -- written with ``SqlLedgerStore.write`` (one database transaction, one
    commit) and then committed to memory, strictly one after another. Wallets are opened exactly
    as the service opens them (same reserve, same opening grant from ``mint``).
    """

    def __init__(self, engine: Engine, svc: FogTokenomicsService, wallets: Sequence[str]) -> None:
        self.store = SqlLedgerStore(engine)
        self.state = LedgerState.from_loaded(self.store.load())
        self.fee_micro = svc.fee_micro
        builder = self.state.begin(time.time())
        for system in SYSTEM_ACCOUNTS:
            builder.create_account(Account(system, AccountKind.SYSTEM, "system"))
        for w in wallets:
            code = builder.create_account(
                Account(
                    w,
                    AccountKind.WALLET,
                    w,
                    AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
                    reserve=svc.minimum_micro,
                )
            )
            if code != Code.OK:
                raise RuntimeError(f"baseline wallet {w}: {code}")
        grants = builder.submit(
            [
                TransferRequest(f"grant:{w}", MINT, w, svc.default_micro, memo="opening grant")
                for w in wallets
            ]
        )
        if any(r.code != Code.OK for r in grants):
            raise RuntimeError("baseline opening grants failed")
        self.store.write(builder.finish())
        self.state.commit(builder)

    def pay(self, payments: Sequence[Transaction]) -> float:
        """Commit each payment in its own transaction; payments per second."""
        started = perf_counter()
        for tx in payments:
            builder = self.state.begin(time.time())
            results = builder.submit(payment_legs(tx, self.fee_micro))
            if any(r.code != Code.OK for r in results):
                raise RuntimeError(f"baseline payment {tx.transaction_id}: {results}")
            self.store.write(builder.finish())
            self.state.commit(builder)
        return len(payments) / (perf_counter() - started)


@dataclass
class ThroughputResult:
    run: PaymentRun
    baseline_rate: float
    sequential_rate: float


async def throughput(
    engine: Engine,
    baseline_engine: Engine,
    *,
    per_payer: int,
    warmup_per_payer: int,
    baseline_payments: int,
    sequential_payments: int,
) -> ThroughputResult:
    """Warm up, run the one-per-transaction baseline, then the measured 64-payer run.

    ``sequential_rate`` (context only, not a figure): the service itself with one payer, so
    every block holds one payment.
    """
    wallets = wallet_ids(WALLETS)
    async with running_service(engine, ledger_config()) as svc:
        await open_wallets(svc, wallets)
        await pay_concurrently(svc, payment_plan(wallets, PAYERS, warmup_per_payer, "warm", 1))

        plan = payment_plan(wallets, PAYERS, per_payer, "pay", 2)
        baseline = OnePerTransaction(baseline_engine, svc, wallets)
        baseline.pay(interleaved(payment_plan(wallets, 1, 50, "base-warm", 3)))
        baseline_rate = baseline.pay(interleaved(plan)[:baseline_payments])

        run = await pay_concurrently(svc, plan)

        sequential = await pay_concurrently(
            svc, payment_plan(wallets, 1, sequential_payments, "seq", 4)
        )
    return ThroughputResult(run, baseline_rate, sequential.rate)
