"""Job persistence on SQLite or PostgreSQL: jobs, tasks, replicas and content-addressed blobs.

Job transitions are written at once. Task and replica progress is written behind in batches (one
transaction per flush): a crash loses at most the last flush interval of returned replicas, which
are then simply run again; a verified task is always flushed before it is paid, so money never
depends on state that could be lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

metadata = sa.MetaData()

jobs_t = sa.Table(
    "jobs_jobs",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("requester", sa.String(96), nullable=False),
    sa.Column("wallet", sa.String(96), nullable=False),
    sa.Column("module_hash", sa.String(64), nullable=False),
    sa.Column("entry", sa.String(100), nullable=False),
    sa.Column("fuel_limit", sa.BigInteger, nullable=False),
    sa.Column("memory_bytes", sa.BigInteger, nullable=False),
    sa.Column("replication", sa.Integer, nullable=False),
    sa.Column("max_price", sa.String(40), nullable=False),
    sa.Column("slots", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("deadline_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("auction_id", sa.String(64), nullable=True),
    sa.Column("pool", sa.Text, nullable=False, default="[]"),
    sa.Column("cheaters", sa.Text, nullable=False, default="[]"),
    sa.Column("tasks_total", sa.Integer, nullable=False),
    sa.Column("state_times", sa.Text, nullable=False, default="{}"),
    sa.Index("ix_jobs_jobs_state", "state"),
    sa.Index("ix_jobs_jobs_requester", "requester"),
)

tasks_t = sa.Table(
    "jobs_tasks",
    metadata,
    sa.Column("task_id", sa.String(128), primary_key=True),
    sa.Column("job_id", sa.String(64), nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("input_hash", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=True),
    sa.Column("fuel", sa.BigInteger, nullable=True),
    sa.Column("output_hash", sa.String(64), nullable=True),
    sa.Column("provider", sa.String(96), nullable=True),
    sa.Column("validators", sa.Text, nullable=False, default="[]"),
    sa.Column("pay_key", sa.String(160), nullable=True),
    sa.Column("paid", sa.Boolean, nullable=False, default=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Index("ix_jobs_tasks_job", "job_id"),
)

replicas_t = sa.Table(
    "jobs_replicas",
    metadata,
    sa.Column("replica_id", sa.String(160), primary_key=True),
    sa.Column("task_id", sa.String(128), nullable=False),
    sa.Column("job_id", sa.String(64), nullable=False),
    sa.Column("device", sa.String(96), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("audit", sa.Boolean, nullable=False),
    sa.Column("outcome", sa.String(32), nullable=True),
    sa.Column("fuel", sa.BigInteger, nullable=True),
    sa.Column("output_hash", sa.String(64), nullable=True),
    sa.Column("assigned_at", sa.Float, nullable=False),
    sa.Index("ix_jobs_replicas_job", "job_id"),
)

blobs_t = sa.Table(
    "jobs_blobs",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

TASK_FIELDS = (
    "state",
    "outcome",
    "fuel",
    "output_hash",
    "provider",
    "validators",
    "pay_key",
    "paid",
    "reason",
)
REPLICA_FIELDS = ("state", "outcome", "fuel", "output_hash")


class SqlJobStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)

    def _upsert_ignore(self, table: sa.Table) -> Any:
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        return insert(table).on_conflict_do_nothing()

    def put_blobs(self, blobs: dict[str, bytes]) -> None:
        if not blobs:
            return
        with self.engine.begin() as conn:
            conn.execute(
                self._upsert_ignore(blobs_t), [{"sha256": k, "data": v} for k, v in blobs.items()]
            )

    def blob(self, sha256: str) -> bytes | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(blobs_t.c.data).where(blobs_t.c.sha256 == sha256)).first()
            return bytes(row[0]) if row is not None else None

    def blobs(self, hashes: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(hashes), 500):
                part = list(hashes[i : i + 500])
                rows = conn.execute(
                    sa.select(blobs_t.c.sha256, blobs_t.c.data).where(blobs_t.c.sha256.in_(part))
                )
                out.update({r.sha256: bytes(r.data) for r in rows})
        return out

    def create_job(self, job: dict[str, Any], tasks: Sequence[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(jobs_t.insert().values(**job))
            conn.execute(tasks_t.insert(), list(tasks))

    def update_job(self, job_id: str, **fields: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(jobs_t.update().where(jobs_t.c.job_id == job_id).values(**fields))

    def flush(
        self,
        tasks: Iterable[dict[str, Any]],
        new_replicas: Iterable[dict[str, Any]],
        replicas: Iterable[dict[str, Any]],
    ) -> None:
        """One transaction: task updates, new replicas, replica updates."""
        task_rows, new_rows, replica_rows = list(tasks), list(new_replicas), list(replicas)
        if not (task_rows or new_rows or replica_rows):
            return
        with self.engine.begin() as conn:
            if new_rows:
                conn.execute(replicas_t.insert(), new_rows)
            if task_rows:
                conn.execute(
                    tasks_t.update()
                    .where(tasks_t.c.task_id == sa.bindparam("b_task_id"))
                    .values({f: sa.bindparam(f"b_{f}") for f in TASK_FIELDS}),
                    [{f"b_{k}": v for k, v in row.items()} for row in task_rows],
                )
            if replica_rows:
                conn.execute(
                    replicas_t.update()
                    .where(replicas_t.c.replica_id == sa.bindparam("b_replica_id"))
                    .values({f: sa.bindparam(f"b_{f}") for f in REPLICA_FIELDS}),
                    [{f"b_{k}": v for k, v in row.items()} for row in replica_rows],
                )

    def jobs(self, states: Sequence[str] | None = None) -> list[dict[str, Any]]:
        q = jobs_t.select()
        if states is not None:
            q = q.where(jobs_t.c.state.in_(list(states)))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(jobs_t.c.created_at))]

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(jobs_t.select().where(jobs_t.c.job_id == job_id)).first()
            return dict(row._mapping) if row is not None else None

    def tasks(self, job_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                tasks_t.select().where(tasks_t.c.job_id == job_id).order_by(tasks_t.c.idx)
            )
            return [dict(r._mapping) for r in rows]

    def replicas(self, job_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(replicas_t.select().where(replicas_t.c.job_id == job_id))
            return [dict(r._mapping) for r in rows]
