"""The scalable Bloom filter of seen transfer ids: never a false "new", rarely a false "seen"."""

from __future__ import annotations

import pytest

from fogcoord.tokenomics.idfilter import IdFilter


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def false_positive_rate(f: IdFilter, probes: list[str]) -> float:
    return sum(p in f for p in probes) / len(probes)


def test_no_false_negatives_for_200k_ids() -> None:
    f = IdFilter()
    added = ids("tx", 200_000)
    for key in added:
        f.add(key)
    assert len(f) == 200_000
    assert all(key in f for key in added)


@pytest.mark.parametrize("error_rate", [0.01, 0.05])
def test_false_positives_stay_below_the_configured_rate_at_capacity(error_rate: float) -> None:
    f = IdFilter(capacity=50_000, error_rate=error_rate)
    for key in ids("in", 50_000):
        f.add(key)
    rate = false_positive_rate(f, ids("out", 100_000))
    assert rate < error_rate
    assert rate > 0  # it is a Bloom filter, not a set: the check above is not vacuous


def test_growth_beyond_capacity_keeps_every_id_and_the_rate() -> None:
    f = IdFilter(capacity=5_000, error_rate=0.01)
    first = f.nbytes
    added = ids("grow", 80_000)  # 16 times the capacity: 5k + 10k + 20k + 40k + 80k layers
    for key in added:
        f.add(key)
    assert len(f) == 80_000
    assert f.nbytes > 8 * first
    assert all(key in f for key in added)
    assert false_positive_rate(f, ids("never", 100_000)) < 0.01


def test_memory_is_about_a_byte_or_two_per_id() -> None:
    f = IdFilter(capacity=100_000, error_rate=0.01)
    assert 100_000 <= f.nbytes <= 200_000


def test_an_empty_filter_and_odd_keys() -> None:
    f = IdFilter(capacity=10)
    assert len(f) == 0
    assert "x" not in f
    f.add("x")
    f.add("")
    assert "x" in f
    assert "" in f
    assert 42 not in f
    assert None not in f
    assert b"x" not in f
