"""One contract, every bus: the in-process bus and the NATS bus (JSON and MessagePack).

Each NATS test uses a unique subject prefix (the server keeps state between runs) and deletes
the JetStream stream it created. Delivery is awaited with ``bus.drain`` (bounded), never a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any, ClassVar, Protocol

import pytest
from pydantic import BaseModel, ConfigDict

from fogcoord.contracts.errors import BusClosed
from fogcoord.contracts.events import ServiceEvent
from fogcoord.orchestration.bus import EventBus, InProcessEventBus
from fogcoord.orchestration.bus.nats import NatsEventBus
from tests.services import unique

DRAIN_S = 15.0


class BusTestPing(ServiceEvent):
    n: int = 0


class BusTestPayment(ServiceEvent):
    """Moves money: durable, applied once per event_id."""

    durable: ClassVar[bool] = True

    n: int = 0
    amount: Decimal = Decimal("0")


class BusTestLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    sku: str
    quantity: float
    unit_price: Decimal


class BusTestCustomer(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    tier: int
    lines: tuple[BusTestLine, ...] = ()


class BusTestOrder(ServiceEvent):
    customer: BusTestCustomer
    lines: tuple[BusTestLine, ...]
    total: Decimal
    ratio: float
    note: str
    tags: list[str]
    meta: dict[str, float]
    discount: Decimal | None = None


class BusTestDurableOrder(BusTestOrder):
    durable: ClassVar[bool] = True


KINDS = [
    pytest.param("inprocess", id="inprocess"),
    pytest.param("nats-json", id="nats-json", marks=pytest.mark.nats),
    pytest.param("nats-msgpack", id="nats-msgpack", marks=pytest.mark.nats),
]
EVENT_KINDS = [
    pytest.param(BusTestPing, id="plain"),
    pytest.param(BusTestPayment, id="durable"),
]


class BusFactory(Protocol):
    def __call__(
        self,
        *,
        max_queue_size: int = ...,
        retry_backoff_ms: float = ...,
        max_delivery_attempts: int = ...,
    ) -> Awaitable[EventBus]: ...


class Recorder:
    """A handler that records what it was given."""

    def __init__(self) -> None:
        self.events: list[ServiceEvent] = []

    async def __call__(self, event: ServiceEvent) -> None:
        self.events.append(event)

    @property
    def ids(self) -> list[str]:
        return [e.event_id for e in self.events]

    def numbers(self) -> list[int]:
        return [int(getattr(e, "n", -1)) for e in self.events]


@pytest.fixture(params=KINDS)
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    kind: str = request.param
    url = str(request.getfixturevalue("nats_url")) if kind.startswith("nats") else ""
    made: list[EventBus] = []
    nats_buses: list[NatsEventBus] = []

    async def factory(
        *,
        max_queue_size: int = 1000,
        retry_backoff_ms: float = 1,
        max_delivery_attempts: int = 3,
    ) -> EventBus:
        bus: EventBus
        if kind == "inprocess":
            bus = InProcessEventBus(
                max_queue_size=max_queue_size,
                retry_backoff_ms=retry_backoff_ms,
                max_delivery_attempts=max_delivery_attempts,
            )
        else:
            nats_bus = NatsEventBus(
                url=url,
                subject_prefix=unique("t"),
                encoding=kind.removeprefix("nats-"),
                max_queue_size=max_queue_size,
                retry_backoff_ms=retry_backoff_ms,
                max_delivery_attempts=max_delivery_attempts,
            )
            nats_buses.append(nats_bus)
            bus = nats_bus
        made.append(bus)
        await bus.start()
        return bus

    yield factory
    for bus in made:
        await bus.close()
    for nats_bus in nats_buses:
        await nats_bus.delete_stream()


def make(event_cls: type[ServiceEvent], **fields: Any) -> ServiceEvent:
    return event_cls(**fields)


# --- routing and broadcast ------------------------------------------------------------------


@pytest.mark.parametrize("event_cls", EVENT_KINDS)
async def test_route_delivers_each_event_to_exactly_one_group_member(
    make_bus: BusFactory, event_cls: type[ServiceEvent]
) -> None:
    bus = await make_bus()
    members = [Recorder() for _ in range(3)]
    for i, member in enumerate(members):
        await bus.subscribe(event_cls, member, name=f"svc-{i}", group="svc")
    bystander = Recorder()
    await bus.subscribe(event_cls, bystander, name="bystander")
    other_group = Recorder()
    await bus.subscribe(event_cls, other_group, name="other-0", group="other")

    sent = [make(event_cls, n=i, target="svc") for i in range(60)]
    for event in sent:
        await bus.route(event)
    assert await bus.drain(DRAIN_S)

    received = [eid for m in members for eid in m.ids]
    assert sorted(received) == sorted(e.event_id for e in sent)  # each exactly once
    assert bystander.events == []
    assert other_group.events == []
    assert bus.stats().routed == 60


@pytest.mark.parametrize("event_cls", EVENT_KINDS)
async def test_broadcast_reaches_every_subscriber(
    make_bus: BusFactory, event_cls: type[ServiceEvent]
) -> None:
    bus = await make_bus()
    plain = [Recorder(), Recorder()]
    await bus.subscribe(event_cls, plain[0], name="plain-0")
    await bus.subscribe(event_cls, plain[1], name="plain-1")
    grouped = [Recorder(), Recorder()]
    await bus.subscribe(event_cls, grouped[0], name="grouped-0", group="svc")
    await bus.subscribe(event_cls, grouped[1], name="grouped-1", group="svc")

    sent = [make(event_cls, n=i) for i in range(20)]
    for event in sent:
        await bus.broadcast(event)
    assert await bus.drain(DRAIN_S)

    for rec in [*plain, *grouped]:
        assert rec.ids == [e.event_id for e in sent]
    assert bus.stats().published == 20


@pytest.mark.parametrize("event_cls", EVENT_KINDS)
async def test_each_subscriber_sees_events_in_publish_order(
    make_bus: BusFactory, event_cls: type[ServiceEvent]
) -> None:
    bus = await make_bus(max_queue_size=64)
    fast, slow = Recorder(), Recorder()

    async def slow_handler(event: ServiceEvent) -> None:
        await slow(event)
        if len(slow.events) % 50 == 0:
            # Let other tasks run mid-stream so queues fill and drain while publishing goes on.
            await asyncio.sleep(0)

    await bus.subscribe(event_cls, fast, name="fast")
    await bus.subscribe(event_cls, slow_handler, name="slow")
    routed = Recorder()
    await bus.subscribe(event_cls, routed, name="routed", group="svc")

    count = 600
    for i in range(count):
        await bus.broadcast(make(event_cls, n=i))
    for i in range(count):
        await bus.route(make(event_cls, n=i, target="svc"))
    assert await bus.drain(DRAIN_S * 2)

    assert fast.numbers() == list(range(count))
    assert slow.numbers() == list(range(count))
    # The grouped subscriber gets the broadcasts and, as the only member, every routed event:
    # each stream in its own publish order.
    broadcasts = [e for e in routed.events if e.target is None]
    routes = [e for e in routed.events if e.target == "svc"]
    assert [int(getattr(e, "n", -1)) for e in broadcasts] == list(range(count))
    assert [int(getattr(e, "n", -1)) for e in routes] == list(range(count))


# --- typed round trip -----------------------------------------------------------------------


def an_order(cls: type[BusTestOrder], target: str | None = None) -> BusTestOrder:
    lines = (
        BusTestLine(sku="gpu-hour", quantity=2.5, unit_price=Decimal("0.123456789012345678")),
        BusTestLine(sku="cpu-hour ✓ é", quantity=0.1 + 0.2, unit_price=Decimal("12.30")),
    )
    return cls(
        source="marketplace",
        target=target,
        timestamp=1_700_000_000.123456,
        customer=BusTestCustomer(name="Ada “Countess” Lovelace", tier=3, lines=lines[:1]),
        lines=lines,
        total=Decimal("-1234567890.000000001"),
        ratio=1e-300,
        note='multi\nline\ttext with "quotes" and \\ and 日本語',
        tags=["a", "", "c"],
        meta={"pi": 3.141592653589793, "big": 1.7976931348623157e308},
        discount=None,
    )


@pytest.mark.parametrize("order_cls", [BusTestOrder, BusTestDurableOrder])
async def test_typed_round_trip_keeps_class_and_values(
    make_bus: BusFactory, order_cls: type[BusTestOrder]
) -> None:
    bus = await make_bus()
    got = Recorder()
    await bus.subscribe(order_cls, got, name="orders", group="ledger")

    broadcast, routed = an_order(order_cls), an_order(order_cls, target="ledger")
    await bus.broadcast(broadcast)
    await bus.route(routed)
    assert await bus.drain(DRAIN_S)

    assert got.events == [broadcast, routed]
    for event in got.events:
        assert type(event) is order_cls
        assert isinstance(event, BusTestOrder)
        assert type(event.lines[0].unit_price) is Decimal
        assert event.lines[0].unit_price == Decimal("0.123456789012345678")
        assert str(event.lines[1].unit_price) == "12.30"  # the exponent survives too
        assert event.lines[1].quantity == 0.1 + 0.2


# --- durable de-duplication -----------------------------------------------------------------


async def test_durable_event_published_twice_is_delivered_once(make_bus: BusFactory) -> None:
    bus = await make_bus()
    watcher, member = Recorder(), Recorder()
    await bus.subscribe(BusTestPayment, watcher, name="watcher")
    await bus.subscribe(BusTestPayment, member, name="ledger-0", group="ledger")

    paid = BusTestPayment(n=1, amount=Decimal("9.99"))
    await bus.broadcast(paid)
    await bus.broadcast(paid.model_copy())  # a retried publish: same event_id
    settle = BusTestPayment(n=2, amount=Decimal("1.00"), target="ledger")
    await bus.route(settle)
    await bus.route(BusTestPayment.model_validate(settle.model_dump()))
    assert await bus.drain(DRAIN_S)

    assert watcher.ids == [paid.event_id]
    assert member.ids == [paid.event_id, settle.event_id]
    stats = bus.stats()
    assert stats.duplicates_dropped == 2
    assert (stats.published, stats.routed) == (1, 1)


async def test_plain_events_are_not_deduplicated(make_bus: BusFactory) -> None:
    bus = await make_bus()
    got = Recorder()
    await bus.subscribe(BusTestPing, got, name="pings")
    ping = BusTestPing(n=1)
    await bus.broadcast(ping)
    await bus.broadcast(ping)
    assert await bus.drain(DRAIN_S)
    assert got.ids == [ping.event_id, ping.event_id]
    assert bus.stats().duplicates_dropped == 0


# --- the ServiceEvent wildcard --------------------------------------------------------------


async def test_service_event_subscription_receives_every_type(make_bus: BusFactory) -> None:
    bus = await make_bus()
    everything, grouped = Recorder(), Recorder()
    await bus.subscribe(ServiceEvent, everything, name="audit")
    await bus.subscribe(ServiceEvent, grouped, name="svc-any", group="svc")

    broadcasts: list[ServiceEvent] = [
        BusTestPing(n=1),
        BusTestPayment(n=2),
        an_order(BusTestOrder),
        an_order(BusTestDurableOrder),
    ]
    routes: list[ServiceEvent] = [BusTestPing(n=3, target="svc"), BusTestPayment(n=4, target="svc")]
    for event in broadcasts:
        await bus.broadcast(event)
    for event in routes:
        await bus.route(event)
    assert await bus.drain(DRAIN_S)

    # Plain and durable events travel separately on NATS: compare as sets, check the classes.
    assert sorted(everything.ids) == sorted(e.event_id for e in broadcasts)
    assert {type(e) for e in everything.events} == {type(e) for e in broadcasts}
    assert sorted(grouped.ids) == sorted(e.event_id for e in [*broadcasts, *routes])
    by_id = {e.event_id: e for e in grouped.events}
    for event in [*broadcasts, *routes]:
        assert by_id[event.event_id] == event
        assert type(by_id[event.event_id]) is type(event)


# --- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize("event_cls", EVENT_KINDS)
async def test_failing_handler_is_retried_then_dead_lettered(
    make_bus: BusFactory, event_cls: type[ServiceEvent]
) -> None:
    bus = await make_bus(retry_backoff_ms=1, max_delivery_attempts=3)
    calls: list[str] = []

    async def broken(event: ServiceEvent) -> None:
        calls.append(event.event_id)
        raise RuntimeError(f"boom {len(calls)}")

    witness = Recorder()
    await bus.subscribe(event_cls, broken, name="broken")
    await bus.subscribe(event_cls, witness, name="witness")
    bad, after = make(event_cls, n=1), make(event_cls, n=2)
    await bus.broadcast(bad)
    await bus.broadcast(after)
    assert await bus.drain(DRAIN_S)

    assert calls == [bad.event_id] * 3 + [after.event_id] * 3
    dead = bus.dead_letters()
    assert [(d.subscriber, d.event, d.attempts) for d in dead] == [
        ("broken", bad, 3),
        ("broken", after, 3),
    ]
    assert dead[0].error == "RuntimeError: boom 3"
    assert witness.ids == [bad.event_id, after.event_id]
    stats = bus.stats()
    assert stats.dead_letters == 2
    broken_stats = next(s for s in stats.subscribers if s.name == "broken")
    assert (broken_stats.delivered, broken_stats.failed_attempts) == (0, 6)
    assert broken_stats.dead_lettered == 2


@pytest.mark.parametrize("event_cls", EVENT_KINDS)
async def test_handler_that_recovers_is_not_dead_lettered(
    make_bus: BusFactory, event_cls: type[ServiceEvent]
) -> None:
    bus = await make_bus(retry_backoff_ms=1, max_delivery_attempts=3)
    attempts: list[int] = []
    handled: list[ServiceEvent] = []

    async def flaky(event: ServiceEvent) -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("transient")
        handled.append(event)

    await bus.subscribe(event_cls, flaky, name="flaky")
    event = make(event_cls, n=7)
    await bus.broadcast(event)
    assert await bus.drain(DRAIN_S)

    assert handled == [event]
    assert len(attempts) == 3
    assert bus.dead_letters() == []
    (stats,) = bus.stats().subscribers
    assert (stats.delivered, stats.failed_attempts, stats.dead_lettered) == (1, 2, 0)


# --- unsubscribe and closing ----------------------------------------------------------------


@pytest.mark.parametrize("event_cls", EVENT_KINDS)
async def test_unsubscribe_stops_delivery(
    make_bus: BusFactory, event_cls: type[ServiceEvent]
) -> None:
    bus = await make_bus()
    leaving, staying = Recorder(), Recorder()
    sub = await bus.subscribe(event_cls, leaving, name="leaving")
    await bus.subscribe(event_cls, staying, name="staying")
    assert sub.name == "leaving"

    first = make(event_cls, n=1)
    await bus.broadcast(first)
    assert await bus.drain(DRAIN_S)
    await sub.unsubscribe()
    second = make(event_cls, n=2)
    await bus.broadcast(second)
    assert await bus.drain(DRAIN_S)

    assert leaving.ids == [first.event_id]
    assert staying.ids == [first.event_id, second.event_id]  # the second was delivered
    assert [s.name for s in bus.stats().subscribers] == ["staying"]


async def test_route_without_target_is_rejected(make_bus: BusFactory) -> None:
    bus = await make_bus()
    with pytest.raises(ValueError, match="target"):
        await bus.route(BusTestPing(n=1))
    with pytest.raises(ValueError, match="target"):
        await bus.route(BusTestPayment(n=1))


async def test_closed_bus_refuses_work(make_bus: BusFactory) -> None:
    bus = await make_bus()
    got = Recorder()
    await bus.subscribe(BusTestPing, got, name="pings")
    await bus.close()
    with pytest.raises(BusClosed):
        await bus.broadcast(BusTestPing(n=1))
    with pytest.raises(BusClosed):
        await bus.route(BusTestPing(n=1, target="svc"))
    with pytest.raises(BusClosed):
        await bus.subscribe(BusTestPing, got, name="late")
    assert got.events == []


@pytest.mark.parametrize("event_cls", EVENT_KINDS)
async def test_durable_route_waits_for_the_first_group_member(
    make_bus: BusFactory, event_cls: type[ServiceEvent]
) -> None:
    bus = await make_bus()
    bystander = Recorder()
    await bus.subscribe(event_cls, bystander, name="bystander")
    early = [make(event_cls, n=i, target="ledger") for i in range(3)]
    for event in early:
        await bus.route(event)
    assert await bus.drain(DRAIN_S)

    member = Recorder()
    await bus.subscribe(event_cls, member, name="ledger-0", group="ledger")
    late = make(event_cls, n=3, target="ledger")
    await bus.route(late)
    assert await bus.drain(DRAIN_S)

    assert bystander.events == []
    if event_cls.durable:  # kept for the group, in publish order
        assert member.ids == [e.event_id for e in [*early, late]]
    else:  # nobody was listening: gone
        assert member.ids == [late.event_id]


# --- NATS only: one prefix, several connections (processes) ---------------------------------


@pytest.fixture
async def nats_pair(nats_url: str) -> AsyncIterator[tuple[NatsEventBus, NatsEventBus]]:
    prefix = unique("t")
    buses = (
        NatsEventBus(url=nats_url, subject_prefix=prefix, retry_backoff_ms=1),
        NatsEventBus(url=nats_url, subject_prefix=prefix, retry_backoff_ms=1),
    )
    for bus in buses:
        await bus.start()
    yield buses
    for bus in buses:
        await bus.close()
    await buses[0].delete_stream()


async def drain_all(*buses: NatsEventBus) -> bool:
    results = [await bus.drain(DRAIN_S) for bus in buses]
    return all(results)


@pytest.mark.nats
@pytest.mark.parametrize("event_cls", EVENT_KINDS)
async def test_nats_group_spanning_connections_gets_each_event_once(
    nats_pair: tuple[NatsEventBus, NatsEventBus], event_cls: type[ServiceEvent]
) -> None:
    here, there = nats_pair
    members = [Recorder() for _ in range(4)]
    for i, member in enumerate(members):
        bus = here if i % 2 else there
        await bus.subscribe(event_cls, member, name=f"worker-{i}", group="workers")
    watchers = [Recorder(), Recorder()]
    await here.subscribe(event_cls, watchers[0], name="watch-here")
    await there.subscribe(event_cls, watchers[1], name="watch-there")

    routed = [make(event_cls, n=i, target="workers") for i in range(40)]
    broadcast = [make(event_cls, n=100 + i) for i in range(10)]
    for event in routed:
        await here.route(event)
    for event in broadcast:
        await there.broadcast(event)
    # Draining one bus covers what it published; in both orders covers both directions.
    assert await drain_all(here, there)
    assert await drain_all(there, here)

    routed_ids = sorted(e.event_id for e in routed)
    got_routed = sorted(eid for m in members for eid in m.ids if eid in set(routed_ids))
    assert got_routed == routed_ids  # exactly once across both connections
    for rec in [*members, *watchers]:
        assert [eid for eid in rec.ids if eid not in set(routed_ids)] == [
            e.event_id for e in broadcast
        ]


@pytest.mark.nats
async def test_nats_durable_duplicates_are_dropped_across_connections(
    nats_pair: tuple[NatsEventBus, NatsEventBus],
) -> None:
    here, there = nats_pair
    got = Recorder()
    await there.subscribe(BusTestPayment, got, name="ledger-0", group="ledger")
    payment = BusTestPayment(n=1, amount=Decimal("5"), target="ledger")
    await here.route(payment)
    await there.route(payment)  # another process retrying the same payment
    assert await drain_all(here, there)
    assert got.ids == [payment.event_id]
    assert (here.stats().duplicates_dropped, there.stats().duplicates_dropped) == (0, 1)


async def eventually(predicate: Callable[[], bool], timeout: float = DRAIN_S) -> None:
    """Poll ``predicate`` until it holds, failing after ``timeout`` seconds."""
    step = 0.02
    for _ in range(int(timeout / step)):
        if predicate():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"condition not reached within {timeout} s")


@pytest.mark.nats
async def test_nats_redelivery_of_an_event_still_being_handled_is_ignored(nats_url: str) -> None:
    bus = NatsEventBus(url=nats_url, subject_prefix=unique("t"), ack_wait_s=1.0)
    await bus.start()
    try:
        release = asyncio.Event()
        calls: list[str] = []

        async def slow(event: ServiceEvent) -> None:
            calls.append(event.event_id)
            await release.wait()

        await bus.subscribe(BusTestPayment, slow, name="slow-ledger")
        payment = BusTestPayment(n=1)
        await bus.broadcast(payment)
        # The handler outlives ack_wait: JetStream delivers the event again meanwhile.
        await eventually(lambda: bus.redeliveries_ignored >= 1)
        release.set()
        assert await bus.drain(DRAIN_S)
        assert calls == [payment.event_id]
    finally:
        await bus.close()
        await bus.delete_stream()
