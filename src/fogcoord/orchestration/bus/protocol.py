"""The event-bus seam: one Protocol, an in-process and a NATS implementation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from fogcoord.contracts.events import ServiceEvent

E = TypeVar("E", bound=ServiceEvent)
Handler = Callable[[E], Awaitable[None]]


class DeadLetter(BaseModel):
    model_config = ConfigDict(frozen=True)

    subscriber: str
    event: ServiceEvent
    error: str
    attempts: int
    at: float


class SubscriberStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    event_type: str
    group: str | None
    queued: int
    delivered: int
    failed_attempts: int
    dead_lettered: int


class BusStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    published: int
    routed: int
    duplicates_dropped: int
    dead_letters: int
    subscribers: tuple[SubscriberStats, ...]


class Subscription(Protocol):
    @property
    def name(self) -> str: ...

    async def unsubscribe(self) -> None: ...


class EventBus(Protocol):
    """Typed publish/subscribe.

    ``broadcast`` delivers an event to every subscriber of its type. ``route`` delivers it to
    exactly one subscriber in the queue group named by ``event.target``. Each subscriber has its
    own bounded queue (back-pressure when full), sees its events in publish order, and has failed
    handlers retried with back-off, then dead-lettered. Durable events (``event.durable``) are
    applied once per ``event_id`` even when published again.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(
        self,
        event_type: type[E],
        handler: Handler[E],
        *,
        name: str,
        group: str | None = None,
    ) -> Subscription: ...

    async def broadcast(self, event: ServiceEvent) -> None: ...

    async def route(self, event: ServiceEvent) -> None: ...

    async def drain(self, timeout: float) -> bool:
        """Wait until every queued event is handled or ``timeout`` passes; True if drained."""
        ...

    def dead_letters(self) -> list[DeadLetter]: ...

    def stats(self) -> BusStats: ...
