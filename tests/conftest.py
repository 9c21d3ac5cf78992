from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from fogcoord.clock import FakeClock
from fogcoord.storage.engine import create_engine, drop_schema
from tests.services import NATS_URL, PG_URL, need, unique


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def nats_url() -> str:
    need("NATS", "127.0.0.1", 4222)
    return NATS_URL


@pytest.fixture
def pg_url() -> str:
    need("PostgreSQL", "127.0.0.1", 5432)
    return PG_URL


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def backend_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on every storage backend in turn: what store contract suites run against.

    PostgreSQL gets a schema of its own, dropped afterwards (the server keeps state).
    """
    if request.param == "sqlite":
        eng = create_engine(f"sqlite:///{tmp_path / 'store.db'}")
        try:
            yield eng
        finally:
            eng.dispose()
        return
    pg: str = request.getfixturevalue("pg_url")
    schema = unique("store_test")
    eng = create_engine(pg, schema=schema)
    try:
        yield eng
    finally:
        eng.dispose()
        drop_schema(pg, schema)
