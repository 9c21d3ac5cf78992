"""Ledger persistence on SQLite or PostgreSQL (SQLAlchemy Core), one transaction per block."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from fogcoord.tokenomics.engine import Known, Loaded
from fogcoord.tokenomics.model import (
    Account,
    AccountKind,
    Batch,
    FailedId,
    PendingInfo,
    PendingState,
    Transfer,
)

metadata = sa.MetaData()
_ID = sa.String(96)

accounts_t = sa.Table(
    "ledger_accounts",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(96), nullable=False),
    sa.Column("flags", sa.Integer, nullable=False),
    sa.Column("reserve", sa.BigInteger, nullable=False),
    sa.Column("funding", _ID, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_block", sa.BigInteger, nullable=False),
    sa.Column("debits_pending", sa.BigInteger, nullable=False),
    sa.Column("debits_posted", sa.BigInteger, nullable=False),
    sa.Column("credits_pending", sa.BigInteger, nullable=False),
    sa.Column("credits_posted", sa.BigInteger, nullable=False),
    sa.Index("ix_ledger_accounts_owner", "owner"),
)

transfers_t = sa.Table(
    "ledger_transfers",
    metadata,
    # seq first as the integer primary key: SQLite stores rows in seq order (appends touch few
    # pages) and needs no separate index for it.
    sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("id", _ID, nullable=False, unique=True),
    sa.Column("debit_account", _ID, nullable=False),
    sa.Column("credit_account", _ID, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("flags", sa.Integer, nullable=False),
    sa.Column("pending_id", _ID, nullable=True),
    sa.Column("timeout", sa.Float, nullable=False),
    sa.Column("memo", sa.String(200), nullable=False),
    sa.Column("timestamp", sa.Float, nullable=False),
    sa.Column("block", sa.BigInteger, nullable=False),
    sa.Index("ix_ledger_transfers_debit", "debit_account", "seq"),
    sa.Index("ix_ledger_transfers_credit", "credit_account", "seq"),
)

pending_t = sa.Table(
    "ledger_pending",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("resolved_by", _ID, nullable=True),
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Column("expired_block", sa.BigInteger, nullable=True),
)

failed_t = sa.Table(
    "ledger_failed",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("code", sa.String(64), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("block", sa.BigInteger, nullable=False),
)

blocks_t = sa.Table(
    "ledger_blocks",
    metadata,
    sa.Column("number", sa.BigInteger, primary_key=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("timestamp", sa.Float, nullable=False),
    sa.Column("transfers", sa.Integer, nullable=False),
    sa.Column("first_seq", sa.BigInteger, nullable=False),
)


@dataclass(frozen=True)
class BlockRow:
    number: int
    prev_hash: str
    hash: str
    timestamp: float
    transfers: int
    first_seq: int


class LedgerStore(Protocol):
    """What the ledger needs from storage; one contract suite checks every backend."""

    def load(self) -> Loaded: ...

    def lookup(self, ids: Sequence[str]) -> dict[str, Known]: ...

    def write(self, batch: Batch) -> None: ...

    def transfer(self, transfer_id: str) -> Transfer | None: ...

    def history(
        self, account_id: str, limit: int, before_seq: int | None = None
    ) -> list[Transfer]: ...

    def pending_for(self, account_id: str) -> list[PendingInfo]: ...

    def accounts(self) -> list[Account]: ...

    def blocks(self) -> Iterator[BlockRow]: ...

    def block_content(self, block: BlockRow) -> tuple[list[Transfer], list[Account], list[str]]: ...

    def all_transfers(self) -> Iterator[Transfer]: ...

    def pending_states(self) -> dict[str, PendingState]: ...


def _transfer(row: Any) -> Transfer:
    return Transfer(
        id=row.id,
        debit_account=row.debit_account,
        credit_account=row.credit_account,
        amount=int(row.amount),
        flags=int(row.flags),
        pending_id=row.pending_id,
        timeout=float(row.timeout),
        memo=row.memo,
        timestamp=float(row.timestamp),
        block=int(row.block),
        seq=int(row.seq),
    )


def _account(row: Any) -> Account:
    return Account(
        id=row.id,
        kind=AccountKind(row.kind),
        owner=row.owner,
        flags=int(row.flags),
        reserve=int(row.reserve),
        funding=row.funding,
        created_at=float(row.created_at),
        debits_pending=int(row.debits_pending),
        debits_posted=int(row.debits_posted),
        credits_pending=int(row.credits_pending),
        credits_posted=int(row.credits_posted),
    )


def _pending(row: Any) -> PendingInfo:
    return PendingInfo(_transfer(row), PendingState(row.state), row.expires_at, row.resolved_by)


class SqlLedgerStore:
    """The ledger on SQLite (WAL, synchronous=FULL via the engine) or PostgreSQL."""

    LOOKUP_CHUNK = 500

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)
        self._pyformat = engine.dialect.name == "postgresql"
        insert = postgresql.insert if self._pyformat else sqlite.insert
        stmt = insert(pending_t)
        self._upsert_pending = stmt.on_conflict_do_update(
            index_elements=[pending_t.c.id],
            set_={
                "state": stmt.excluded.state,
                "resolved_by": stmt.excluded.resolved_by,
                "expired_block": sa.func.coalesce(
                    stmt.excluded.expired_block, pending_t.c.expired_block
                ),
            },
        )
        self._insert_accounts = self._sql(
            "INSERT INTO ledger_accounts (id, kind, owner, flags, reserve, funding, created_at,"
            " created_block, debits_pending, debits_posted, credits_pending, credits_posted)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self._update_accounts = self._sql(
            "UPDATE ledger_accounts SET debits_pending = ?, debits_posted = ?,"
            " credits_pending = ?, credits_posted = ? WHERE id = ?"
        )
        self._insert_transfers = self._sql(
            "INSERT INTO ledger_transfers (id, debit_account, credit_account, amount, flags,"
            " pending_id, timeout, memo, timestamp, block, seq)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self._insert_failed = self._sql(
            "INSERT INTO ledger_failed (id, code, digest, block) VALUES (?, ?, ?, ?)"
        )
        self._insert_block = self._sql(
            "INSERT INTO ledger_blocks (number, prev_hash, hash, timestamp, transfers, first_seq)"
            " VALUES (?, ?, ?, ?, ?, ?)"
        )

    # --- loading ---------------------------------------------------------------------------

    def _pending_query(self) -> sa.Select[Any]:
        return sa.select(
            transfers_t, pending_t.c.state, pending_t.c.resolved_by, pending_t.c.expires_at
        ).join(pending_t, pending_t.c.id == transfers_t.c.id)

    def load(self) -> Loaded:
        out = Loaded()
        with self.engine.connect() as conn:
            out.accounts = [_account(r) for r in conn.execute(accounts_t.select())]
            out.pending = [_pending(r) for r in conn.execute(self._pending_query())]
            head = conn.execute(
                sa.select(blocks_t.c.number, blocks_t.c.hash).order_by(blocks_t.c.number.desc())
            ).first()
            if head is not None:
                out.head_number, out.head_hash = int(head.number), str(head.hash)
            seq = conn.execute(sa.select(sa.func.max(transfers_t.c.seq))).scalar()
            out.next_seq = int(seq or 0) + 1
            for table in (transfers_t, failed_t):
                out.ids.extend(conn.execute(sa.select(table.c.id)).scalars())
        return out

    def lookup(self, ids: Sequence[str]) -> dict[str, Known]:
        found: dict[str, Known] = {}
        if not ids:
            return found
        with self.engine.connect() as conn:
            for i in range(0, len(ids), self.LOOKUP_CHUNK):
                chunk = list(ids[i : i + self.LOOKUP_CHUNK])
                for r in conn.execute(transfers_t.select().where(transfers_t.c.id.in_(chunk))):
                    found[r.id] = _transfer(r)
                for r in conn.execute(failed_t.select().where(failed_t.c.id.in_(chunk))):
                    found[r.id] = FailedId(r.id, r.code, r.digest)
        return found

    # --- the group commit ------------------------------------------------------------------

    def write(self, batch: Batch) -> None:
        with self.engine.begin() as conn:
            self._write(conn, batch)

    def _sql(self, text: str) -> str:
        """Driver-level SQL: ``?`` placeholders become the driver's own style."""
        return text.replace("?", "%s") if self._pyformat else text

    def _write(self, conn: Connection, b: Batch) -> None:
        # Plain DB-API executemany: a block is written on the hot path of every payment, and
        # the ORM-level statement machinery costs several times the commit itself.
        run = conn.exec_driver_sql
        created = {a.id for a in b.accounts_created}
        if created:
            rows = []
            for a in b.accounts_created:
                t = b.accounts_touched[a.id]
                rows.append(
                    (
                        a.id,
                        a.kind.value,
                        a.owner,
                        a.flags,
                        a.reserve,
                        a.funding,
                        a.created_at,
                        b.number,
                        t.debits_pending,
                        t.debits_posted,
                        t.credits_pending,
                        t.credits_posted,
                    )
                )
            run(self._insert_accounts, rows)
        updates = [
            (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted, aid)
            for aid, a in b.accounts_touched.items()
            if aid not in created
        ]
        if updates:
            run(self._update_accounts, updates)
        if b.transfers:
            run(
                self._insert_transfers,
                [
                    (
                        t.id,
                        t.debit_account,
                        t.credit_account,
                        t.amount,
                        t.flags,
                        t.pending_id,
                        t.timeout,
                        t.memo,
                        t.timestamp,
                        t.block,
                        t.seq,
                    )
                    for t in b.transfers
                ],
            )
        if b.pending_changes:
            conn.execute(
                self._upsert_pending,
                [
                    {
                        "id": pid,
                        "state": state.value,
                        "resolved_by": resolved_by,
                        "expires_at": expires_at,
                        "expired_block": b.number if state is PendingState.EXPIRED else None,
                    }
                    for pid, state, resolved_by, expires_at in b.pending_changes
                ],
            )
        if b.failed:
            run(self._insert_failed, [(f.id, f.code, f.digest, b.number) for f in b.failed])
        run(
            self._insert_block,
            (
                b.number,
                b.prev_hash,
                b.hash,
                b.timestamp,
                len(b.transfers),
                b.transfers[0].seq if b.transfers else 0,
            ),
        )

    # --- reading ---------------------------------------------------------------------------

    def transfer(self, transfer_id: str) -> Transfer | None:
        with self.engine.connect() as conn:
            row = conn.execute(transfers_t.select().where(transfers_t.c.id == transfer_id)).first()
        return None if row is None else _transfer(row)

    def history(self, account_id: str, limit: int, before_seq: int | None = None) -> list[Transfer]:
        c = transfers_t.c
        parts = []
        for col in (c.debit_account, c.credit_account):
            q = sa.select(transfers_t).where(col == account_id)
            if before_seq is not None:
                q = q.where(c.seq < before_seq)
            parts.append(q.order_by(c.seq.desc()).limit(limit))
        with self.engine.connect() as conn:
            rows = [r for q in parts for r in conn.execute(q)]
        rows.sort(key=lambda r: r.seq, reverse=True)
        return [_transfer(r) for r in rows[:limit]]

    def pending_for(self, account_id: str) -> list[PendingInfo]:
        q = (
            self._pending_query()
            .where(transfers_t.c.debit_account == account_id)
            .order_by(transfers_t.c.seq.desc())
        )
        with self.engine.connect() as conn:
            return [_pending(r) for r in conn.execute(q)]

    def accounts(self) -> list[Account]:
        with self.engine.connect() as conn:
            return [_account(r) for r in conn.execute(accounts_t.select())]

    def blocks(self) -> Iterator[BlockRow]:
        with self.engine.connect() as conn:
            for r in conn.execute(blocks_t.select().order_by(blocks_t.c.number)):
                yield BlockRow(
                    int(r.number),
                    r.prev_hash,
                    r.hash,
                    float(r.timestamp),
                    int(r.transfers),
                    int(r.first_seq),
                )

    def block_content(self, block: BlockRow) -> tuple[list[Transfer], list[Account], list[str]]:
        c = transfers_t.c
        last = block.first_seq + block.transfers - 1
        with self.engine.connect() as conn:
            transfers = [
                _transfer(r)
                for r in conn.execute(
                    transfers_t.select()
                    .where(c.seq >= block.first_seq, c.seq <= last)
                    .order_by(c.seq)
                )
            ]
            accounts = [
                _account(r)
                for r in conn.execute(
                    accounts_t.select().where(accounts_t.c.created_block == block.number)
                )
            ]
            expired = [
                str(r.id)
                for r in conn.execute(
                    sa.select(pending_t.c.id).where(pending_t.c.expired_block == block.number)
                )
            ]
        return transfers, accounts, expired

    def all_transfers(self) -> Iterator[Transfer]:
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=5000).execute(
                transfers_t.select().order_by(transfers_t.c.seq)
            )
            for r in result:
                yield _transfer(r)

    def pending_states(self) -> dict[str, PendingState]:
        with self.engine.connect() as conn:
            return {
                r.id: PendingState(r.state)
                for r in conn.execute(sa.select(pending_t.c.id, pending_t.c.state))
            }
