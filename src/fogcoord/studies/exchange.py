"""Request and reply over the agent channel: push a message, await the device's answer.

The channel is a stream of frames in both directions; a study round needs answers from many
devices at once, so each request carries an id and the matching reply resolves its future.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

Send = Callable[[str, dict[str, Any]], Awaitable[bool]]


class DeviceGone(Exception):
    pass


class Exchange:
    def __init__(self, send: Send) -> None:
        self._send = send
        self._waiting: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}

    async def request(
        self, device_id: str, message: Mapping[str, Any], timeout: float
    ) -> dict[str, Any]:
        request_id = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = (device_id, future)
        try:
            if not await self._send(device_id, {**message, "request_id": request_id}):
                raise DeviceGone(device_id)
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(request_id, None)

    async def gather(
        self, messages: Mapping[str, Mapping[str, Any]], timeout: float
    ) -> dict[str, dict[str, Any]]:
        """Ask many devices at once; the answers that came back in time (the rest dropped)."""
        ids = list(messages)
        answers = await asyncio.gather(
            *(self.request(d, messages[d], timeout) for d in ids), return_exceptions=True
        )
        return {d: a for d, a in zip(ids, answers, strict=True) if isinstance(a, dict)}

    def reply(self, device_id: str, message: dict[str, Any]) -> bool:
        """A device's answer arrived; False when nobody waits for it (late or forged)."""
        waiting = self._waiting.get(str(message.get("request_id", "")))
        if waiting is None or waiting[0] != device_id or waiting[1].done():
            return False
        waiting[1].set_result(message)
        return True
