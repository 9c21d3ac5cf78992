"""Market persistence on SQLite or PostgreSQL: auctions, their results, and every payout.

Money moves in the ledger; this store remembers *why*, so that a retry or a restart never pays a
task twice: a payout batch is written here (as ``paying``, with the exact legs and their transfer
ids) before the ledger is asked to move anything, and the ledger deduplicates by those ids. A
batch left ``paying`` by a crash is driven to the end on the next start with the same ids.
Open auctions' asks live in memory only: after a restart an open auction keeps its deadline and
its escrow and collects asks afresh.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

metadata = sa.MetaData()

auctions_t = sa.Table(
    "market_auctions",
    metadata,
    sa.Column("auction_id", sa.String(64), primary_key=True),
    sa.Column("requester", sa.String(96), nullable=False),
    sa.Column("wallet", sa.String(96), nullable=False),
    sa.Column("escrow_id", sa.String(96), nullable=False, unique=True),
    sa.Column("job_id", sa.String(96), nullable=True),
    sa.Column("slots", sa.Integer, nullable=False),
    sa.Column("gflop", sa.String(64), nullable=False),
    sa.Column("ceiling", sa.BigInteger, nullable=False),
    sa.Column("floor", sa.BigInteger, nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("quote_price", sa.BigInteger, nullable=False),
    sa.Column("hold", sa.BigInteger, nullable=False),
    sa.Column("opened_at", sa.Float, nullable=False),
    sa.Column("closes_at", sa.Float, nullable=False),
    sa.Column("allow_partial", sa.Boolean, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("settling", sa.Text, nullable=True),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("owners", sa.Text, nullable=True),
    sa.Column("closed", sa.Boolean, nullable=False, default=False),
    sa.Column("settled_at", sa.Float, nullable=True),
    sa.Index("ix_market_auctions_status", "status"),
)

batches_t = sa.Table(
    "market_batches",
    metadata,
    sa.Column("batch_id", sa.String(96), primary_key=True),
    sa.Column("escrow_id", sa.String(96), nullable=False),
    sa.Column("job_id", sa.String(96), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("legs", sa.Text, nullable=False),
    sa.Index("ix_market_batches_escrow", "escrow_id"),
)

tasks_t = sa.Table(
    "market_paid_tasks",
    metadata,
    sa.Column("escrow_id", sa.String(96), primary_key=True),
    sa.Column("task_id", sa.String(128), primary_key=True),
    sa.Column("batch_id", sa.String(96), nullable=False),
    sa.Column("gross", sa.BigInteger, nullable=False),
)

payouts_t = sa.Table(
    "market_payouts",
    metadata,
    sa.Column("transfer_id", sa.String(96), primary_key=True),
    sa.Column("escrow_id", sa.String(96), nullable=False),
    sa.Column("batch_id", sa.String(96), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("device", sa.String(96), nullable=False),
    sa.Column("wallet", sa.String(96), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Index("ix_market_payouts_escrow", "escrow_id"),
)

Leg = tuple[str, str, str, str, int, bool]
"""(transfer_id, role, device, wallet, amount, pending)"""


class SqlMarketStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)

    # --- auctions ------------------------------------------------------------------------------

    def insert_auction(self, row: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(auctions_t.insert().values(**row))

    def update_auction(self, auction_id: str, **fields: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                auctions_t.update().where(auctions_t.c.auction_id == auction_id).values(**fields)
            )

    def load_auctions(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(auctions_t.select().order_by(auctions_t.c.opened_at))
            return [dict(r._mapping) for r in rows]

    # --- payouts -------------------------------------------------------------------------------

    def record_batch(
        self,
        batch_id: str,
        escrow_id: str,
        job_id: str,
        created_at: float,
        legs: Sequence[Leg],
        gross: dict[str, int],
    ) -> None:
        """The intent: tasks claimed by this batch and the exact legs, before money moves."""
        with self.engine.begin() as conn:
            conn.execute(
                batches_t.insert().values(
                    batch_id=batch_id,
                    escrow_id=escrow_id,
                    job_id=job_id,
                    state="paying",
                    created_at=created_at,
                    legs=json.dumps(legs),
                )
            )
            if gross:
                conn.execute(
                    tasks_t.insert(),
                    [
                        {"escrow_id": escrow_id, "task_id": t, "batch_id": batch_id, "gross": g}
                        for t, g in gross.items()
                    ],
                )
            if legs:
                conn.execute(
                    payouts_t.insert(),
                    [
                        {
                            "transfer_id": tid,
                            "escrow_id": escrow_id,
                            "batch_id": batch_id,
                            "role": role,
                            "device": device,
                            "wallet": wallet,
                            "amount": amount,
                            "state": "intent",
                        }
                        for tid, role, device, wallet, amount, _ in legs
                    ],
                )

    def batch_paid(self, batch_id: str, legs: Sequence[Leg]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                batches_t.update().where(batches_t.c.batch_id == batch_id).values(state="paid")
            )
            for pending in (True, False):
                ids = [leg[0] for leg in legs if leg[5] is pending]
                if ids:
                    conn.execute(
                        payouts_t.update()
                        .where(payouts_t.c.transfer_id.in_(ids))
                        .values(state="pending" if pending else "paid")
                    )

    def add_payout(self, row: dict[str, Any]) -> None:
        """A payout made outside a batch (the refund of what is left when a job ends)."""
        with self.engine.begin() as conn:
            conn.execute(payouts_t.insert().values(**row))

    def set_payout_state(self, transfer_ids: Iterable[str], state: str) -> None:
        ids = list(transfer_ids)
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                payouts_t.update().where(payouts_t.c.transfer_id.in_(ids)).values(state=state)
            )

    def unfinished_batches(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(batches_t.select().where(batches_t.c.state == "paying"))
            return [dict(r._mapping) for r in rows]

    def paid_tasks(self, escrow_id: str) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(tasks_t.c.task_id, tasks_t.c.gross).where(
                    tasks_t.c.escrow_id == escrow_id
                )
            )
            return {r.task_id: r.gross for r in rows}

    def payouts(self, escrow_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(payouts_t.select().where(payouts_t.c.escrow_id == escrow_id))
            return [dict(r._mapping) for r in rows]

    def revenue_by_role(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(payouts_t.c.role, sa.func.sum(payouts_t.c.amount))
                .where(payouts_t.c.state.in_(("paid", "posted")))
                .group_by(payouts_t.c.role)
            )
            return {r[0]: int(r[1] or 0) for r in rows}
