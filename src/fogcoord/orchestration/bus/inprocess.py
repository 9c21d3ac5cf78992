"""The embedded event bus: typed events, queue groups, bounded per-subscriber queues."""

from __future__ import annotations

import itertools
from collections import defaultdict, deque
from typing import Any, cast

from fogcoord.clock import Clock, SystemClock
from fogcoord.contracts.errors import BusClosed
from fogcoord.contracts.events import ServiceEvent
from fogcoord.orchestration.bus.dedup import DedupWindow
from fogcoord.orchestration.bus.protocol import (
    BusStats,
    DeadLetter,
    E,
    Handler,
)
from fogcoord.orchestration.bus.subscriber import SubscriberQueue

ANY = ServiceEvent.event_type
"""Subscribing to ``ServiceEvent`` itself receives every event type."""


class _Sub:
    def __init__(self, bus: InProcessEventBus, queue: SubscriberQueue) -> None:
        self._bus = bus
        self.queue = queue

    @property
    def name(self) -> str:
        return self.queue.name

    async def unsubscribe(self) -> None:
        await self._bus._remove(self)


class InProcessEventBus:
    """Delivers events between services of one process.

    Subscribers are indexed by event type; ``route`` picks one member of the target group in
    round-robin order, skipping members whose queue is full, and waits for space (back-pressure)
    only when every member is full. Durable events routed to a group with no member yet are kept
    until one subscribes, as JetStream keeps them for a consumer.
    """

    def __init__(
        self,
        *,
        max_queue_size: int = 1000,
        retry_backoff_ms: float = 500,
        max_delivery_attempts: int = 3,
        clock: Clock | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._max_queue = max_queue_size
        self._backoff_s = retry_backoff_ms / 1000.0
        self._max_attempts = max_delivery_attempts
        self._by_type: dict[str, list[_Sub]] = defaultdict(list)
        self._groups: dict[tuple[str, str], list[_Sub]] = defaultdict(list)
        self._rr: dict[tuple[str, str], itertools.count[int]] = {}
        self._parked: dict[str, deque[ServiceEvent]] = defaultdict(deque)
        self._dead: list[DeadLetter] = []
        self._dedup = DedupWindow(self._clock)
        self._closed = False
        self._published = 0
        self._routed = 0
        self._duplicates = 0
        self._unroutable = 0

    async def start(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        subs = [s for subs in self._by_type.values() for s in subs]
        for sub in subs:
            await sub.queue.stop()
        self._by_type.clear()
        self._groups.clear()

    async def subscribe(
        self,
        event_type: type[E],
        handler: Handler[E],
        *,
        name: str,
        group: str | None = None,
    ) -> _Sub:
        if self._closed:
            raise BusClosed()
        queue = SubscriberQueue(
            name=name,
            event_type=event_type.event_type,
            group=group,
            handler=cast(Handler[Any], handler),
            max_queue_size=self._max_queue,
            retry_backoff_s=self._backoff_s,
            max_attempts=self._max_attempts,
            clock=self._clock,
            on_dead_letter=self._dead.append,
        )
        queue.start()
        sub = _Sub(self, queue)
        self._by_type[event_type.event_type].append(sub)
        if group is not None:
            self._groups[(group, event_type.event_type)].append(sub)
            for event in self._unpark(group, event_type.event_type):
                await queue.put(event)
        return sub

    def _unpark(self, group: str, event_type: str) -> list[ServiceEvent]:
        """The durable events parked for ``group`` that a new member of ``event_type`` takes."""
        parked = self._parked.get(group)
        if not parked:
            return []
        taken = [e for e in parked if event_type in (ANY, e.event_type)]
        kept = deque(e for e in parked if event_type not in (ANY, e.event_type))
        if kept:
            self._parked[group] = kept
        else:
            del self._parked[group]
        return taken

    async def _remove(self, sub: _Sub) -> None:
        subs = self._by_type.get(sub.queue.event_type, [])
        if sub in subs:
            subs.remove(sub)
        if sub.queue.group is not None:
            members = self._groups.get((sub.queue.group, sub.queue.event_type), [])
            if sub in members:
                members.remove(sub)
        await sub.queue.stop()

    def _accept(self, event: ServiceEvent) -> bool:
        if self._closed:
            raise BusClosed()
        if event.durable and not self._dedup.first_time(event.event_id):
            self._duplicates += 1
            return False
        return True

    async def broadcast(self, event: ServiceEvent) -> None:
        if not self._accept(event):
            return
        self._published += 1
        keys = (ANY,) if event.event_type == ANY else (event.event_type, ANY)
        for key in keys:
            # A snapshot: an unsubscribe while this waits for space must not skip a subscriber.
            for sub in tuple(self._by_type.get(key, ())):
                if not sub.queue.offer(event):
                    await sub.queue.put(event)

    async def route(self, event: ServiceEvent) -> None:
        if event.target is None:
            raise ValueError("route_event needs event.target: the service to deliver to")
        if not self._accept(event):
            return
        self._routed += 1
        key = (event.target, event.event_type)
        members = tuple(self._groups.get(key, ()))
        if not members:
            key = (event.target, ANY)
            members = tuple(self._groups.get(key, ()))
        if not members:
            if event.durable:
                self._parked[event.target].append(event)
            else:
                self._unroutable += 1
            return
        counter = self._rr.get(key)
        if counter is None:
            counter = self._rr[key] = itertools.count()
        start = next(counter)
        n = len(members)
        for i in range(n):
            if members[(start + i) % n].queue.offer(event):
                return
        await members[start % n].queue.put(event)

    async def drain(self, timeout: float) -> bool:
        deadline = self._clock.monotonic() + timeout
        for subs in list(self._by_type.values()):
            for sub in list(subs):
                left = max(0.0, deadline - self._clock.monotonic())
                if not await sub.queue.join(left):
                    return False
        return True

    def dead_letters(self) -> list[DeadLetter]:
        return list(self._dead)

    def stats(self) -> BusStats:
        return BusStats(
            published=self._published,
            routed=self._routed,
            duplicates_dropped=self._duplicates,
            dead_letters=len(self._dead),
            subscribers=tuple(s.queue.stats() for subs in self._by_type.values() for s in subs),
        )

    @property
    def unroutable(self) -> int:
        return self._unroutable
