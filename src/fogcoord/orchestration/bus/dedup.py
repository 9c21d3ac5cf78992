"""A time-windowed set of seen event ids, the in-process twin of JetStream's duplicate window."""

from __future__ import annotations

from collections import OrderedDict

from fogcoord.clock import Clock

DEFAULT_WINDOW_S = 120.0
"""JetStream's default duplicate window is two minutes."""


class DedupWindow:
    def __init__(self, clock: Clock, window_s: float = DEFAULT_WINDOW_S) -> None:
        self._clock = clock
        self._window = window_s
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, event_id: str) -> bool:
        """Record ``event_id``; True the first time it is seen inside the window."""
        now = self._clock.monotonic()
        horizon = now - self._window
        seen = self._seen
        while seen:
            oldest_id, at = next(iter(seen.items()))
            if at > horizon:
                break
            del seen[oldest_id]
        if event_id in seen:
            return False
        seen[event_id] = now
        return True
