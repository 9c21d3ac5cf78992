from __future__ import annotations

import pytest

from fogcoord.clock import FakeClock
from tests.services import NATS_URL, PG_URL, need


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
