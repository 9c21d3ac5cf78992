"""Injected time.

Every component that needs time takes a :class:`Clock`, so tests drive time with
:class:`FakeClock` instead of sleeping. ``monotonic()`` is for durations and timeouts;
``time()`` is wall-clock seconds since the epoch for timestamps people read.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time as _time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[None]:
        """Like ``asyncio.timeout``: raises ``TimeoutError`` when ``seconds`` pass on this clock."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return _time.monotonic()

    def time(self) -> float:
        return _time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[None]:
        return _loop_timeout(seconds)


@asynccontextmanager
async def _loop_timeout(seconds: float | None) -> AsyncIterator[None]:
    async with asyncio.timeout(seconds):
        yield


class FakeClock:
    """A clock that only moves when told to.

    ``sleep`` parks the caller until :meth:`advance` moves time past its deadline, so code with
    timers (health loops, expiries, back-offs) can be tested deterministically and instantly.
    """

    def __init__(self, start: float = 1_000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._timers: list[tuple[float, int, asyncio.Timeout]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[None]:
        return self._timeout(seconds)

    @asynccontextmanager
    async def _timeout(self, seconds: float | None) -> AsyncIterator[None]:
        # An asyncio.Timeout with no deadline, expired by advance(): asyncio then does the
        # cancellation-to-TimeoutError conversion exactly as it does for real deadlines.
        async with asyncio.timeout(None) as tm:
            if seconds is not None:
                entry = (self._now + seconds, next(self._seq), tm)
                heapq.heappush(self._timers, entry)
            try:
                yield
            finally:
                if seconds is not None:
                    self._timers.remove(entry)
                    heapq.heapify(self._timers)

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
        loop_now = None
        for deadline, _, tm in self._timers:
            if deadline <= self._now and not tm.expired():
                loop_now = loop_now or asyncio.get_running_loop().time()
                tm.reschedule(loop_now)

    async def advance_and_settle(self, seconds: float, rounds: int = 5) -> None:
        """Advance, then yield to the loop a few times so woken tasks run."""
        self.advance(seconds)
        for _ in range(rounds):
            await asyncio.sleep(0)
