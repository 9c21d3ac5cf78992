"""Events: the typed messages services exchange on the bus.

Each event type is a frozen pydantic model subclassing :class:`ServiceEvent`. Subclasses register
themselves by ``event_type`` (a dotted lower-case name, derived from the class name unless set)
so a bus that crosses process boundaries can decode the exact type back. ``durable = True`` marks
events that move money: a distributed bus persists them and de-duplicates by ``event_id``.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

_REGISTRY: dict[str, type[ServiceEvent]] = {}


def _snake(name: str) -> str:
    name = name.removesuffix("Event")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _new_id() -> str:
    return uuid.uuid4().hex


class ServiceEvent(BaseModel):
    """Base of every event.

    ``target`` names a service for :meth:`route_event` (delivered to exactly one subscriber of
    that service's queue group); ``None`` means the event is for every subscriber.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str] = "service_event"
    durable: ClassVar[bool] = False

    event_id: str = Field(default_factory=_new_id)
    source: str = ""
    target: str | None = None
    timestamp: float = 0.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "event_type" not in cls.__dict__:
            cls.event_type = _snake(cls.__name__)
        existing = _REGISTRY.get(cls.event_type)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise TypeError(f"event type {cls.event_type!r} is already used by {existing!r}")
        _REGISTRY[cls.event_type] = cls

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.event_type, "data": self.model_dump(mode="json")}


def event_class(event_type: str) -> type[ServiceEvent]:
    """The registered class for ``event_type``; raises ``KeyError`` for unknown types."""
    return _REGISTRY[event_type]


def from_wire(wire: dict[str, Any]) -> ServiceEvent:
    return event_class(str(wire["type"])).model_validate(wire["data"])


def registered_event_types() -> dict[str, type[ServiceEvent]]:
    return dict(_REGISTRY)


_REGISTRY[ServiceEvent.event_type] = ServiceEvent


class ServiceStateChanged(ServiceEvent):
    """A service moved through its lifecycle: registered, starting, running, stopped, failed."""

    service_id: str
    state: str
    detail: str = ""


class CircuitStateChanged(ServiceEvent):
    service_id: str
    previous: str
    state: str
    consecutive_failures: int = 0


class HealthChanged(ServiceEvent):
    service_id: str
    previous: str
    state: str
    reason: str = ""


class DeadLettered(ServiceEvent):
    """An event a subscriber could not handle after every retry."""

    subscriber: str
    failed_event_id: str
    failed_event_type: str
    error: str
    attempts: int
