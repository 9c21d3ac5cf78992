"""Quorum and adaptive replication as pure rules: when a result is accepted, how much to check."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from fogcoord.jobs.quorum import ResultKey, audit_probability, extra_replicas, judge

# few distinct values, so that groups of equal results are common
keys = st.tuples(
    st.sampled_from(["ok", "trap"]),
    st.sampled_from(["a" * 64, "b" * 64, "c" * 64]),
    st.integers(min_value=0, max_value=2),
)
results = st.lists(keys, max_size=12)
quorums = st.integers(min_value=1, max_value=8)
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@given(results, quorums)
def test_a_result_is_accepted_exactly_when_a_unique_largest_group_reaches_the_quorum(
    rs: list[ResultKey], quorum: int
) -> None:
    verdict = judge(rs, quorum)
    sizes = Counter(rs)
    best = max(sizes.values(), default=0)
    leaders = [k for k, n in sizes.items() if n == best]
    assert verdict.best == best
    if best >= quorum and len(leaders) == 1:
        assert verdict.accepted == leaders[0]
    else:
        assert verdict.accepted is None
        assert verdict.agreeing == ()


@given(results, quorums)
def test_the_agreeing_indices_are_exactly_the_accepted_group_in_order(
    rs: list[ResultKey], quorum: int
) -> None:
    verdict = judge(rs, quorum)
    if verdict.accepted is not None:
        assert verdict.agreeing == tuple(i for i, r in enumerate(rs) if r == verdict.accepted)
        assert len(verdict.agreeing) == verdict.best >= quorum


@given(results, quorums)
def test_the_verdict_does_not_depend_on_the_order_results_came_in(
    rs: list[ResultKey], quorum: int
) -> None:
    forward, backward = judge(rs, quorum), judge(rs[::-1], quorum)
    assert (forward.accepted, forward.best) == (backward.accepted, backward.best)


def test_agreement_must_be_on_outcome_output_and_fuel() -> None:
    ok = ("ok", "a" * 64, 100)
    assert judge([ok, ok], 2).accepted == ok
    for other in (("trap", "a" * 64, 100), ("ok", "b" * 64, 100), ("ok", "a" * 64, 101)):
        assert judge([ok, other], 2).accepted is None
        assert judge([ok, other, ok], 2).agreeing == (0, 2)
    # one more vote does not break a tie, a strict plurality does
    assert judge([ok, ok, ("ok", "b" * 64, 1), ("ok", "b" * 64, 1)], 2).accepted is None
    assert judge([ok, ("ok", "b" * 64, 1), ("ok", "c" * 64, 2)], 1).accepted is None
    assert judge([], 1).accepted is None


@given(unit, unit)
def test_the_audit_probability_falls_with_trust_but_never_below_its_floor(
    trust: float, floor: float
) -> None:
    p = audit_probability(trust, floor)
    assert floor <= p <= 1.0
    assert p == max(floor, 1.0 - trust)
    assert audit_probability(min(1.0, trust + 0.1), floor) <= p


def test_a_new_device_is_audited_more_than_a_trusted_one() -> None:
    assert audit_probability(0.0, 0.05) == 1.0
    assert audit_probability(0.99, 0.05) == 0.05
    assert audit_probability(0.5, 0.05) == 0.5


@given(st.integers(min_value=0, max_value=20), st.integers(min_value=0, max_value=20), quorums)
def test_extra_replicas_bring_the_best_group_to_the_quorum(
    returned: int, best: int, quorum: int
) -> None:
    best = min(best, returned)
    extra = extra_replicas(returned, best, quorum)
    assert extra >= 1
    if returned == 0:
        assert extra == quorum
    else:
        assert best + extra >= quorum
        assert extra == max(1, quorum - best)
