"""A scalable Bloom filter of every transfer id the ledger has seen.

Idempotency needs "was this id ever used?" for every incoming transfer. Asking the database for
each batch costs a round trip on the hot path, and keeping every id in a Python set costs tens of
bytes per id. A Bloom filter answers "certainly new" for almost all fresh ids at about 1.2 bytes
per id; only its rare "maybe" goes to the database. Written here (it is small) because it hashes
with Python's own string hash, which each string caches, so a check costs well under a
microsecond; packaged filters re-hash every key with their own function.
"""

from __future__ import annotations

import math

_MASK = (1 << 64) - 1


class _Layer:
    __slots__ = ("bits", "capacity", "count", "k", "m")

    def __init__(self, capacity: int, error_rate: float) -> None:
        self.capacity = capacity
        self.m = max(64, int(-capacity * math.log(error_rate) / (math.log(2) ** 2)))
        self.k = max(1, round(self.m / capacity * math.log(2)))
        self.bits = bytearray((self.m + 7) // 8)
        self.count = 0

    def _positions(self, h: int) -> list[int]:
        h1 = h & 0xFFFFFFFF
        h2 = (h >> 32) | 1
        m = self.m
        return [(h1 + i * h2) % m for i in range(self.k)]

    def add(self, h: int) -> None:
        bits = self.bits
        for p in self._positions(h):
            bits[p >> 3] |= 1 << (p & 7)
        self.count += 1

    def __contains__(self, h: int) -> bool:
        bits = self.bits
        return all(bits[p >> 3] & (1 << (p & 7)) for p in self._positions(h))


class IdFilter:
    """``id in f`` is False only for ids never added; True may rarely be wrong."""

    def __init__(self, capacity: int = 1 << 20, error_rate: float = 0.01) -> None:
        self._error = error_rate
        self._layers = [_Layer(capacity, error_rate / 2)]

    def add(self, key: str) -> None:
        layer = self._layers[-1]
        if layer.count >= layer.capacity:
            # Each new layer is twice as large with half the error rate, so the total false
            # positive rate stays below error_rate however many ids arrive.
            layer = _Layer(layer.capacity * 2, self._error / 2 ** (len(self._layers) + 1))
            self._layers.append(layer)
        layer.add(hash(key) & _MASK)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        h = hash(key) & _MASK
        return any(h in layer for layer in self._layers)

    def __len__(self) -> int:
        return sum(layer.count for layer in self._layers)

    @property
    def nbytes(self) -> int:
        return sum(len(layer.bits) for layer in self._layers)
