from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fogcoord.clock import FakeClock
from tests.marketplace.support import Market, market


@pytest.fixture
async def m(tmp_path: Path, fake_clock: FakeClock) -> AsyncIterator[Market]:
    """Tokenomics, harvesting and marketplace over ``tmp_path/m.db``; the ledger must verify."""
    async with market(tmp_path / "m.db", clock=fake_clock) as harness:
        yield harness
        harness.verify()
