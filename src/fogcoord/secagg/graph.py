"""The SecAgg+ communication graph: who masks with, and shares secrets to, whom.

SecAgg (Bonawitz et al., CCS 2017) has every pair of clients agree on a mask, so each client
does ``O(n)`` key agreements and mask expansions. SecAgg+ (Bell et al., "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS 2020) replaces the complete graph with a
sparse random ``k``-regular one: a client masks only with, and secret-shares only to, its ``k``
neighbours, and ``k = O(log n)`` keeps privacy and dropout resilience with high probability.
With ``k >= n - 1`` the graph is complete and the protocol is SecAgg.

Like Bell et al., the graph is a Harary graph ``H(k, n)`` -- clients on a ring, each joined to
its ``floor(k/2)`` nearest on either side, and for odd ``k`` also to the client across the ring
-- laid over a random ordering of the clients. The ordering sorts clients by
``SHA-256(seed || id)``, so every party that knows the public seed (sent in the setup message)
computes the same graph with no further communication and no dependence on numpy's generators.

A ``k``-regular graph on ``n`` vertices exists only when ``n * k`` is even; when ``n`` and ``k``
are both odd, one client gets ``k + 1`` neighbours (the usual Harary construction). Every client
has at least ``k`` neighbours, which is what the secret-sharing threshold is checked against.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def effective_degree(clients: int, neighbours: int | None) -> int:
    """The minimum number of neighbours of a client: ``k``, capped at ``n - 1`` (complete)."""
    if clients < 2:
        raise ValueError(f"secure aggregation needs at least 2 clients, got {clients}")
    if neighbours is None:
        return clients - 1
    if neighbours < 1:
        raise ValueError(f"every client needs at least one neighbour, got {neighbours}")
    return min(neighbours, clients - 1)


def ring_order(participants: Iterable[str], seed: bytes) -> list[str]:
    """The clients in the seeded random order of the ring."""
    return sorted(set(participants), key=lambda p: (hashlib.sha256(seed + p.encode()).digest(), p))


class NeighbourGraph:
    """The seeded Harary graph of one round (complete when ``k >= n - 1``).

    Neighbourhoods are computed on demand from ring positions, so a client pays ``O(k)`` for its
    own rather than building the whole graph.
    """

    def __init__(self, participants: Iterable[str], neighbours: int | None, seed: bytes) -> None:
        self.order = ring_order(participants, seed)
        self.participants = tuple(sorted(self.order))
        n = len(self.order)
        self.degree = effective_degree(n, neighbours)
        self.complete = self.degree == n - 1
        self._position = {p: i for i, p in enumerate(self.order)}
        self._rank = {p: i for i, p in enumerate(self.participants)}
        self._cache: dict[str, frozenset[str]] = {}
        self._abscissae: dict[str, dict[str, int]] = {}

    def __len__(self) -> int:
        return len(self.order)

    def __contains__(self, client: object) -> bool:
        return client in self._position

    def neighbours(self, client: str) -> frozenset[str]:
        """The clients ``client`` masks with and shares its secrets to."""
        cached = self._cache.get(client)
        if cached is not None:
            return cached
        if client not in self._position:
            raise KeyError(f"{client} is not a participant")
        if self.complete:
            found = frozenset(self.order) - {client}
        else:
            found = frozenset(self.order[j] for j in self._adjacent(self._position[client]))
        self._cache[client] = found
        return found

    def _adjacent(self, i: int) -> set[int]:
        n, k = len(self.order), self.degree
        out = {(i + d) % n for d in range(1, k // 2 + 1)}
        out |= {(i - d) % n for d in range(1, k // 2 + 1)}
        if k % 2:
            if n % 2 == 0:
                out.add((i + n // 2) % n)
            else:
                # odd n: vertex j < (n + 1) / 2 is joined to j + (n + 1) / 2; that pairs vertex 0
                # twice, the one vertex of degree k + 1
                half = (n + 1) // 2
                if i < half:
                    out.add((i + half) % n)
                j = (i - half) % n
                if j < half:
                    out.add(j)
        out.discard(i)
        return out

    def abscissa(self, owner: str, holder: str) -> int:
        """The Shamir abscissa of ``holder``'s share of ``owner``'s secrets: its rank among
        ``owner``'s neighbours, from 1. Fixed by the graph, so dropouts never shift it."""
        if self.complete:
            rank = self._rank[holder]
            if holder == owner:
                raise KeyError(f"{owner} holds no share of its own secrets")
            return rank + (0 if self._rank[owner] > rank else -1) + 1
        return self._ranks(owner)[holder]

    def abscissae(self, owner: str) -> dict[str, int]:
        """The abscissa of every holder of ``owner``'s shares."""
        return dict(self._ranks(owner))

    def _ranks(self, owner: str) -> dict[str, int]:
        found = self._abscissae.get(owner)
        if found is None:
            ranked = sorted(self.neighbours(owner))
            found = self._abscissae[owner] = {holder: i + 1 for i, holder in enumerate(ranked)}
        return found

    def as_dict(self) -> dict[str, frozenset[str]]:
        return {p: self.neighbours(p) for p in self.participants}
