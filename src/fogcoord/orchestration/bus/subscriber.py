"""One subscriber's delivery pipeline, shared by both buses.

A bounded queue with back-pressure, a single worker task (so a subscriber sees events in publish
order), retries with exponential back-off on the injected clock, then a dead letter. The queue is
a deque plus futures rather than ``asyncio.Queue``: it is on the hot path of every event and this
saves about half of each hop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from fogcoord.clock import Clock
from fogcoord.contracts.events import ServiceEvent
from fogcoord.orchestration.bus.protocol import DeadLetter, SubscriberStats

_log = logging.getLogger(__name__)

DeadLetterSink = Callable[[DeadLetter], None]
AckHook = Callable[[Any, bool], Awaitable[None]]


class SubscriberQueue:
    def __init__(
        self,
        *,
        name: str,
        event_type: str,
        group: str | None,
        handler: Callable[[Any], Awaitable[None]],
        max_queue_size: int,
        retry_backoff_s: float,
        max_attempts: int,
        clock: Clock,
        on_dead_letter: DeadLetterSink,
    ) -> None:
        self.name = name
        self.event_type = event_type
        self.group = group
        self._handler = handler
        self._max = max_queue_size
        self._backoff = retry_backoff_s
        self._max_attempts = max_attempts
        self._clock = clock
        self._on_dead_letter = on_dead_letter
        self._items: deque[tuple[ServiceEvent, Any]] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._space: deque[asyncio.Future[None]] = deque()
        self._unfinished = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._ack: AckHook | None = None
        self._stopped = False
        self.delivered = 0
        self.failed_attempts = 0
        self.dead_lettered = 0

    # --- producer side -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self._max

    @property
    def stopped(self) -> bool:
        return self._stopped

    def offer(self, event: ServiceEvent, token: Any = None) -> bool:
        """Enqueue without waiting; False when the queue is full or stopped."""
        if self._stopped or len(self._items) >= self._max:
            return False
        self._enqueue(event, token)
        return True

    async def put(self, event: ServiceEvent, token: Any = None) -> bool:
        """Enqueue, waiting for space while the queue is full (back-pressure).

        Returns False, dropping the event, when the queue is or gets stopped (its subscriber is
        gone) instead of leaking a ``CancelledError`` into the publisher.
        """
        while True:
            if self._stopped:
                return False
            if len(self._items) < self._max:
                break
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._space.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release_space()
                raise
        self._enqueue(event, token)
        return True

    def _enqueue(self, event: ServiceEvent, token: Any) -> None:
        self._items.append((event, token))
        self._unfinished += 1
        self._idle.clear()
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _release_space(self) -> None:
        while self._space:
            fut = self._space.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    # --- consumer side -----------------------------------------------------------------------

    def start(self, ack: AckHook | None = None) -> None:
        self._ack = ack
        self._stopped = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sub:{self.name}")

    async def stop(self) -> None:
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # Events still queued will never be handled: forget them so ``join`` does not hang.
        self._items.clear()
        self._unfinished = 0
        self._idle.set()
        # Wake publishers waiting for space: they see ``stopped`` and drop their event.
        while self._space:
            fut = self._space.popleft()
            if not fut.done():
                fut.set_result(None)

    async def join(self, timeout: float | None = None) -> bool:
        if self._unfinished == 0:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        items = self._items
        loop = asyncio.get_running_loop()
        while True:
            if not items:
                self._wake = loop.create_future()
                await self._wake
                self._wake = None
                continue
            event, token = items.popleft()
            if self._space:
                self._release_space()
            ok = await self._deliver(event)
            if self._ack is not None:
                try:
                    await self._ack(token, ok)
                except Exception:
                    # A failed ack must not kill the worker: the broker redelivers instead.
                    _log.exception("subscriber %s: ack hook failed", self.name)
            self._unfinished -= 1
            if self._unfinished == 0:
                self._idle.set()

    async def _deliver(self, event: ServiceEvent) -> bool:
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._handler(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed_attempts += 1
                if attempt >= self._max_attempts:
                    self.dead_lettered += 1
                    self._on_dead_letter(
                        DeadLetter(
                            subscriber=self.name,
                            event=event,
                            error=f"{type(exc).__name__}: {exc}",
                            attempts=attempt,
                            at=self._clock.time(),
                        )
                    )
                    return False
                await self._clock.sleep(self._backoff * (2 ** (attempt - 1)))
            else:
                self.delivered += 1
                return True

    def stats(self) -> SubscriberStats:
        return SubscriberStats(
            name=self.name,
            event_type=self.event_type,
            group=self.group,
            queued=len(self._items),
            delivered=self.delivered,
            failed_attempts=self.failed_attempts,
            dead_lettered=self.dead_lettered,
        )
