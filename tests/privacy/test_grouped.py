"""Random groups, and robust aggregation of the groups' sums."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

from fogcoord.privacy.grouped import grouped_robust_aggregate, random_groups
from fogcoord.privacy.robust import METHODS, Method

F64 = NDArray[np.float64]
IDS = [f"client-{i:02d}" for i in range(23)]


# --- grouping ---------------------------------------------------------------------------------


@given(
    st.sets(st.text(min_size=1, max_size=6), min_size=1, max_size=60),
    st.integers(1, 8),
    st.integers(0, 2**64),
)
def test_groups_partition_the_ids_into_near_equal_groups_of_at_least_the_size(
    ids: set[str], size: int, seed: int
) -> None:
    if len(ids) < size:
        with pytest.raises(ValueError, match="cannot form a group"):
            random_groups(ids, size, seed)
        return
    groups = random_groups(ids, size, seed)
    members = [m for g in groups for m in g]
    assert sorted(members) == sorted(ids)
    assert len(groups) == len(ids) // size
    sizes = {len(g) for g in groups}
    assert min(sizes) >= size
    assert max(sizes) - min(sizes) <= 1
    assert all(g == sorted(g) for g in groups)


def test_groups_depend_only_on_the_seed_and_the_set_of_ids() -> None:
    groups = random_groups(IDS, 5, 42)
    assert random_groups(list(reversed(IDS)), 5, 42) == groups
    assert random_groups(set(IDS), 5, 42) == groups
    assert random_groups(IDS, 5, 43) != groups
    assert random_groups(IDS, 5, "round-9") == random_groups(IDS, 5, b"round-9")
    assert random_groups(IDS, 5, "round-9") != random_groups(IDS, 5, "round-10")


def test_anyone_can_recompute_the_groups_from_the_seed() -> None:
    ids = [f"c{i}" for i in range(7)]
    seed = b"round-1"
    order = sorted(
        ids, key=lambda c: hashlib.sha256(b"\0" * 7 + b"\x07" + seed + c.encode()).digest()
    )
    expected = [sorted(order[:4]), sorted(order[4:])]
    assert random_groups(ids, 3, seed) == expected
    # pinned: every party, in every process and on every platform, gets these groups
    assert expected == [["c2", "c3", "c4", "c5"], ["c0", "c1", "c6"]]
    assert random_groups(ids, 3, 12) == random_groups(ids, 3, "12")


def test_every_client_is_grouped_with_every_other_over_many_seeds() -> None:
    together: set[frozenset[str]] = set()
    for seed in range(200):
        for g in random_groups(IDS[:8], 2, seed):
            together.add(frozenset(g))
    assert len(together) == 8 * 7 // 2


@pytest.mark.parametrize(
    ("ids", "size", "seed", "message"),
    [
        (["a", "a", "b"], 1, 0, "distinct"),
        (["a", "b"], 0, 0, "group_size must be >= 1"),
        (["a", "b"], 3, 0, "2 participants cannot form a group of at least 3"),
        (["a", "b"], 1, -1, "non-negative"),
    ],
)
def test_bad_groupings(ids: list[str], size: int, seed: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        random_groups(ids, size, seed)


# --- aggregation ------------------------------------------------------------------------------


def federation(
    n_clients: int, group_size: int, byzantine: int, d: int = 40, seed: int = 0
) -> tuple[dict[str, F64], dict[str, int], F64, int]:
    """Secure-aggregated group sums of a round in which ``byzantine`` clients send huge vectors.

    Returns the sums, the sizes, the honest clients' mean and the number of spoiled groups.
    """
    rng = np.random.default_rng(seed)
    ids = [f"c{i:03d}" for i in range(n_clients)]
    shared = rng.standard_normal(d)
    updates = {c: shared + 0.5 * rng.standard_normal(d) for c in ids}
    bad = set(rng.choice(ids, byzantine, replace=False).tolist())
    honest_mean = np.mean([updates[c] for c in ids if c not in bad], axis=0)
    for c in bad:
        updates[c] = rng.standard_normal(d) * 1e8
    groups = random_groups(ids, group_size, seed)
    sums = {f"g{j}": np.sum([updates[c] for c in g], axis=0) for j, g in enumerate(groups)}
    sizes = {f"g{j}": len(g) for j, g in enumerate(groups)}
    spoiled = sum(1 for g in groups if bad & set(g))
    return sums, sizes, honest_mean, spoiled


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(3))
def test_byzantine_clients_spoil_only_their_groups(method: Method, seed: int) -> None:
    sums, sizes, honest_mean, spoiled = federation(110, 5, byzantine=3, seed=seed)
    assert 1 <= spoiled <= 3
    value = grouped_robust_aggregate(sums, sizes, method, f=3)
    # a group mean of 5 honest updates is within about 0.5 / sqrt(5) per coordinate of the mean
    assert np.max(np.abs(value - honest_mean)) < 1.0
    naive = sum(sums.values()) / sum(sizes.values())
    assert np.max(np.abs(naive - honest_mean)) > 1e5


def test_the_groups_per_client_means_are_aggregated() -> None:
    sums = {"a": np.array([2.0, 4.0]), "b": np.array([9.0, 0.0]), "c": np.array([4.0, 4.0])}
    sizes = {"a": 2, "b": 3, "c": 2}
    np.testing.assert_allclose(grouped_robust_aggregate(sums, sizes, "median"), [2.0, 2.0])
    np.testing.assert_allclose(
        grouped_robust_aggregate(sums, sizes, "trimmed_mean", f=1), [2.0, 2.0]
    )


def test_a_nonfinite_group_sum_is_left_out() -> None:
    sums, sizes, honest_mean, _ = federation(60, 5, byzantine=0)
    sums["g0"] = np.full_like(sums["g0"], np.nan)
    value = grouped_robust_aggregate(sums, sizes, "krum", f=1)
    assert np.isfinite(value).all()
    assert np.max(np.abs(value - honest_mean)) < 1.0


def test_float32_group_sums_are_accepted() -> None:
    sums, sizes, honest_mean, _ = federation(40, 4, byzantine=1)
    f32 = {g: s.astype(np.float32) for g, s in sums.items()}
    value = grouped_robust_aggregate(f32, sizes, "bulyan", f=1)
    assert value.dtype == np.float64
    assert np.max(np.abs(value - honest_mean)) < 1.0


@pytest.mark.parametrize(
    ("sums", "sizes", "method", "f", "message"),
    [
        ({"a": np.ones(2)}, {"b": 1}, "median", 0, "name different groups"),
        ({}, {}, "median", 0, "no groups"),
        ({"a": np.ones(2)}, {"a": 0}, "median", 0, "sizes must be >= 1"),
        ({"a": np.ones(2), "b": np.ones(3)}, {"a": 1, "b": 1}, "median", 0, "differ in size"),
        ({"a": np.ones(2), "b": np.ones(2)}, {"a": 1, "b": 1}, "krum", 0, r"2f \+ 3"),
        (
            {g: np.ones(2) for g in "abcdef"},
            dict.fromkeys("abcdef", 3),
            "bulyan",
            1,
            r"Bulyan with f=1 needs n >= 4f \+ 3 = 7",
        ),
    ],
)
def test_bad_aggregations(
    sums: dict[str, F64], sizes: dict[str, int], method: Method, f: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        grouped_robust_aggregate(sums, sizes, method, f)
