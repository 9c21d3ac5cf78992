"""Market figures kept as auctions settle and revenue is paid: prices over windows, fill, volume."""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from decimal import Decimal

import numpy as np

from fogcoord.contracts.marketplace import PriceStats
from fogcoord.contracts.units import MICRO_PER_TOKEN

WINDOWS: dict[str, float | None] = {"1h": 3_600.0, "24h": 86_400.0, "all": None}
MAX_PRICES = 100_000


def _tokens(micro: float) -> Decimal:
    return (Decimal(repr(micro)) / MICRO_PER_TOKEN).quantize(Decimal("0.000001"))


class MarketBook:
    def __init__(self) -> None:
        self.times: deque[float] = deque(maxlen=MAX_PRICES)
        self.prices: deque[int] = deque(maxlen=MAX_PRICES)
        self.settled = 0
        self.failed = 0
        self.slots_asked = 0
        self.slots_filled = 0
        self.revenue: dict[str, int] = {}

    def auction_closed(self, at: float, slots: int, filled: int, price: int | None) -> None:
        self.slots_asked += slots
        self.slots_filled += filled
        if price is None:
            self.failed += 1
            return
        self.settled += 1
        self.times.append(at)
        self.prices.append(price)

    def paid(self, role: str, amount: int) -> None:
        if amount:
            self.revenue[role] = self.revenue.get(role, 0) + amount

    @property
    def volume(self) -> int:
        return sum(v for role, v in self.revenue.items() if role != "refund")

    @property
    def fill_rate(self) -> float:
        return self.slots_filled / self.slots_asked if self.slots_asked else 0.0

    def window(self, now: float, seconds: float | None) -> PriceStats:
        start = 0 if seconds is None else bisect_left(self.times, now - seconds)
        prices = np.fromiter(
            (self.prices[i] for i in range(start, len(self.prices))), dtype=np.float64
        )
        if prices.size == 0:
            return PriceStats()
        p50, p95 = np.percentile(prices, [50, 95])
        return PriceStats(
            count=int(prices.size),
            last=_tokens(float(prices[-1])),
            mean=_tokens(float(prices.mean())),
            p50=_tokens(float(p50)),
            p95=_tokens(float(p95)),
        )

    def windows(self, now: float) -> dict[str, PriceStats]:
        return {name: self.window(now, seconds) for name, seconds in WINDOWS.items()}
