from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from tests.jobs.support import JobHarness

MakeHarness = Callable[..., AbstractAsyncContextManager[JobHarness]]


@pytest.fixture
def harness(tmp_path: Path) -> MakeHarness:
    """``async with harness(jobs={...}) as h``: a started coordinator with its job settings."""

    @asynccontextmanager
    async def make(jobs: dict[str, object] | None = None) -> AsyncIterator[JobHarness]:
        h = JobHarness(tmp_path / "data", jobs)
        await h.start()
        try:
            yield h
        finally:
            await h.close()

    return make
