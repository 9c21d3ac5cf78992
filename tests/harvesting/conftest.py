from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fogcoord.clock import FakeClock
from tests.harvesting.support import Harness, harvesting


@pytest.fixture
async def h(tmp_path: Path, fake_clock: FakeClock) -> AsyncIterator[Harness]:
    """A started service with the default configuration over ``tmp_path/h.db``."""
    async with harvesting(tmp_path / "h.db", clock=fake_clock) as harness:
        yield harness
