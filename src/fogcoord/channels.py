"""Open agent channels (WebSockets), so work can be pushed to a connected device."""

from __future__ import annotations

from typing import Any, Protocol


class Channel(Protocol):
    async def send_json(self, data: Any, mode: str = "text") -> None: ...


class DeviceChannels:
    def __init__(self) -> None:
        self._open: dict[str, Channel] = {}

    def connected(self, device_id: str, channel: Channel) -> None:
        self._open[device_id] = channel

    def disconnected(self, device_id: str, channel: Channel) -> None:
        if self._open.get(device_id) is channel:
            del self._open[device_id]

    def is_connected(self, device_id: str) -> bool:
        return device_id in self._open

    def __len__(self) -> int:
        return len(self._open)

    async def push(self, device_id: str, message: dict[str, Any]) -> bool:
        """Send ``message`` to the device if it is connected; False when it is not."""
        channel = self._open.get(device_id)
        if channel is None:
            return False
        await channel.send_json(message)
        return True
