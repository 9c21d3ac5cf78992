"""Bursts: a requester reserves a set of devices for a bounded time.

At most ``max_concurrent_bursts`` are live at once; each expires after
``burst_timeout_minutes`` (or the request's own shorter duration) on the injected clock, and its
devices return to the pool. Reserved devices are not offered to other selections.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from fogcoord.clock import Clock
from fogcoord.contracts.errors import Conflict, NotFound


class BurstLimitReached(Conflict):
    code = "burst_limit_reached"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"{limit} bursts are already running (harvesting.resource_allocation."
            "max_concurrent_bursts); wait for one to end or release one",
            limit=limit,
        )


@dataclass
class Burst:
    burst_id: str
    requester: str
    devices: tuple[str, ...]
    started_at: float
    expires_at: float


class BurstBook:
    def __init__(self, clock: Clock, max_concurrent: int, timeout_minutes: float) -> None:
        self._clock = clock
        self.max_concurrent = max_concurrent
        self.timeout_s = timeout_minutes * 60.0
        self.bursts: dict[str, Burst] = {}

    def expired(self) -> list[Burst]:
        """Remove and return the bursts whose time is up."""
        now = self._clock.monotonic()
        gone = [b for b in self.bursts.values() if b.expires_at <= now]
        for burst in gone:
            del self.bursts[burst.burst_id]
        return gone

    def check_room(self) -> None:
        if len(self.bursts) >= self.max_concurrent:
            raise BurstLimitReached(self.max_concurrent)

    def open(self, requester: str, devices: list[str], duration_minutes: float | None) -> Burst:
        self.check_room()
        seconds = self.timeout_s
        if duration_minutes is not None:
            seconds = min(seconds, duration_minutes * 60.0)
        now = self._clock.monotonic()
        burst = Burst(
            f"burst-{uuid.uuid4().hex[:12]}", requester, tuple(devices), now, now + seconds
        )
        self.bursts[burst.burst_id] = burst
        return burst

    def close(self, burst_id: str) -> Burst:
        burst = self.bursts.pop(burst_id, None)
        if burst is None:
            raise NotFound("burst", burst_id)
        return burst
