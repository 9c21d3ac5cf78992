"""In-process bus behaviour that needs a controlled clock or a look inside the queues."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import ClassVar

import pytest

from fogcoord.clock import FakeClock
from fogcoord.contracts.errors import BusClosed
from fogcoord.contracts.events import ServiceEvent
from fogcoord.orchestration.bus import InProcessEventBus
from fogcoord.orchestration.bus.dedup import DEFAULT_WINDOW_S


class InprocTestPing(ServiceEvent):
    n: int = 0


class InprocTestPayment(ServiceEvent):
    durable: ClassVar[bool] = True

    n: int = 0
    amount: Decimal = Decimal("1")


class InprocTestRefund(ServiceEvent):
    durable: ClassVar[bool] = True

    n: int = 0


async def until(predicate: Callable[[], bool], rounds: int = 200) -> None:
    """Yield to the loop until ``predicate`` holds; fail after ``rounds`` turns (no sleeping)."""
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


class Gate:
    """A handler that records each event, then blocks until opened."""

    def __init__(self) -> None:
        self.events: list[ServiceEvent] = []
        self.opened = asyncio.Event()

    async def __call__(self, event: ServiceEvent) -> None:
        self.events.append(event)
        await self.opened.wait()

    def numbers(self) -> list[int]:
        return [int(getattr(e, "n", -1)) for e in self.events]


class Recorder:
    def __init__(self) -> None:
        self.events: list[ServiceEvent] = []

    async def __call__(self, event: ServiceEvent) -> None:
        self.events.append(event)

    def numbers(self) -> list[int]:
        return [int(getattr(e, "n", -1)) for e in self.events]


@pytest.fixture
async def make_bus(fake_clock: FakeClock) -> Callable[..., InProcessEventBus]:
    def factory(
        *,
        max_queue_size: int = 1000,
        retry_backoff_ms: float = 125,
        max_delivery_attempts: int = 3,
    ) -> InProcessEventBus:
        return InProcessEventBus(
            max_queue_size=max_queue_size,
            retry_backoff_ms=retry_backoff_ms,
            max_delivery_attempts=max_delivery_attempts,
            clock=fake_clock,
        )

    return factory


# --- back-pressure --------------------------------------------------------------------------


async def test_full_queue_makes_the_publisher_wait(
    make_bus: Callable[..., InProcessEventBus],
) -> None:
    bus = make_bus(max_queue_size=2)
    gate = Gate()
    sub = await bus.subscribe(InprocTestPing, gate, name="slow")

    await bus.broadcast(InprocTestPing(n=0))
    await until(lambda: len(gate.events) == 1)  # the worker holds event 0 in the handler
    await bus.broadcast(InprocTestPing(n=1))
    await bus.broadcast(InprocTestPing(n=2))
    assert len(sub.queue) == 2
    assert sub.queue.full
    assert sub.queue.offer(InprocTestPing(n=99)) is False  # offer never waits

    third = asyncio.create_task(bus.broadcast(InprocTestPing(n=3)))
    await settle()
    assert not third.done()  # back-pressure: it waits for space

    gate.opened.set()
    await asyncio.wait_for(third, 1)
    assert await bus.drain(1)
    assert gate.numbers() == [0, 1, 2, 3]  # the refused offer was never enqueued
    await bus.close()


async def test_unsubscribe_releases_a_publisher_waiting_for_space(
    make_bus: Callable[..., InProcessEventBus],
) -> None:
    bus = make_bus(max_queue_size=1)
    gate = Gate()
    sub = await bus.subscribe(InprocTestPing, gate, name="slow")
    await bus.broadcast(InprocTestPing(n=0))
    await until(lambda: len(gate.events) == 1)
    await bus.broadcast(InprocTestPing(n=1))
    blocked = asyncio.create_task(bus.broadcast(InprocTestPing(n=2)))
    await settle()
    assert not blocked.done()

    await sub.unsubscribe()
    await asyncio.wait_for(blocked, 1)  # returns instead of raising CancelledError
    assert blocked.exception() is None
    assert await bus.drain(1)
    await bus.close()


# --- retries and dead letters ---------------------------------------------------------------


async def test_dead_letter_after_max_attempts_with_exponential_backoff(
    make_bus: Callable[..., InProcessEventBus], fake_clock: FakeClock
) -> None:
    bus = make_bus(retry_backoff_ms=125, max_delivery_attempts=3)
    calls: list[float] = []

    async def broken(event: ServiceEvent) -> None:
        calls.append(fake_clock.monotonic())
        raise ValueError("no such account")

    await bus.subscribe(InprocTestPing, broken, name="broken")
    event = InprocTestPing(n=1)
    start = fake_clock.monotonic()
    await bus.broadcast(event)

    await until(lambda: fake_clock.sleepers == 1)
    assert calls == [start]
    await fake_clock.advance_and_settle(0.0625)  # half of the first back-off (0.125 s)
    assert calls == [start]
    await fake_clock.advance_and_settle(0.0625)
    await until(lambda: len(calls) == 2 and fake_clock.sleepers == 1)
    await fake_clock.advance_and_settle(0.125)  # half of the second back-off (0.25 s)
    assert len(calls) == 2
    assert bus.dead_letters() == []
    await fake_clock.advance_and_settle(0.125)
    await until(lambda: len(bus.dead_letters()) == 1)

    assert calls == [start, start + 0.125, start + 0.375]
    (dead,) = bus.dead_letters()
    assert (dead.subscriber, dead.event, dead.attempts) == ("broken", event, 3)
    assert dead.error == "ValueError: no such account"
    assert dead.at == fake_clock.time()
    assert fake_clock.sleepers == 0  # no fourth attempt is scheduled
    assert await bus.drain(1)
    (stats,) = bus.stats().subscribers
    assert (stats.delivered, stats.failed_attempts, stats.dead_lettered) == (0, 3, 1)
    assert bus.stats().dead_letters == 1
    await bus.close()


async def test_retry_does_not_block_other_subscribers(
    make_bus: Callable[..., InProcessEventBus], fake_clock: FakeClock
) -> None:
    bus = make_bus(retry_backoff_ms=1000)

    async def broken(event: ServiceEvent) -> None:
        raise RuntimeError("down")

    other = Recorder()
    await bus.subscribe(InprocTestPing, broken, name="broken")
    await bus.subscribe(InprocTestPing, other, name="other")
    await bus.broadcast(InprocTestPing(n=1))
    await until(lambda: fake_clock.sleepers == 1 and len(other.events) == 1)
    await bus.close()


# --- routing --------------------------------------------------------------------------------


async def test_route_round_robins_over_the_group(
    make_bus: Callable[..., InProcessEventBus],
) -> None:
    bus = make_bus()
    members = [Recorder() for _ in range(3)]
    for i, member in enumerate(members):
        await bus.subscribe(InprocTestPing, member, name=f"m{i}", group="svc")
    for n in range(6):
        await bus.route(InprocTestPing(n=n, target="svc"))
    assert await bus.drain(1)
    assert [m.numbers() for m in members] == [[0, 3], [1, 4], [2, 5]]
    await bus.close()


async def test_route_skips_a_member_whose_queue_is_full(
    make_bus: Callable[..., InProcessEventBus],
) -> None:
    bus = make_bus(max_queue_size=1)
    slow, fast = Gate(), Recorder()
    slow_sub = await bus.subscribe(InprocTestPing, slow, name="slow", group="svc")
    await bus.subscribe(InprocTestPing, fast, name="fast", group="svc")

    await bus.route(InprocTestPing(n=0, target="svc"))  # slow; its handler holds it
    await until(lambda: len(slow.events) == 1)
    await bus.route(InprocTestPing(n=1, target="svc"))  # fast
    await until(lambda: len(fast.events) == 1)
    await bus.route(InprocTestPing(n=2, target="svc"))  # slow's turn: queued, now full
    assert slow_sub.queue.full
    await bus.route(InprocTestPing(n=3, target="svc"))  # fast's turn
    await until(lambda: len(fast.events) == 2)
    await bus.route(InprocTestPing(n=4, target="svc"))  # slow's turn, but full: fast takes it
    await until(lambda: len(fast.events) == 3)

    assert fast.numbers() == [1, 3, 4]
    assert slow.numbers() == [0]
    slow.opened.set()
    assert await bus.drain(1)
    assert slow.numbers() == [0, 2]
    await bus.close()


async def test_route_waits_when_every_member_is_full(
    make_bus: Callable[..., InProcessEventBus],
) -> None:
    bus = make_bus(max_queue_size=1)
    gates = [Gate(), Gate()]
    for i, gate in enumerate(gates):
        await bus.subscribe(InprocTestPing, gate, name=f"m{i}", group="svc")
    for n in range(2):
        await bus.route(InprocTestPing(n=n, target="svc"))
    await until(lambda: all(len(g.events) == 1 for g in gates))
    for n in range(2, 4):
        await bus.route(InprocTestPing(n=n, target="svc"))  # both queues now full

    fifth = asyncio.create_task(bus.route(InprocTestPing(n=4, target="svc")))
    await settle()
    assert not fifth.done()
    for gate in gates:
        gate.opened.set()
    await asyncio.wait_for(fifth, 1)
    assert await bus.drain(1)
    assert sorted(n for g in gates for n in g.numbers()) == [0, 1, 2, 3, 4]
    await bus.close()


async def test_plain_route_to_an_empty_group_is_dropped_and_counted(
    make_bus: Callable[..., InProcessEventBus],
) -> None:
    bus = make_bus()
    bystander = Recorder()
    await bus.subscribe(InprocTestPing, bystander, name="bystander")  # no group: no routes
    await bus.route(InprocTestPing(n=1, target="nobody"))
    await bus.subscribe(InprocTestPing, bystander, name="late", group="nobody")
    assert await bus.drain(1)
    assert bystander.events == []  # not parked either
    assert bus.unroutable == 1
    assert bus.stats().routed == 1
    await bus.close()


async def test_durable_route_to_an_empty_group_waits_for_the_first_member(
    make_bus: Callable[..., InProcessEventBus],
) -> None:
    bus = make_bus()
    bystander = Recorder()
    await bus.subscribe(InprocTestPayment, bystander, name="bystander")
    for n in range(3):
        await bus.route(InprocTestPayment(n=n, target="ledger"))
    await bus.route(InprocTestRefund(n=10, target="ledger"))
    await bus.route(InprocTestPayment(n=3, target="ledger"))
    assert await bus.drain(1)
    assert bystander.events == []
    assert bus.unroutable == 0

    first = Recorder()
    await bus.subscribe(InprocTestPayment, first, name="ledger-0", group="ledger")
    assert await bus.drain(1)
    assert first.numbers() == [0, 1, 2, 3]  # in publish order; the refund stays parked

    anything = Recorder()
    await bus.subscribe(ServiceEvent, anything, name="ledger-any", group="ledger")
    assert await bus.drain(1)
    assert anything.numbers() == [10]

    second = Recorder()
    await bus.subscribe(InprocTestPayment, second, name="ledger-1", group="ledger")
    await bus.route(InprocTestPayment(n=4, target="ledger"))
    await bus.route(InprocTestPayment(n=5, target="ledger"))
    assert await bus.drain(1)
    assert first.numbers() == [0, 1, 2, 3, 4]  # then the two members take turns
    assert second.numbers() == [5]
    await bus.close()


async def test_route_without_target_raises(make_bus: Callable[..., InProcessEventBus]) -> None:
    bus = make_bus()
    with pytest.raises(ValueError, match="target"):
        await bus.route(InprocTestPing(n=1))
    assert bus.stats().routed == 0
    await bus.close()


# --- de-duplication -------------------------------------------------------------------------


async def test_durable_duplicates_are_dropped_inside_the_window_only(
    make_bus: Callable[..., InProcessEventBus], fake_clock: FakeClock
) -> None:
    bus = make_bus()
    got = Recorder()
    await bus.subscribe(InprocTestPayment, got, name="ledger")
    payment = InprocTestPayment(n=1)

    await bus.broadcast(payment)
    await bus.broadcast(payment)
    fake_clock.advance(DEFAULT_WINDOW_S - 1)
    await bus.broadcast(payment)
    assert await bus.drain(1)
    assert len(got.events) == 1

    fake_clock.advance(1)  # the first sighting has left the window
    await bus.broadcast(payment)
    assert await bus.drain(1)
    assert len(got.events) == 2
    assert bus.stats().duplicates_dropped == 2
    await bus.close()


async def test_a_bare_service_event_reaches_a_wildcard_subscriber_once(
    make_bus: Callable[..., InProcessEventBus],
) -> None:
    bus = make_bus()
    got = Recorder()
    await bus.subscribe(ServiceEvent, got, name="audit")
    event = ServiceEvent(source="test")
    await bus.broadcast(event)
    assert await bus.drain(1)
    assert got.events == [event]
    await bus.close()


# --- closing and draining -------------------------------------------------------------------


async def test_closed_bus_raises_bus_closed(make_bus: Callable[..., InProcessEventBus]) -> None:
    bus = make_bus()
    got = Recorder()
    await bus.subscribe(InprocTestPing, got, name="pings")
    await bus.close()
    with pytest.raises(BusClosed):
        await bus.broadcast(InprocTestPing(n=1))
    with pytest.raises(BusClosed):
        await bus.route(InprocTestPing(n=1, target="svc"))
    with pytest.raises(BusClosed):
        await bus.subscribe(InprocTestPing, got, name="late")
    assert got.events == []
    assert bus.stats().subscribers == ()


async def test_drain_returns_false_on_timeout(make_bus: Callable[..., InProcessEventBus]) -> None:
    bus = make_bus()
    gate = Gate()
    await bus.subscribe(InprocTestPing, gate, name="slow")
    await bus.broadcast(InprocTestPing(n=1))
    await bus.broadcast(InprocTestPing(n=2))
    assert await bus.drain(0.01) is False
    assert await bus.drain(0) is False
    gate.opened.set()
    assert await bus.drain(1) is True
    assert gate.numbers() == [1, 2]
    await bus.close()
