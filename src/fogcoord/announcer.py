"""Announcing new auctions to connected devices, so their agents can bid at once.

Each ``AuctionOpened`` event becomes one ``auction`` message pushed down the channel of every
connected device not owned by the requester (it could not win its own auction anyway). The bus
handler only starts the fan-out and returns: a device on a slow link delays nobody, neither the
bus nor the other devices. The fan-out runs a bounded number of sends at a time and gives each
send a deadline, so a stalled socket costs one worker for at most that long.

On a coordinator spread over several processes (NATS), every process receives the event and
pushes to the devices connected to it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fogcoord.channels import DeviceChannels
from fogcoord.clock import Clock
from fogcoord.contracts.marketplace import AuctionOpened
from fogcoord.coordinator import Coordinator
from fogcoord.orchestration.bus.protocol import Subscription

log = logging.getLogger(__name__)

SUBSCRIBER = "announcer.auctions"
CONCURRENCY = 64
SEND_TIMEOUT_S = 5.0


def auction_message(event: AuctionOpened) -> dict[str, Any]:
    """The ``auction`` message a device receives: prices as decimal strings, never floats."""
    return {
        "type": "auction",
        "auction_id": event.auction_id,
        "slots": event.slots,
        "gflop": event.gflop,
        "max_price_per_gflop": str(event.max_price_per_gflop),
        "reserve_price_per_gflop": str(event.reserve_price_per_gflop),
        "bid_increment": str(event.bid_increment),
        "closes_at": event.closes_at,
        "requester": event.requester,
    }


@dataclass(frozen=True, slots=True)
class Fanout:
    """How one announcement went."""

    sent: int
    gone: int
    """Devices whose channel closed before the push reached them."""
    timed_out: int
    failed: int


class Announcer:
    """Pushes each opened auction to the devices that ``recipients`` names for its requester."""

    def __init__(
        self,
        channels: DeviceChannels,
        recipients: Callable[[str], list[str]],
        clock: Clock,
        *,
        concurrency: int = CONCURRENCY,
        send_timeout: float = SEND_TIMEOUT_S,
    ) -> None:
        if concurrency < 1 or send_timeout <= 0:
            raise ValueError("concurrency must be at least 1 and send_timeout positive")
        self.channels = channels
        self.recipients = recipients
        self.clock = clock
        self.concurrency = concurrency
        self.send_timeout = send_timeout
        self.announced = 0
        self._tasks: set[asyncio.Task[Fanout]] = set()

    async def on_auction_opened(self, event: AuctionOpened) -> None:
        """Bus handler: start the fan-out and return at once."""
        self.announce(event)

    def announce(self, event: AuctionOpened) -> asyncio.Task[Fanout]:
        devices = self.recipients(event.requester)
        task = asyncio.get_running_loop().create_task(
            self._fan_out(event.auction_id, devices, auction_message(event))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _fan_out(
        self, auction_id: str, devices: list[str], message: dict[str, Any]
    ) -> Fanout:
        outcomes: list[str] = []
        pending = iter(devices)

        async def worker() -> None:
            # the workers share one iterator: at most ``concurrency`` sends are in flight
            for device_id in pending:
                outcomes.append(await self._push(device_id, message))

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(devices)))))
        self.announced += 1
        result = Fanout(
            sent=outcomes.count("sent"),
            gone=outcomes.count("gone"),
            timed_out=outcomes.count("timeout"),
            failed=outcomes.count("failed"),
        )
        level = logging.INFO if result.timed_out or result.failed else logging.DEBUG
        log.log(level, "auction %s announced to %d devices: %s", auction_id, len(devices), result)
        return result

    async def _push(self, device_id: str, message: dict[str, Any]) -> str:
        try:
            async with self.clock.timeout(self.send_timeout):
                delivered = await self.channels.push(device_id, message)
        except TimeoutError:
            log.debug("announcing to %s took over %.1f s; skipped", device_id, self.send_timeout)
            return "timeout"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a socket closing mid-send; the device simply misses this one
            log.debug("announcing to %s failed: %s: %s", device_id, type(exc).__name__, exc)
            return "failed"
        return "sent" if delivered else "gone"

    async def close(self) -> None:
        """Stop announcements in flight."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def connected_devices(coord: Coordinator) -> Callable[[str], list[str]]:
    """The devices of ``coord`` connected now and not owned by ``requester``."""
    # weak: the announcer is kept per coordinator and must not keep a finished one alive
    ref = weakref.ref(coord)

    def recipients(requester: str) -> list[str]:
        coord = ref()
        if coord is None:
            return []
        reg = coord.harvesting.registry
        out = []
        for device_id, r in reg.rows.items():
            meta = reg.meta[r]
            if (
                meta is not None
                and meta.owner != requester
                and coord.channels.is_connected(device_id)
            ):
                out.append(device_id)
        return out

    return recipients


# --- one announcer per coordinator run ------------------------------------------------------


@dataclass(eq=False)
class _Run:
    announcer: Announcer
    subscription: Subscription
    leases: int = 0


class AnnouncerLease:
    """One caller's hold on the coordinator's announcer; the last one to go unsubscribes."""

    def __init__(self, coord: Coordinator, run: _Run) -> None:
        self._coord = weakref.ref(coord)
        self._run: _Run | None = run

    @property
    def name(self) -> str:
        return SUBSCRIBER

    @property
    def announcer(self) -> Announcer | None:
        return self._run.announcer if self._run is not None else None

    async def unsubscribe(self) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        run.leases -= 1
        if run.leases > 0:
            return
        coord = self._coord()
        if coord is not None and _runs.get(coord) is run:
            del _runs[coord]
        await run.announcer.close()
        try:
            await run.subscription.unsubscribe()
        except Exception as exc:  # the bus may already be closed with the coordinator
            log.debug("announcer unsubscribe: %s: %s", type(exc).__name__, exc)


_runs: weakref.WeakKeyDictionary[Coordinator, _Run] = weakref.WeakKeyDictionary()
_locks: weakref.WeakKeyDictionary[Coordinator, asyncio.Lock] = weakref.WeakKeyDictionary()


async def start_announcer(coord: Coordinator) -> AnnouncerLease:
    """Announce ``coord``'s auctions to its devices; ``coord`` must be started.

    Idempotent: callers (an app's lifespan, the first request of an app whose coordinator is
    started elsewhere) share one subscription per coordinator run, each holding a lease.
    """
    lock = _locks.setdefault(coord, asyncio.Lock())
    async with lock:
        run = _runs.get(coord)
        if run is None or not _subscribed(coord):
            if run is not None:  # a stopped bus dropped its subscription: a new run
                await run.announcer.close()
            announcer = Announcer(coord.channels, connected_devices(coord), coord.clock)
            subscription = await coord.orchestration.subscribe(
                AuctionOpened, announcer.on_auction_opened, name=SUBSCRIBER
            )
            run = _runs[coord] = _Run(announcer, subscription)
        run.leases += 1
        return AnnouncerLease(coord, run)


def _subscribed(coord: Coordinator) -> bool:
    return any(s.name == SUBSCRIBER for s in coord.bus.stats().subscribers)
