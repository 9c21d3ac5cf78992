"""What agents report about themselves: registrations, heartbeat round trips, errors, reconnects.

An :class:`~fogcoord.agent.runner.Agent` calls a :class:`Recorder`; a lone agent uses
:class:`NullRecorder`, a simulated fleet shares one :class:`FleetStats` among all its agents (a
handful of counters and one packed array of round-trip times, so 10,000 agents cost nothing here).
"""

from __future__ import annotations

import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

Via = Literal["channel", "http"]


class Recorder(Protocol):
    def registered(self, seconds: float) -> None:
        """A registration succeeded after ``seconds``."""
        ...

    def heartbeat(self, latency: float, via: Via) -> None:
        """A heartbeat was answered ``latency`` seconds after it was sent."""
        ...

    def error(self, kind: str) -> None:
        """Something failed: ``register``, ``heartbeat``, ``connect``, ``protocol``, ``handler``."""
        ...

    def channel(self, is_open: bool) -> None:
        """A WebSocket channel opened or closed."""
        ...

    def reconnect(self) -> None:
        """An open channel was lost and the agent goes on to reconnect."""
        ...


class NullRecorder:
    def registered(self, seconds: float) -> None:
        pass

    def heartbeat(self, latency: float, via: Via) -> None:
        pass

    def error(self, kind: str) -> None:
        pass

    def channel(self, is_open: bool) -> None:
        pass

    def reconnect(self) -> None:
        pass


@dataclass(frozen=True)
class Percentiles:
    p50: float
    p95: float
    p99: float
    max: float
    mean: float
    count: int

    @classmethod
    def of(cls, seconds: np.ndarray[Any, np.dtype[np.float64]]) -> Percentiles:
        """Percentiles of round trips given in seconds, reported in milliseconds."""
        if seconds.size == 0:
            return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0)
        ms = seconds * 1000.0
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        return cls(
            p50=round(float(p50), 3),
            p95=round(float(p95), 3),
            p99=round(float(p99), 3),
            max=round(float(ms.max()), 3),
            mean=round(float(ms.mean()), 3),
            count=int(ms.size),
        )

    def to_json(self) -> dict[str, float | int]:
        return {
            "p50": self.p50,
            "p95": self.p95,
            "p99": self.p99,
            "max": self.max,
            "mean": self.mean,
            "count": self.count,
        }


class FleetStats:
    """Shared counters of a fleet (one asyncio loop, so no locks)."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self.started = now()
        self.registered_count = 0
        self.first_registered_at: float | None = None
        self.last_registered_at: float | None = None
        self.heartbeats = 0
        self.http_heartbeats = 0
        self.errors: Counter[str] = Counter()
        self.reconnects = 0
        self.online = 0
        self.peak_online = 0
        self.latencies = array("d")
        self.steady_index: int | None = None
        self.steady_at: float | None = None

    # --- Recorder ------------------------------------------------------------------------------

    def registered(self, seconds: float) -> None:
        now = self._now()
        self.registered_count += 1
        if self.first_registered_at is None:
            self.first_registered_at = now - seconds
        self.last_registered_at = now

    def heartbeat(self, latency: float, via: Via) -> None:
        self.heartbeats += 1
        if via == "http":
            self.http_heartbeats += 1
        self.latencies.append(latency)

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def channel(self, is_open: bool) -> None:
        self.online += 1 if is_open else -1
        self.peak_online = max(self.peak_online, self.online)

    def reconnect(self) -> None:
        self.reconnects += 1

    # --- reading -------------------------------------------------------------------------------

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def mark_steady(self) -> None:
        """Start-up is over (every device registered and connected): later round trips are the
        steady state."""
        if self.steady_index is None:
            self.steady_index = len(self.latencies)
            self.steady_at = self._now()

    def latency(self, start: int = 0, stop: int | None = None) -> Percentiles:
        if not self.latencies:
            return Percentiles.of(np.empty(0))
        # copy at once: a live view would stop the array from growing
        return Percentiles.of(np.frombuffer(self.latencies, dtype=np.float64)[start:stop].copy())

    def registration_seconds(self) -> float:
        if self.first_registered_at is None or self.last_registered_at is None:
            return 0.0
        return self.last_registered_at - self.first_registered_at
