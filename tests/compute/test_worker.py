"""Worker processes: results equal in-process runs, timeouts kill, crashes recover."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from fogcoord.compute import Sandbox, TaskTimeout, WorkerCrashed, WorkerPool
from fogcoord.compute.examples import load_example, mandelbrot_tile_input, primes_input
from fogcoord.contracts.compute import ExecutionOutcome, SandboxLimits

LIMITS = SandboxLimits(fuel=10**9)
RANGE = primes_input(1_000_000, 1_020_000)
SPIN = b'(module (func (export "_start") (loop br 0)))'
ENDLESS = SandboxLimits(fuel=10**15)


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    workers = WorkerPool(1, timeout_s=20)
    yield workers
    workers.close()


async def test_results_equal_an_in_process_run(pool: WorkerPool) -> None:
    local = Sandbox()
    for name, data in (
        ("primes", RANGE),
        ("mandelbrot", mandelbrot_tile_input(-2.0, -1.5, 1.0, 1.5, 256, 256, 128, 96, 96, 32, 32)),
    ):
        receipt, output = await pool.run(load_example(name), data, LIMITS, f"task-{name}")
        expected, expected_output = local.execute(
            load_example(name), data, LIMITS, task_id=f"task-{name}"
        )
        assert receipt == expected
        assert output == expected_output
    assert receipt.outcome == ExecutionOutcome.OK


async def test_failures_come_back_as_receipts(pool: WorkerPool) -> None:
    receipt, output = await pool.run(
        load_example("primes"), RANGE, SandboxLimits(fuel=1000), "starved"
    )
    assert (receipt.outcome, receipt.fuel_used, output) == (ExecutionOutcome.OUT_OF_FUEL, 1000, b"")
    receipt, _ = await pool.run(b"junk", b"", LIMITS, "junk")
    assert receipt.outcome == ExecutionOutcome.MALFORMED_MODULE


async def test_a_module_crosses_the_pipe_once_per_worker(pool: WorkerPool) -> None:
    await pool.run(load_example("primes"), RANGE, LIMITS, "first")
    worker = pool._workers[0]
    sent: list[bool] = []
    original = worker._ask

    def spy(message: tuple[object, ...], deadline: float, timeout_s: float) -> tuple[object, ...]:
        sent.append(message[1] is not None)
        return original(message, deadline, timeout_s)

    worker._ask = spy  # type: ignore[method-assign]
    try:
        for i in range(3):
            receipt, _ = await pool.run(load_example("primes"), RANGE, LIMITS, f"again-{i}")
            assert receipt.outcome == ExecutionOutcome.OK
    finally:
        del worker._ask
    assert sent == [False, False, False]


async def test_timeout_kills_the_worker_and_the_next_task_gets_a_fresh_one(
    pool: WorkerPool,
) -> None:
    await pool.start()
    (before,) = pool.pids
    started = time.monotonic()
    with pytest.raises(TaskTimeout) as caught:
        await pool.run(SPIN, b"", ENDLESS, "spin", timeout_s=0.5)
    assert 0.5 <= time.monotonic() - started < 3
    assert caught.value.code == "task_timeout"
    assert pool.pids == [None]
    receipt, output = await pool.run(load_example("primes"), RANGE, LIMITS, "after")
    assert (receipt.outcome, output) == (ExecutionOutcome.OK, b"1472\n")
    assert pool.pids[0] not in (None, before)
    timed_out = caught.value.receipt("spin", receipt.module_hash, receipt.input_hash)
    assert (timed_out.outcome, timed_out.fuel_used) == (ExecutionOutcome.TIMEOUT, 0)


async def test_a_dead_worker_is_reported_and_replaced(pool: WorkerPool) -> None:
    await pool.start()
    (pid,) = pool.pids
    assert pid is not None

    async def kill_soon() -> None:
        await asyncio.sleep(0.3)
        os.kill(pid, signal.SIGKILL)

    killer = asyncio.create_task(kill_soon())
    with pytest.raises(WorkerCrashed) as caught:
        await pool.run(SPIN, b"", ENDLESS, "doomed")
    await killer
    assert caught.value.exitcode == -signal.SIGKILL
    receipt, _ = await pool.run(load_example("primes"), RANGE, LIMITS, "after")
    assert receipt.outcome == ExecutionOutcome.OK


async def test_the_event_loop_stays_responsive(pool: WorkerPool) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await pool.start()
    started = time.monotonic()
    receipt, _ = await pool.run(SPIN, b"", SandboxLimits(fuel=3 * 10**9), "busy")
    elapsed = time.monotonic() - started
    ticker.cancel()
    assert receipt.outcome == ExecutionOutcome.OUT_OF_FUEL
    assert ticks >= 0.5 * elapsed / 0.01


async def test_workers_run_tasks_in_parallel_and_resend_evicted_modules() -> None:
    async with WorkerPool(2, timeout_s=20, cache_size=1) as workers:
        await workers.start()
        assert len({pid for pid in workers.pids if pid is not None}) == 2
        tasks = [
            workers.run(load_example("primes"), primes_input(0, 1000 * (i + 1)), LIMITS, f"t{i}")
            for i in range(4)
        ]
        results = await asyncio.gather(*tasks)
        assert [out for _, out in results] == [b"168\n", b"303\n", b"430\n", b"550\n"]
        # each worker alternates between two modules with room for one: both are evicted
        # and sent again when the worker says it no longer has them
        missing: list[str] = []
        for worker in workers._workers:
            original = worker._ask

            def spy(
                message: tuple[object, ...],
                deadline: float,
                timeout_s: float,
                original: Callable[..., tuple[object, ...]] = original,
            ) -> tuple[object, ...]:
                reply = original(message, deadline, timeout_s)
                if reply[0] == "missing":
                    missing.append(str(message[0]))
                return reply

            worker._ask = spy  # type: ignore[method-assign]
        for name in ("primes", "primes", "mandelbrot", "mandelbrot", "primes", "primes"):
            data = RANGE if name == "primes" else mandelbrot_input()
            receipt, _ = await workers.run(load_example(name), data, LIMITS, name)
            assert receipt.outcome == ExecutionOutcome.OK
        assert len(missing) == 2
    assert workers.pids == [None, None]
    with pytest.raises(RuntimeError, match="closed"):
        await workers.run(load_example("primes"), RANGE, LIMITS, "late")


def mandelbrot_input() -> bytes:
    return mandelbrot_tile_input(-2.0, -1.5, 1.0, 1.5, 64, 64, 32, 0, 0, 16, 16)


def test_pool_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        WorkerPool(0)
    with pytest.raises(ValueError):
        WorkerPool(1, timeout_s=0)


async def test_closing_the_pool_ends_a_running_task_at_once() -> None:
    workers = WorkerPool(1, timeout_s=60)
    await workers.start()
    running = asyncio.create_task(workers.run(SPIN, b"", ENDLESS, "forever"))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await asyncio.to_thread(workers.close)
    with pytest.raises(WorkerCrashed):
        await running
    assert time.monotonic() - started < 5
    assert workers.pids == [None]
