"""Announcing auctions to connected devices: the message, who gets it, a bounded fan-out that no
slow or broken socket holds up, and one subscription per coordinator run however the API is
served (lifespan, or a coordinator started elsewhere)."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from fogcoord.announcer import SUBSCRIBER, Announcer, auction_message, start_announcer
from fogcoord.api.app import create_app
from fogcoord.channels import DeviceChannels
from fogcoord.client import FogClient
from fogcoord.clock import SystemClock
from fogcoord.contracts.marketplace import AuctionOpened, ResourceRequest
from fogcoord.coordinator import Coordinator
from tests.harvesting.support import cap
from tests.helpers import make_config, running_api


class Socket:
    """A device channel that records what it is sent; it may hang or break instead."""

    def __init__(self, *, hang: asyncio.Event | None = None, broken: bool = False) -> None:
        self.messages: list[dict[str, Any]] = []
        self.hang = hang
        self.broken = broken
        self.in_flight = 0
        self.most_in_flight = 0

    async def send_json(self, data: Any, mode: str = "text") -> None:
        if self.broken:
            raise RuntimeError("the socket closed")
        self.in_flight += 1
        try:
            if self.hang is not None:
                await self.hang.wait()
            self.messages.append(data)
        finally:
            self.in_flight -= 1


def opened(auction_id: str = "auc-1", requester: str = "alice") -> AuctionOpened:
    return AuctionOpened(
        source="marketplace",
        auction_id=auction_id,
        requester=requester,
        slots=2,
        gflop=1000.0,
        max_price_per_gflop=Decimal("0.002"),
        reserve_price_per_gflop=Decimal("0.00035"),
        bid_increment=Decimal("0.000005"),
        closes_at=1_700_000_600.0,
    )


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def announcer_of(
    sockets: dict[str, Socket], *, concurrency: int = 64, send_timeout: float = 5.0
) -> Announcer:
    channels = DeviceChannels()
    for device_id, socket in sockets.items():
        channels.connected(device_id, socket)
    return Announcer(
        channels,
        lambda _requester: list(sockets),
        SystemClock(),
        concurrency=concurrency,
        send_timeout=send_timeout,
    )


# --- the fan-out -------------------------------------------------------------------------------


def test_the_message_carries_prices_as_decimal_strings() -> None:
    assert auction_message(opened()) == {
        "type": "auction",
        "auction_id": "auc-1",
        "slots": 2,
        "gflop": 1000.0,
        "max_price_per_gflop": "0.002",
        "reserve_price_per_gflop": "0.00035",
        "bid_increment": "0.000005",
        "closes_at": 1_700_000_600.0,
        "requester": "alice",
    }


async def test_a_hung_socket_delays_neither_the_bus_nor_the_other_devices() -> None:
    hang = asyncio.Event()
    sockets = {"slow": Socket(hang=hang), "a": Socket(), "b": Socket()}
    announcer = announcer_of(sockets, send_timeout=0.3)
    started = time.monotonic()
    await announcer.on_auction_opened(opened())  # returns before any send completes
    assert time.monotonic() - started < 0.05
    await until(lambda: sockets["a"].messages and sockets["b"].messages, timeout=0.25)
    assert sockets["slow"].messages == []
    # the next auction reaches the others while the first still waits on the slow socket
    second = announcer.announce(opened("auc-2"))
    await until(lambda: len(sockets["a"].messages) == 2, timeout=0.25)
    report = await second
    assert (report.sent, report.timed_out, report.failed, report.gone) == (2, 1, 0, 0)
    hang.set()
    await announcer.close()


async def test_sends_in_flight_are_bounded_and_every_device_is_reached() -> None:
    release = asyncio.Event()
    sockets = {f"d{i}": Socket(hang=release) for i in range(20)}
    announcer = announcer_of(sockets, concurrency=3)
    task = announcer.announce(opened())
    await until(lambda: sum(s.in_flight for s in sockets.values()) == 3)
    await asyncio.sleep(0.05)
    assert sum(s.in_flight for s in sockets.values()) == 3
    release.set()
    report = await task
    assert report.sent == 20
    assert all(len(s.messages) == 1 for s in sockets.values())


async def test_a_broken_or_closed_socket_is_counted_and_skipped() -> None:
    sockets = {"broken": Socket(broken=True), "fine": Socket()}
    announcer = announcer_of(sockets)
    announcer.channels.disconnected("fine", sockets["fine"])
    announcer.channels.connected("fine", sockets["fine"])
    report = await announcer.announce(opened())
    assert (report.sent, report.failed) == (1, 1)
    assert sockets["fine"].messages == [auction_message(opened())]
    # a device that disconnected between the listing and the push is simply gone
    announcer.recipients = lambda _r: ["fine", "left"]
    report = await announcer.announce(opened("auc-2"))
    assert (report.sent, report.gone) == (1, 1)


async def test_close_stops_announcements_in_flight() -> None:
    sockets = {"slow": Socket(hang=asyncio.Event())}
    announcer = announcer_of(sockets)
    task = announcer.announce(opened())
    await until(lambda: sockets["slow"].in_flight == 1)
    await announcer.close()
    assert task.cancelled()


def test_limits_must_make_sense() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        announcer_of({}, concurrency=0)
    with pytest.raises(ValueError, match="send_timeout"):
        announcer_of({}, send_timeout=0)


# --- wiring to a coordinator -------------------------------------------------------------------


async def connect(coord: Coordinator, device_id: str, owner: str) -> Socket:
    await coord.harvesting.register_device(cap(device_id, owner), principal_id=f"dev_{device_id}")
    socket = Socket()
    coord.channels.connected(device_id, socket)
    return socket


async def open_auction(coord: Coordinator, requester: str = "alice") -> str:
    if coord.tokenomics.wallet_owner(requester) is None:
        await coord.tokenomics.initialize_wallet(requester)
    return await coord.marketplace.create_auction(
        ResourceRequest(
            requester=requester, slots=1, gflop=100.0, max_price_per_gflop=Decimal("0.01")
        )
    )


def subscribers(coord: Coordinator) -> int:
    return sum(1 for s in coord.bus.stats().subscribers if s.name == SUBSCRIBER)


@pytest.fixture
async def coord(tmp_path: Path) -> AsyncIterator[Coordinator]:
    coordinator = Coordinator(make_config(tmp_path))
    try:
        yield coordinator
    finally:
        await coordinator.stop()


async def test_a_started_coordinator_served_without_lifespan_announces_from_the_first_request(
    tmp_path: Path,
) -> None:
    async with running_api(make_config(tmp_path)) as (coord, admin, _):
        theirs = await connect(coord, "d1", "bob")
        own = await connect(coord, "alices-phone", "alice")
        assert subscribers(coord) == 0
        await admin.whoami()  # any request, even a failing one, starts it
        assert subscribers(coord) == 1
        auction_id = await open_auction(coord)
        await until(lambda: theirs.messages)
        [message] = theirs.messages
        assert (message["type"], message["auction_id"]) == ("auction", auction_id)
        assert message["requester"] == "alice"
        view = await coord.marketplace.get_auction(auction_id)
        assert Decimal(message["reserve_price_per_gflop"]) == view.reserve_price_per_gflop
        assert Decimal(message["bid_increment"]) == view.bid_increment
        await asyncio.sleep(0.05)
        assert own.messages == [], "the requester's own devices cannot win its auction"


async def test_many_apps_on_one_coordinator_share_one_subscription(tmp_path: Path) -> None:
    async with running_api(make_config(tmp_path)) as (coord, _, key):
        socket = await connect(coord, "d1", "bob")
        for _ in range(3):
            transport = httpx.ASGITransport(app=create_app(coord, manage_lifecycle=False))
            async with FogClient("http://test", key, transport=transport) as client:
                await asyncio.gather(*(client.whoami() for _ in range(5)))
        assert subscribers(coord) == 1
        await open_auction(coord)
        await until(lambda: socket.messages)
        await asyncio.sleep(0.05)
        assert len(socket.messages) == 1


async def test_an_app_managing_the_lifecycle_announces_until_it_stops(coord: Coordinator) -> None:
    app = create_app(coord)
    async with app.router.lifespan_context(app):
        assert subscribers(coord) == 1
        socket = await connect(coord, "d1", "bob")
        await open_auction(coord)
        await until(lambda: socket.messages)
    assert not coord.marketplace.running


async def test_a_lifespan_over_a_coordinator_started_elsewhere_leaves_it_running(
    coord: Coordinator,
) -> None:
    app = create_app(coord, manage_lifecycle=False)  # as `fogcoord serve` does: before start
    await coord.start()
    async with app.router.lifespan_context(app):
        assert subscribers(coord) == 1
        socket = await connect(coord, "d1", "bob")
        await open_auction(coord)
        await until(lambda: socket.messages)
    assert coord.marketplace.running
    assert subscribers(coord) == 0, "the last lease gone, the subscription goes too"


async def test_a_restarted_coordinator_is_subscribed_again(coord: Coordinator) -> None:
    await coord.start()
    first = await start_announcer(coord)
    assert first.announcer is not None
    await coord.stop()
    await coord.start()
    assert subscribers(coord) == 0, "the bus forgot its subscribers when it closed"
    second = await start_announcer(coord)
    assert subscribers(coord) == 1
    assert second.announcer is not first.announcer
    socket = await connect(coord, "d1", "bob")
    await open_auction(coord)
    await until(lambda: socket.messages)
    await first.unsubscribe()  # a stale lease must not take the new subscription with it
    assert subscribers(coord) == 1
    await second.unsubscribe()
    await second.unsubscribe()
    assert subscribers(coord) == 0


async def test_a_finished_coordinator_is_not_kept_alive_by_its_announcer(tmp_path: Path) -> None:
    coordinator = Coordinator(make_config(tmp_path))
    await coordinator.start()
    lease = await start_announcer(coordinator)  # never given back, as by a lazily started app
    await coordinator.stop()
    gone = weakref.ref(coordinator)
    del coordinator
    gc.collect()
    assert gone() is None
    assert lease.announcer is not None
