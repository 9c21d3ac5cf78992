"""Exponential back-off with jitter, capped: how long to wait before the next reconnect.

The n-th consecutive failure waits ``d = min(cap, base * factor**n)`` seconds, jittered to a value
between ``d/2`` and ``d`` ("equal jitter"): the wait still grows, but a thousand agents that lost
their coordinator at the same moment spread their retries instead of returning in one wave.
"""

from __future__ import annotations

import numpy as np


class Backoff:
    __slots__ = ("_rng", "attempts", "base", "cap", "factor")

    def __init__(
        self,
        base: float = 1.0,
        cap: float = 60.0,
        factor: float = 2.0,
        *,
        rng: np.random.Generator | None = None,
    ) -> None:
        if base <= 0 or cap < base or factor < 1:
            raise ValueError("need 0 < base <= cap and factor >= 1")
        self.base = base
        self.cap = cap
        self.factor = factor
        self.attempts = 0
        self._rng = rng if rng is not None else np.random.default_rng()

    def ceiling(self) -> float:
        """The un-jittered wait for the next attempt."""
        return min(self.cap, self.base * self.factor ** min(self.attempts, 64))

    def next(self) -> float:
        """The wait before the next attempt; each call counts one more failure."""
        ceiling = self.ceiling()
        self.attempts += 1
        return ceiling / 2 + float(self._rng.uniform(0.0, ceiling / 2))

    def reset(self) -> None:
        """After a success: the next failure starts again from ``base``."""
        self.attempts = 0
