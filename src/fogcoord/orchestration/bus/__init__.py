"""The event bus: a Protocol and its in-process and NATS implementations."""

from fogcoord.orchestration.bus.inprocess import InProcessEventBus
from fogcoord.orchestration.bus.protocol import BusStats, DeadLetter, EventBus, Subscription

__all__ = ["BusStats", "DeadLetter", "EventBus", "InProcessEventBus", "Subscription"]
