"""Quorum and adaptive replication: when a task's result is accepted, and how much to check.

Replicas are compared on ``(outcome, output_hash, fuel)``: execution is deterministic and fuel is
exactly repeatable, so honest devices agree on all three, and a device that inflates its fuel
disagrees as surely as one that returns a wrong output. A task is accepted when the largest
agreeing group reaches the quorum and no other group is as large.

Adaptive replication follows BOINC: a device with ``trusted_streak`` valid results in a row runs
tasks alone, and each lone result is audited (re-executed elsewhere) with probability
``max(audit_min_probability, 1 - trust)``, so checking falls as trust grows but never to zero:
a device that starts to cheat once trusted is caught, on average, within ``1 / p`` lies, and one
caught lie costs it all its pending pay in the job and its eligibility.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ResultKey = tuple[str, str, int]
"""(outcome, output_hash, fuel)"""


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: ResultKey | None
    agreeing: tuple[int, ...]
    """Indices of the results in the accepted group, in the order given."""
    best: int
    """Size of the largest group."""


def judge(results: Sequence[ResultKey], quorum: int) -> Verdict:
    groups: dict[ResultKey, list[int]] = {}
    for i, key in enumerate(results):
        groups.setdefault(key, []).append(i)
    if not groups:
        return Verdict(None, (), 0)
    ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    key, members = ranked[0]
    best = len(members)
    tie = len(ranked) > 1 and len(ranked[1][1]) == best
    if best >= quorum and not tie:
        return Verdict(key, tuple(members), best)
    return Verdict(None, (), best)


def audit_probability(trust: float, floor: float) -> float:
    return min(1.0, max(floor, 1.0 - trust))


def extra_replicas(returned: int, best: int, quorum: int) -> int:
    """Replicas still needed for the best group to reach the quorum (at least one)."""
    return max(1, quorum - best) if returned else quorum
