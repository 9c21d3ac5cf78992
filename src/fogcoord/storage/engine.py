"""Database engines for SQLite (embedded default) and PostgreSQL (distributed).

SQLite runs in WAL mode with ``synchronous=FULL``: a commit is on disk before it is acknowledged,
and readers do not block the single writer. PostgreSQL may be given a schema (tests use one per
run); it is created if missing and set as the connection's ``search_path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def create_engine(url: str, *, schema: str | None = None, synchronous: str = "FULL") -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_pre_ping=False,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        connect_args: dict[str, Any] = {}
        if schema:
            setup = sa.create_engine(parsed)
            try:
                with setup.begin() as conn:
                    conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            finally:
                setup.dispose()
            # Set at connection start-up, so every pooled connection sees only this schema.
            connect_args["options"] = f"-csearch_path={schema}"
        return sa.create_engine(
            parsed,
            pool_size=10,
            max_overflow=20,
            pool_pre_ping=True,
            connect_args=connect_args,
        )
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:// or postgresql://")


def drop_schema(url: str, schema: str) -> None:
    """Remove a PostgreSQL schema and everything in it (test clean-up)."""
    engine = sa.create_engine(make_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()
