"""The injected clocks: FakeClock moves only when told to; SystemClock is the real one."""

from __future__ import annotations

import asyncio
import time

import pytest

from fogcoord.clock import Clock, FakeClock, SystemClock


async def settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


# --- FakeClock --------------------------------------------------------------------------------


def test_fake_clock_starts_where_told_and_wall_time_is_offset() -> None:
    clock = FakeClock(start=50.0, wall_offset=1_000.0)
    assert clock.monotonic() == 50.0
    assert clock.time() == 1_050.0
    assert isinstance(clock, Clock)


async def test_advance_moves_both_clocks(fake_clock: FakeClock) -> None:
    mono, wall = fake_clock.monotonic(), fake_clock.time()
    fake_clock.advance(2.5)
    assert fake_clock.monotonic() == mono + 2.5
    assert fake_clock.time() == wall + 2.5


def test_advance_rejects_negative(fake_clock: FakeClock) -> None:
    before = fake_clock.monotonic()
    with pytest.raises(ValueError, match="backwards"):
        fake_clock.advance(-0.001)
    assert fake_clock.monotonic() == before


def test_advance_by_zero_is_allowed(fake_clock: FakeClock) -> None:
    before = fake_clock.monotonic()
    fake_clock.advance(0)
    assert fake_clock.monotonic() == before


async def test_sleep_wakes_only_when_advanced_past_deadline(fake_clock: FakeClock) -> None:
    task = asyncio.create_task(fake_clock.sleep(10))
    await settle()
    assert not task.done()
    assert fake_clock.sleepers == 1

    await fake_clock.advance_and_settle(9.999)
    assert not task.done()
    assert fake_clock.sleepers == 1

    await fake_clock.advance_and_settle(0.001)
    assert task.done()
    assert fake_clock.sleepers == 0
    await task


async def test_sleep_does_not_wait_for_real_time(fake_clock: FakeClock) -> None:
    task = asyncio.create_task(fake_clock.sleep(3600))
    await settle()
    started = time.perf_counter()
    await fake_clock.advance_and_settle(3600)
    await task
    assert time.perf_counter() - started < 1.0


async def test_sleep_of_zero_or_less_returns_without_advance(fake_clock: FakeClock) -> None:
    await asyncio.wait_for(fake_clock.sleep(0), timeout=1)
    await asyncio.wait_for(fake_clock.sleep(-5), timeout=1)
    assert fake_clock.sleepers == 0


async def test_sleepers_wake_in_deadline_order(fake_clock: FakeClock) -> None:
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await fake_clock.sleep(seconds)
        woke.append(name)

    tasks = [
        asyncio.create_task(sleeper("late", 5)),
        asyncio.create_task(sleeper("early", 1)),
        asyncio.create_task(sleeper("middle", 3)),
        asyncio.create_task(sleeper("middle-second", 3)),
    ]
    await settle()
    assert fake_clock.sleepers == 4

    await fake_clock.advance_and_settle(2)
    assert woke == ["early"]

    await fake_clock.advance_and_settle(10)
    assert woke == ["early", "middle", "middle-second", "late"]
    await asyncio.gather(*tasks)


async def test_one_advance_wakes_every_due_sleeper_in_order(fake_clock: FakeClock) -> None:
    woke: list[float] = []

    async def sleeper(seconds: float) -> None:
        await fake_clock.sleep(seconds)
        woke.append(seconds)

    tasks = [asyncio.create_task(sleeper(s)) for s in (4.0, 2.0, 8.0, 1.0)]
    await settle()
    await fake_clock.advance_and_settle(5)
    assert woke == [1.0, 2.0, 4.0]
    assert fake_clock.sleepers == 1
    await fake_clock.advance_and_settle(3)
    assert woke == [1.0, 2.0, 4.0, 8.0]
    await asyncio.gather(*tasks)


async def test_cancelled_sleeper_is_not_counted(fake_clock: FakeClock) -> None:
    task = asyncio.create_task(fake_clock.sleep(10))
    await settle()
    assert fake_clock.sleepers == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert fake_clock.sleepers == 0
    fake_clock.advance(20)  # waking a cancelled sleeper is harmless


async def test_timeout_raises_only_after_advance(fake_clock: FakeClock) -> None:
    never = asyncio.Event()
    outcome: list[str] = []

    async def guarded() -> None:
        try:
            async with fake_clock.timeout(5):
                await never.wait()
        except TimeoutError:
            outcome.append("timeout")

    task = asyncio.create_task(guarded())
    await settle()
    assert not task.done()

    await fake_clock.advance_and_settle(4.9)
    assert not task.done()
    assert outcome == []

    await fake_clock.advance_and_settle(0.1)
    assert task.done()
    assert outcome == ["timeout"]
    await task


async def test_timeout_not_reached_lets_body_finish(fake_clock: FakeClock) -> None:
    release = asyncio.Event()

    async def guarded() -> str:
        async with fake_clock.timeout(5):
            await release.wait()
        return "done"

    task = asyncio.create_task(guarded())
    await settle()
    await fake_clock.advance_and_settle(4)
    release.set()
    assert await task == "done"
    assert fake_clock._timers == []
    # Advancing past the old deadline afterwards does nothing to the finished task.
    await fake_clock.advance_and_settle(10)


async def test_finished_timeout_context_leaves_no_timer(fake_clock: FakeClock) -> None:
    async with fake_clock.timeout(5):
        await asyncio.sleep(0)
    assert fake_clock._timers == []

    with pytest.raises(RuntimeError, match="boom"):
        async with fake_clock.timeout(5):
            raise RuntimeError("boom")
    assert fake_clock._timers == []

    async def expires() -> None:
        async with fake_clock.timeout(1):
            await asyncio.Event().wait()

    task = asyncio.create_task(expires())
    await settle()
    assert len(fake_clock._timers) == 1
    await fake_clock.advance_and_settle(1)
    with pytest.raises(TimeoutError):
        await task
    assert fake_clock._timers == []


async def test_timeout_none_never_expires(fake_clock: FakeClock) -> None:
    release = asyncio.Event()

    async def guarded() -> None:
        async with fake_clock.timeout(None):
            await release.wait()

    task = asyncio.create_task(guarded())
    await settle()
    assert fake_clock._timers == []
    await fake_clock.advance_and_settle(1_000_000)
    assert not task.done()
    release.set()
    await task


async def test_nested_timeouts_expire_independently(fake_clock: FakeClock) -> None:
    hit: list[str] = []

    async def guarded() -> None:
        async with fake_clock.timeout(10):
            try:
                async with fake_clock.timeout(2):
                    await asyncio.Event().wait()
            except TimeoutError:
                hit.append("inner")
            await asyncio.Event().wait()

    task = asyncio.create_task(guarded())
    await settle()
    await fake_clock.advance_and_settle(2)
    assert hit == ["inner"]
    assert not task.done()
    await fake_clock.advance_and_settle(8)
    with pytest.raises(TimeoutError):
        await task
    assert fake_clock._timers == []


async def test_cancelling_a_task_inside_timeout_is_cancellation_not_timeout(
    fake_clock: FakeClock,
) -> None:
    async def guarded() -> None:
        async with fake_clock.timeout(5):
            await asyncio.Event().wait()

    task = asyncio.create_task(guarded())
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake_clock._timers == []


# --- SystemClock ------------------------------------------------------------------------------


def test_system_clock_reads_real_time() -> None:
    clock = SystemClock()
    assert isinstance(clock, Clock)
    assert abs(clock.time() - time.time()) < 1.0
    first = clock.monotonic()
    second = clock.monotonic()
    assert second >= first


async def test_system_clock_sleep_takes_real_time() -> None:
    clock = SystemClock()
    started = clock.monotonic()
    await clock.sleep(0.002)
    assert clock.monotonic() - started >= 0.0015


async def test_system_clock_sleep_negative_returns_at_once() -> None:
    clock = SystemClock()
    await asyncio.wait_for(clock.sleep(-1), timeout=1)


async def test_system_clock_timeout_expires() -> None:
    clock = SystemClock()
    with pytest.raises(TimeoutError):
        async with clock.timeout(0.003):
            await asyncio.Event().wait()


async def test_system_clock_timeout_not_reached() -> None:
    clock = SystemClock()
    async with clock.timeout(1.0):
        await asyncio.sleep(0)
    async with clock.timeout(None):
        await asyncio.sleep(0)
