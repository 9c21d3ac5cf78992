"""Study persistence: the study, its current model and the record of every round."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

metadata = sa.MetaData()

studies_t = sa.Table(
    "studies",
    metadata,
    sa.Column("study_id", sa.String(64), primary_key=True),
    sa.Column("requester", sa.String(96), nullable=False),
    sa.Column("wallet", sa.String(96), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("rounds_done", sa.Integer, nullable=False, default=0),
    sa.Column("model", sa.LargeBinary, nullable=False),
    sa.Column("held", sa.BigInteger, nullable=False),
    sa.Column("paid", sa.BigInteger, nullable=False, default=0),
    sa.Column("created_at", sa.Float, nullable=False),
)

rounds_t = sa.Table(
    "study_rounds",
    metadata,
    sa.Column("study_id", sa.String(64), primary_key=True),
    sa.Column("round", sa.Integer, primary_key=True),
    sa.Column("record", sa.Text, nullable=False),
)


def pack(model: dict[str, np.ndarray[Any, Any]]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **model)  # type: ignore[arg-type]
    return buf.getvalue()


def unpack(blob: bytes) -> dict[str, np.ndarray[Any, Any]]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


class SqlStudyStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)

    def create(self, row: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(studies_t.insert().values(**row))

    def update(self, study_id: str, **fields: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                studies_t.update().where(studies_t.c.study_id == study_id).values(**fields)
            )

    def finish_round(self, study_id: str, number: int, record: str, **fields: Any) -> None:
        """The round's record and the study's new model and totals, in one transaction."""
        with self.engine.begin() as conn:
            conn.execute(rounds_t.insert().values(study_id=study_id, round=number, record=record))
            conn.execute(
                studies_t.update().where(studies_t.c.study_id == study_id).values(**fields)
            )

    def all(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(studies_t.select().order_by(studies_t.c.created_at))
            return [dict(r._mapping) for r in rows]

    def rounds(self, study_id: str) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(rounds_t.c.record)
                .where(rounds_t.c.study_id == study_id)
                .order_by(rounds_t.c.round)
            )
            return [r[0] for r in rows]
