"""Handlers for messages the coordinator pushes down a device's channel, by message type.

The channel carries the agent's heartbeats up and their ``health``/``error`` answers down; the
coordinator may push other types (``task``, ...). A handler receives the decoded message and may
return a reply, which the agent sends back on the same channel. Types without a handler are logged
and ignored, so an older agent keeps working when the coordinator learns new messages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

Message = dict[str, Any]
Handler = Callable[[Message], Awaitable[Message | None]]

RESERVED = frozenset({"heartbeat", "health", "error"})
"""Types the agent loop itself speaks; they cannot be taken over by a handler."""


class Handlers:
    """A registry of pushed-message handlers; one may be shared by many agents."""

    def __init__(self) -> None:
        self._by_type: dict[str, Handler] = {}

    def register(self, message_type: str, handler: Handler) -> None:
        if message_type in RESERVED:
            raise ValueError(f"{message_type!r} messages are handled by the agent itself")
        self._by_type[message_type] = handler

    def on(self, message_type: str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`register`."""

        def add(handler: Handler) -> Handler:
            self.register(message_type, handler)
            return handler

        return add

    def unregister(self, message_type: str) -> None:
        self._by_type.pop(message_type, None)

    def get(self, message_type: str) -> Handler | None:
        return self._by_type.get(message_type)

    def __contains__(self, message_type: object) -> bool:
        return message_type in self._by_type

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_type)

    def __len__(self) -> int:
        return len(self._by_type)
