"""Robust aggregators against their definitions written out as loops, and against attackers."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from fogcoord.privacy import robust
from fogcoord.privacy.robust import (
    METHODS,
    Method,
    bulyan,
    coordinate_median,
    krum,
    krum_scores,
    max_f,
    multi_krum,
    nonfinite_rows,
    pairwise_sq_distances,
    robust_aggregate,
    robust_mean,
    trimmed_mean,
)

F64 = NDArray[np.float64]


# --- definitions, written as loops ------------------------------------------------------------


def brute_distances(X: NDArray[Any]) -> F64:
    n = len(X)
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            D[i, j] = sum((float(a) - float(b)) ** 2 for a, b in zip(X[i], X[j], strict=True))
    return D


def brute_scores(D: F64, f: int, live: list[int] | None = None) -> dict[int, float]:
    live = list(range(len(D))) if live is None else live
    k = max(1, len(live) - f - 2)
    return {i: sum(sorted(D[i, j] for j in live if j != i)[:k]) for i in live}


def brute_krum(X: NDArray[Any], f: int) -> int:
    scores = brute_scores(brute_distances(X), f)
    return min(scores, key=lambda i: (scores[i], i))


def brute_bulyan(X: NDArray[Any], f: int) -> F64:
    D = brute_distances(X)
    remaining = list(range(len(X)))
    chosen: list[int] = []
    for _ in range(len(X) - 2 * f):
        scores = brute_scores(D, f, remaining)
        best = min(remaining, key=lambda i: (scores[i], i))
        chosen.append(best)
        remaining.remove(best)
    beta = len(chosen) - 2 * f
    out = np.zeros(X.shape[1])
    for c in range(X.shape[1]):
        column = [float(X[i, c]) for i in chosen]
        med = float(np.median(column))
        out[c] = float(np.mean(sorted(column, key=lambda v: abs(v - med))[:beta]))
    return out


def brute_trimmed(X: NDArray[Any], k: int) -> F64:
    out = np.zeros(X.shape[1])
    for c in range(X.shape[1]):
        column = sorted(float(v) for v in X[:, c])
        out[c] = sum(column[k : len(column) - k]) / (len(column) - 2 * k)
    return out


# continuous values, so that ties (where a rule may pick either) have probability zero
def matrices(min_n: int, max_n: int, max_d: int = 6) -> st.SearchStrategy[F64]:
    return st.tuples(
        st.integers(min_n, max_n), st.integers(1, max_d), st.integers(0, 2**32 - 1)
    ).map(lambda t: np.random.default_rng(t[2]).standard_normal((t[0], t[1])) * 3.0)


def with_f(m: F64, per: int) -> st.SearchStrategy[tuple[F64, int]]:
    return st.tuples(st.just(m), st.integers(0, max(0, (len(m) - 3) // per)))


# --- distances --------------------------------------------------------------------------------


@given(matrices(1, 8))
def test_distances_match_the_definition(X: F64) -> None:
    np.testing.assert_allclose(pairwise_sq_distances(X), brute_distances(X), rtol=1e-9, atol=1e-9)


def test_distances_are_accurate_in_float32_despite_a_large_shared_component(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # several column blocks, each centred on its own
    monkeypatch.setattr(robust, "_BLOCK_BYTES", 4096)
    rng = np.random.default_rng(3)
    shared = rng.standard_normal(3000) * 1e3
    X = (shared + rng.standard_normal((8, 3000))).astype(np.float32)
    X[0] *= 1e4  # a huge Byzantine row must not spoil the centre
    exact = brute_distances(X.astype(np.float64))
    got = pairwise_sq_distances(X)
    honest = np.ix_(range(1, 8), range(1, 8))
    np.testing.assert_allclose(got[honest], exact[honest], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(got[0], exact[0], rtol=1e-5)
    # a bare float32 Gram matrix of the same rows loses the honest distances entirely
    G = X[1:] @ X[1:].T
    sq = np.diagonal(G).astype(np.float64)
    naive = sq[:, None] + sq[None, :] - 2.0 * G
    off = ~np.eye(7, dtype=bool)
    assert np.max(np.abs(naive - exact[honest])[off] / exact[honest][off]) > 1e-3


def test_float64_precision_matches_the_definition_on_float32_input() -> None:
    X = np.random.default_rng(4).standard_normal((6, 500)).astype(np.float32) + 100
    got = pairwise_sq_distances(X, precision="float64")
    np.testing.assert_allclose(got, brute_distances(X.astype(np.float64)), rtol=1e-12, atol=1e-9)


def test_huge_finite_float32_values_fall_back_to_float64() -> None:
    X = np.zeros((5, 40), dtype=np.float32)
    X[:, 0] = [0, 1, 2, 3, 0]
    X[4, 1:] = 1e30  # its square overflows float32, not float64
    got = pairwise_sq_distances(X)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, brute_distances(X.astype(np.float64)), rtol=1e-6)


def test_distances_of_nonfinite_rows_are_infinite() -> None:
    X = np.arange(12, dtype=np.float64).reshape(4, 3)
    X[1, 2] = np.nan
    X[3, 0] = np.inf
    D = pairwise_sq_distances(X)
    assert np.isinf(D[1, [0, 2, 3]]).all()
    assert np.isinf(D[[0, 2], 3]).all()
    assert D[1, 1] == 0.0
    assert D[0, 2] == pytest.approx(3 * 36.0)
    assert nonfinite_rows(X) == (1, 3)


def test_integer_input_is_computed_in_float64() -> None:
    X = np.array([[0, 0], [3, 4], [6, 8]])
    np.testing.assert_allclose(pairwise_sq_distances(X), [[0, 25, 100], [25, 0, 25], [100, 25, 0]])


# --- Krum and Multi-Krum ----------------------------------------------------------------------


@given(matrices(3, 9).flatmap(lambda m: with_f(m, 2)))
def test_krum_scores_match_the_definition(case: tuple[F64, int]) -> None:
    X, f = case
    expected = brute_scores(brute_distances(X), f)
    np.testing.assert_allclose(krum_scores(X, f), [expected[i] for i in range(len(X))], rtol=1e-9)


@given(matrices(3, 9).flatmap(lambda m: with_f(m, 2)))
def test_krum_picks_the_lowest_score(case: tuple[F64, int]) -> None:
    X, f = case
    vector, index = krum(X, f)
    assert index == brute_krum(X, f)
    np.testing.assert_array_equal(vector, X[index])


@given(matrices(3, 9).flatmap(lambda m: with_f(m, 2)), st.data())
def test_multi_krum_averages_the_m_best(case: tuple[F64, int], data: st.DataObject) -> None:
    X, f = case
    m = data.draw(st.integers(1, len(X) - f))
    scores = brute_scores(brute_distances(X), f)
    best = sorted(scores, key=lambda i: (scores[i], i))[:m]
    mean, chosen = multi_krum(X, f, m)
    assert chosen == tuple(best)
    np.testing.assert_allclose(mean, X[best].mean(axis=0), rtol=1e-9, atol=1e-12)


def test_krum_ties_go_to_the_lower_index() -> None:
    X = np.array([[0.0], [1.0], [0.0], [1.0], [0.0]])
    assert krum(X, 0)[1] == 0
    assert multi_krum(X, 0, 3)[1] == (0, 2, 4)


def test_krum_is_invariant_to_the_order_of_the_updates() -> None:
    X = np.random.default_rng(5).standard_normal((11, 7))
    perm = np.random.default_rng(6).permutation(11)
    vector, index = krum(X, 3)
    pvector, pindex = krum(X[perm], 3)
    assert perm[pindex] == index
    np.testing.assert_array_equal(vector, pvector)


def test_float32_krum_scores_agree_with_float64() -> None:
    rng = np.random.default_rng(7)
    X = (rng.standard_normal(20_000) * 5 + rng.standard_normal((30, 20_000))).astype(np.float32)
    fast = krum_scores(X, 8)
    exact = krum_scores(X, 8, precision="float64")
    np.testing.assert_allclose(fast, exact, rtol=1e-6)


# --- coordinate-wise rules --------------------------------------------------------------------


@given(matrices(1, 9))
def test_median_is_numpys_median(X: F64) -> None:
    np.testing.assert_allclose(coordinate_median(X), np.median(X, axis=0), rtol=1e-12)


@given(matrices(1, 12), st.floats(0.0, 0.499))
def test_trimmed_mean_matches_the_definition(X: F64, beta: float) -> None:
    k = int(np.floor(beta * len(X) + 1e-9))
    np.testing.assert_allclose(trimmed_mean(X, beta), brute_trimmed(X, k), rtol=1e-9, atol=1e-12)


def test_coordinate_rules_over_several_column_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(robust, "_BLOCK_BYTES", 1024)
    X = np.random.default_rng(8).standard_normal((9, 1000)).astype(np.float32)
    np.testing.assert_allclose(coordinate_median(X), np.median(X, axis=0), rtol=1e-6)
    np.testing.assert_allclose(trimmed_mean(X, 0.25), brute_trimmed(X, 2), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bulyan(X, 1), brute_bulyan(X, 1), rtol=1e-6, atol=1e-7)


def test_trimmed_mean_beta_rounding_and_float64_accumulation() -> None:
    X = np.arange(100, dtype=np.float64)[:, None]
    # 0.29 * 100 is 28.999999999999996 in binary floating point: 29 are still trimmed
    assert trimmed_mean(X, 0.29)[0] == pytest.approx(np.mean(np.arange(29, 71)))
    big = np.full((1000, 1), 16_777_217.0).astype(np.float32)  # float32 cannot hold 2^24 + 1
    assert trimmed_mean(big, 0.0).dtype == np.float64


def test_median_and_trimmed_mean_return_float64() -> None:
    X = np.ones((4, 3), dtype=np.float32)
    assert coordinate_median(X).dtype == np.float64
    assert trimmed_mean(X, 0.2).dtype == np.float64


# --- Bulyan -----------------------------------------------------------------------------------


@settings(max_examples=50)
@given(matrices(3, 12).flatmap(lambda m: with_f(m, 4)))
def test_bulyan_matches_the_definition(case: tuple[F64, int]) -> None:
    X, f = case
    np.testing.assert_allclose(bulyan(X, f), brute_bulyan(X, f), rtol=1e-9, atol=1e-12)


def test_bulyan_reports_its_selection() -> None:
    X = np.random.default_rng(9).standard_normal((11, 4))
    result = robust_aggregate(X, "bulyan", 2)
    assert len(result.selected) == 11 - 4
    assert len(set(result.selected)) == len(result.selected)


# --- tolerance to attackers -------------------------------------------------------------------


def attacked(n: int, f: int, d: int = 50, seed: int = 0) -> tuple[F64, F64]:
    """``n - f`` honest updates around a common direction, then ``f`` huge colluding ones."""
    rng = np.random.default_rng(seed)
    honest = rng.standard_normal(d) + 0.5 * rng.standard_normal((n - f, d))
    attack = np.tile(rng.standard_normal(d) * 1e6, (f, 1)) + rng.standard_normal((f, d))
    return np.vstack([honest, attack]), honest


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(3))
def test_each_rule_stays_in_the_honest_hull_under_attack(method: Method, seed: int) -> None:
    n, f = 23, 5
    X, honest = attacked(n, f, seed=seed)
    perm = np.random.default_rng(seed).permutation(n)
    result = robust_aggregate(X[perm], method, f)
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    assert np.all(result.value >= lo - 1e-9)
    assert np.all(result.value <= hi + 1e-9)
    spread = np.linalg.norm(honest - honest.mean(axis=0), axis=1).max()
    assert np.linalg.norm(result.value - honest.mean(axis=0)) <= spread
    if method in ("krum", "multi_krum", "bulyan"):
        assert all(perm[i] < n - f for i in result.selected)


def test_the_plain_mean_is_what_the_attack_breaks() -> None:
    X, honest = attacked(23, 5)
    assert np.linalg.norm(X.mean(axis=0) - honest.mean(axis=0)) > 1e5


@pytest.mark.parametrize("method", METHODS)
def test_a_single_attacker_cannot_move_the_rule_far(method: Method) -> None:
    rng = np.random.default_rng(11)
    honest = rng.standard_normal((14, 8)) * 0.1 + 1.0
    for target in (np.full(8, 1e9), np.full(8, -1e9), rng.standard_normal(8) * 1e12):
        X = np.vstack([honest, target])
        value = robust_aggregate(X, method, 1).value
        assert np.all(np.abs(value - 1.0) < 0.5)


# --- non-finite updates -----------------------------------------------------------------------


def test_nonfinite_updates_are_left_out_and_count_against_f() -> None:
    X = np.random.default_rng(12).standard_normal((7, 5))
    X[2, 1] = np.nan
    X[5, 4] = -np.inf
    scores = krum_scores(X, 2)
    assert np.isinf(scores[[2, 5]]).all()
    finite = [0, 1, 3, 4, 6]
    # two of the f=2 Byzantine updates are known: Krum runs on 5 rows with f=0
    expected = brute_scores(brute_distances(X[finite]), 0)
    np.testing.assert_allclose(scores[finite], [expected[i] for i in range(5)], rtol=1e-9)
    assert krum(X, 2)[1] in finite
    for method in METHODS:
        result = robust_aggregate(X, method, 2)
        assert result.excluded == (2, 5)
        assert np.isfinite(result.value).all()
        assert not set(result.selected) & {2, 5}
    np.testing.assert_allclose(coordinate_median(X), np.median(X[finite], axis=0))
    np.testing.assert_allclose(trimmed_mean(X, 0.2), brute_trimmed(X[finite], 1))


def test_a_float32_nan_is_found_by_the_exact_check() -> None:
    X = np.ones((5, 10), dtype=np.float32)
    X[3, 7] = np.nan
    X[1] = 3e38  # a finite row whose sum overflows: not Byzantine by definition
    assert nonfinite_rows(X) == (3,)


def test_all_nonfinite_is_an_error() -> None:
    with pytest.raises(ValueError, match="all 2 updates are non-finite"):
        coordinate_median(np.full((2, 3), np.nan))


# --- errors -----------------------------------------------------------------------------------


def test_too_few_updates_for_f_is_a_clear_error() -> None:
    X = np.zeros((6, 2))
    with pytest.raises(ValueError, match=r"Krum with f=2 needs n >= 2f \+ 3 = 7 updates, got n=6"):
        krum_scores(X, 2)
    with pytest.raises(ValueError, match=r"Bulyan with f=1 needs n >= 4f \+ 3 = 7"):
        bulyan(X, 1)
    with pytest.raises(ValueError, match=r"median with f=3 needs n >= 2f \+ 1 = 7"):
        robust_aggregate(X, "median", 3)
    X[0] = np.nan
    with pytest.raises(ValueError, match=r"1 update\(s\) are non-finite and left out"):
        krum(X, 3)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: krum(np.zeros((5, 2)), -1), "must be >= 0"),
        (lambda: multi_krum(np.zeros((5, 2)), 1, 5), r"1 <= m <= n - f = 4"),
        (lambda: multi_krum(np.zeros((5, 2)), 1, 0), "1 <= m"),
        (lambda: trimmed_mean(np.zeros((5, 2)), 0.5), "0 <= beta < 0.5"),
        (lambda: trimmed_mean(np.zeros((5, 2)), -0.1), "0 <= beta < 0.5"),
        (lambda: coordinate_median(np.zeros(5)), r"\(n, d\) matrix"),
        (lambda: coordinate_median(np.zeros((0, 3))), "at least one row"),
        (lambda: robust_aggregate(np.zeros((5, 2)), "mean", 0), "unknown method"),  # type: ignore[arg-type]
        (lambda: robust_mean(np.zeros((2, 2)), "krum", 0.3), "more than 2 finite"),
        (lambda: robust_mean(np.zeros((5, 2)), "krum", 0.5), "tolerance"),
    ],
)
def test_bad_arguments(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_f_must_be_an_integer() -> None:
    with pytest.raises(TypeError):
        krum(np.zeros((5, 2)), True)
    with pytest.raises(TypeError):
        krum(np.zeros((5, 2)), 1.0)  # type: ignore[arg-type]


# --- the tolerance-driven entry point ---------------------------------------------------------


@pytest.mark.parametrize(("method", "n"), list(itertools.product(METHODS, (3, 7, 20))))
def test_robust_mean_lowers_f_to_what_the_round_size_allows(method: Method, n: int) -> None:
    f = min(int(0.33 * n), max_f(method, n))
    X, honest = attacked(n, f)
    value = robust_mean(X, method, 0.33)
    assert np.linalg.norm(value - honest.mean(axis=0)) < 1e3


def test_robust_mean_counts_nonfinite_updates_among_the_byzantine() -> None:
    X, honest = attacked(10, 2)
    X[0, 0] = np.nan  # an honest-looking row made non-finite: 3 Byzantine of 10 in all
    value = robust_mean(X, "krum", 0.3)
    assert np.linalg.norm(value - honest.mean(axis=0)) < 1e3


def test_max_f() -> None:
    assert [max_f("krum", n) for n in (2, 3, 5, 9)] == [-1, 0, 1, 3]
    assert [max_f("bulyan", n) for n in (2, 3, 7, 11)] == [-1, 0, 1, 2]
    assert [max_f("median", n) for n in (1, 2, 3)] == [0, 0, 1]
