"""Grouped aggregation: secure aggregation inside small random groups, robust aggregation across.

Secure aggregation and Byzantine-robust aggregation pull in opposite directions: a robust rule must
look at individual updates to tell the outliers, and secure aggregation exists so that nobody can.
The three ways to aggregate a round, and what each protects against:

**Plain secure aggregation** (``fogcoord.secagg``). The server learns only the sum of all
updates, never an individual one. There is no robustness at all: a single Byzantine client can
add any vector to the sum, and nobody can tell whose it was.

**Plain robust aggregation** (:mod:`fogcoord.privacy.robust`: Krum and Multi-Krum, Blanchard et al.
2017; Bulyan, El Mhamdi et al. 2018; coordinate-wise median and trimmed mean, Yin et al. 2018). The
server sees every individual update, so there is no secrecy towards it, and the aggregate
withstands up to ``f`` Byzantine clients (each rule's bound on ``f`` relative to ``n``).

**Grouped** (this module, the middle way). Clients are split into random groups of at least
``group_size`` (:func:`random_groups`); each group runs secure aggregation, so the server sees only
the group sums. A Byzantine client can spoil only its own group's sum, so ``b`` Byzantine clients
spoil at most ``b`` groups, and a robust rule over the groups' per-client means
(:func:`grouped_robust_aggregate`) withstands up to ``f`` spoiled groups, whatever the spoiled sums
are. The price on both sides:

* privacy drops from "only the total" to ``group_size``-anonymity: the server learns the sum of
  ``group_size`` or so updates, and a client's update hides among those of its group only;
* robustness is counted in groups, not clients: there are ``n / group_size`` groups, so the same
  ``f`` is a larger share of them, and an honest client in a spoiled group loses its influence;
* the groups' means average ``group_size`` updates each, so honest group means are closer to each
  other than single updates are, which makes outliers among the groups easier to tell apart.

The grouping must be random and unpredictable to the clients: whoever chooses the groups can put a
victim with ``group_size - 1`` colluders, who then learn its update by subtracting their own from
the sum. :func:`random_groups` is a deterministic function of its seed (through SHA-256), so a seed
that no party controls (for example one derived from the round's public randomness) gives every
participant the same groups and lets each of them check them.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable, Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fogcoord.privacy.robust import Method, Precision, robust_aggregate

__all__ = ["grouped_robust_aggregate", "random_groups"]


def _seed_bytes(seed: int | str | bytes) -> bytes:
    if isinstance(seed, bytes):
        return seed
    if isinstance(seed, str):
        return seed.encode()
    if isinstance(seed, bool) or operator.index(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, a str or bytes; got {seed!r}")
    return str(operator.index(seed)).encode()


def random_groups(ids: Iterable[str], group_size: int, seed: int | str | bytes) -> list[list[str]]:
    """Split ``ids`` into random groups of at least ``group_size`` members each.

    There are ``len(ids) // group_size`` groups, sizes differing by at most one (the larger ones
    first). The order is that of ``SHA-256(len(seed) || seed ||
    id)`` (``len`` as 8 big-endian bytes; an int seed is its decimal text, a str its UTF-8), so the
    groups depend only on the set of ids and the seed, and anyone can recompute them without this
    code or a particular random number generator. Each group lists its members sorted.
    """
    members = list(ids)
    if len(set(members)) != len(members):
        raise ValueError("ids must be distinct")
    group_size = operator.index(group_size)
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if len(members) < group_size:
        raise ValueError(
            f"{len(members)} participants cannot form a group of at least {group_size}"
        )
    key = _seed_bytes(seed)
    prefix = len(key).to_bytes(8, "big") + key
    members.sort(key=lambda m: (hashlib.sha256(prefix + m.encode()).digest(), m))
    count = len(members) // group_size
    base, extra = divmod(len(members), count)
    groups: list[list[str]] = []
    start = 0
    for j in range(count):
        size = base + (1 if j < extra else 0)
        groups.append(sorted(members[start : start + size]))
        start += size
    return groups


def grouped_robust_aggregate(
    group_sums: Mapping[str, ArrayLike],
    group_sizes: Mapping[str, int],
    method: Method = "median",
    f: int = 0,
    *,
    precision: Precision = "input",
) -> NDArray[np.float64]:
    """Robust aggregate of the groups' per-client means, tolerating ``f`` spoiled groups.

    ``group_sums`` maps each group to the sum of its members' updates (the output of secure
    aggregation) and ``group_sizes`` to its number of members. Each sum is divided by its size and
    the means are aggregated with ``method`` (see :func:`fogcoord.privacy.robust.robust_aggregate`
    for what each needs: ``krum``/``multi_krum`` ``g >= 2f + 3`` groups, ``bulyan`` ``g >= 4f + 3``,
    ``median``/``trimmed_mean`` ``g >= 2f + 1``). A group sum holding NaN or infinity is spoiled
    by definition and left out. The groups count equally, whatever their sizes: weighting by size
    would let a spoiled large group weigh more.
    """
    if set(group_sums) != set(group_sizes):
        missing = sorted(set(group_sums) ^ set(group_sizes))
        raise ValueError(f"group_sums and group_sizes name different groups: {missing}")
    if not group_sums:
        raise ValueError("no groups to aggregate")
    means = []
    for group, total in group_sums.items():
        size = group_sizes[group]
        if isinstance(size, bool) or operator.index(size) < 1:
            raise ValueError(f"group {group!r} has size {size!r}; sizes must be >= 1")
        with np.errstate(over="ignore", invalid="ignore"):
            means.append(np.asarray(total, dtype=np.float64).reshape(-1) / size)
    shapes = {m.shape for m in means}
    if len(shapes) > 1:
        raise ValueError(f"group sums differ in size: {sorted(s[0] for s in shapes)}")
    return robust_aggregate(np.stack(means), method, f, precision=precision).value
