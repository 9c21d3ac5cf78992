"""Byzantine-robust aggregation of model updates: Krum, Multi-Krum, Bulyan, median, trimmed mean.

Every aggregator takes the updates as the rows of an ``(n, d)`` matrix and returns float64
results. The rules and the number of updates each needs for ``f`` Byzantine ones:

* **Krum** (Blanchard, El Mhamdi, Guerraoui, Stainer: "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent", NeurIPS 2017): the update whose ``n - f - 2`` nearest
  neighbours are closest in squared Euclidean distance; needs ``n >= 2f + 3``.
* **Multi-Krum** (same paper): the mean of the ``m`` updates with the best Krum scores.
* **Bulyan** (El Mhamdi, Guerraoui, Rouault: "The Hidden Vulnerability of Distributed Learning
  in Byzantium", ICML 2018): ``theta = n - 2f`` updates chosen by Krum one after another, then per
  coordinate the mean of the ``beta = theta - 2f`` values closest to their median; needs
  ``n >= 4f + 3``.
* **Coordinate-wise median** and **trimmed mean** (Yin, Chen, Ramchandran, Bartlett:
  "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML 2018): per
  coordinate, the median, or the mean after dropping the ``beta`` fraction largest and smallest
  values; they tolerate fewer than half Byzantine updates.

An update holding NaN or infinity is Byzantine by definition: it is left out before anything is
computed, reported in :attr:`RobustResult.excluded` (and by :func:`nonfinite_rows`), and counts
against ``f``. Each excluded update is one Byzantine update fewer among the rest, so the rules run
on the ``n'`` finite updates with ``f' = max(f - excluded, 0)``; Krum's neighbour count
``n' - f' - 2`` is then the same as it would have been with all ``n``.

Pairwise distances, the Krum hot path, come from a Gram matrix computed by BLAS over column blocks
of the updates, each block centred on a robust centre of that block before its products are
taken, and accumulated across blocks in float64. ``precision="input"`` (the default) computes the
products of a block in the input's own floating type: for float32 updates this is float32 BLAS,
about twice as fast as float64 and, at one million coordinates, within 1.5x of a bare
``X @ X.T`` (see ``benchmarks/privacy_krum.py``). Its error stays small because a block holds at
most a few thousand coordinates and because of the centring: a distance computed as
``|a|^2 + |b|^2 - 2 a.b`` loses the digits that ``a`` and ``b`` share, and centring removes what
all updates share (and keeps huge Byzantine vectors out of the centre). The relative error of a
squared distance is then on the order of float32's rounding error times the ratio of the rows'
squared distances to the centre to their squared distance to each other: 1.4e-8 for the Krum
scores of the benchmark's round. ``precision="float64"`` computes every product in float64 for the
last digits. A block whose float32 products overflow is recomputed in
float64.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "Method",
    "Precision",
    "RobustResult",
    "bulyan",
    "coordinate_median",
    "krum",
    "krum_scores",
    "max_f",
    "multi_krum",
    "nonfinite_rows",
    "pairwise_sq_distances",
    "robust_aggregate",
    "robust_mean",
    "trimmed_mean",
]

Precision: TypeAlias = Literal["input", "float64"]
Method: TypeAlias = Literal["median", "trimmed_mean", "krum", "multi_krum", "bulyan"]
METHODS: tuple[Method, ...] = ("median", "trimmed_mean", "krum", "multi_krum", "bulyan")

F64 = NDArray[np.float64]
Floats = NDArray[np.floating[Any]]
Indices = NDArray[np.intp]

# A block of columns this large (all rows together) stays in cache between being centred and being
# multiplied, which is what keeps the centring almost free.
_BLOCK_BYTES = 4 << 20
_MIN_BLOCK = 256


@dataclass(frozen=True)
class RobustResult:
    """An aggregate, the rows it was taken from, and the rows left out as non-finite."""

    value: F64
    selected: tuple[int, ...]
    excluded: tuple[int, ...]


# --- input handling ---------------------------------------------------------------------------


def _as_matrix(X: ArrayLike) -> Floats:
    M = np.asarray(X)
    if M.ndim != 2:
        raise ValueError(f"updates must be an (n, d) matrix, one update per row; got {M.shape}")
    if M.shape[0] == 0 or M.shape[1] == 0:
        raise ValueError(f"updates must have at least one row and one column; got {M.shape}")
    if M.dtype not in (np.float32, np.float64):
        M = M.astype(np.float64)
    return M


def _check_f(f: int) -> int:
    if isinstance(f, bool):
        raise TypeError("f must be an integer, not a bool")
    f = operator.index(f)
    if f < 0:
        raise ValueError(f"f (the number of Byzantine updates tolerated) must be >= 0, got {f}")
    return f


def _finite_mask(M: Floats) -> NDArray[np.bool_]:
    # One BLAS pass: a row sum is non-finite whenever the row holds NaN or inf. Only rows whose sum
    # is non-finite (which includes rows of finite values whose sum overflows) get the exact check.
    with np.errstate(over="ignore", invalid="ignore"):
        sums = M @ np.ones(M.shape[1], dtype=M.dtype)
    mask = np.isfinite(sums)
    for i in np.flatnonzero(~mask):
        mask[i] = bool(np.isfinite(M[i]).all())
    return mask


def nonfinite_rows(X: ArrayLike) -> tuple[int, ...]:
    """Indices of the updates holding NaN or infinity (Byzantine by definition)."""
    return tuple(int(i) for i in np.flatnonzero(~_finite_mask(_as_matrix(X))))


@dataclass(frozen=True)
class _Finite:
    """The finite rows of a matrix, and the tolerance left for them."""

    rows: Indices
    n: int
    f: int
    excluded: tuple[int, ...]

    def describe(self, f: int) -> str:
        if not self.excluded:
            return ""
        return (
            f"; {len(self.excluded)} update(s) are non-finite and left out, "
            f"leaving n={self.n} for f={self.f} (from f={f})"
        )


def _finite(M: Floats, f: int = 0) -> _Finite:
    mask = _finite_mask(M)
    rows = np.flatnonzero(mask)
    excluded = tuple(int(i) for i in np.flatnonzero(~mask))
    if len(rows) == 0:
        raise ValueError(f"all {len(M)} updates are non-finite (NaN or inf)")
    return _Finite(rows, len(rows), max(f - len(excluded), 0), excluded)


def _subset(M: Floats, fin: _Finite) -> Floats:
    return M if not fin.excluded else M[fin.rows]


def _block_cols(n: int, d: int, itemsize: int) -> int:
    return max(_MIN_BLOCK, min(d, _BLOCK_BYTES // (n * itemsize)))


def _column_blocks(d: int, width: int) -> list[slice]:
    return [slice(s, min(d, s + width)) for s in range(0, d, width)]


# --- distances --------------------------------------------------------------------------------


def _center_weights(block: Floats, dist2: F64 | None) -> Floats:
    """Weights of a robust centre: the rows not far out, by how far they are so far."""
    if dist2 is None:
        dist2 = np.einsum("ij,ij->i", block, block, dtype=np.float64)
    near = np.isfinite(dist2) & (dist2 <= 4.0 * float(np.median(dist2)))
    if not near.any():
        near[:] = True
    w: Floats = near.astype(block.dtype)
    w /= w.sum()
    return w


def _gram(M: Floats, precision: Precision) -> F64:
    """Centred Gram matrix of the rows of ``M`` (all finite), accumulated in float64."""
    n, d = M.shape
    work = np.dtype(np.float64) if precision == "float64" else M.dtype
    buf = np.empty((n, _block_cols(n, d, work.itemsize)), dtype=work)
    G = np.zeros((n, n), dtype=np.float64)
    for cols in _column_blocks(d, buf.shape[1]):
        block = M[:, cols]
        Y = buf[:, : cols.stop - cols.start]
        # The diagonal so far holds each row's squared distance to the earlier blocks' centres,
        # so rows already far out stay out of this block's centre.
        w = _center_weights(block, np.diagonal(G).copy() if cols.start else None)
        with np.errstate(over="ignore", invalid="ignore"):
            np.subtract(block, (w @ block).astype(work, copy=False), out=Y, dtype=work)
            g = Y @ Y.T
        if not np.isfinite(g).all():
            # float32 overflowed on huge (finite) values: float64 has the range they need
            Y64 = block.astype(np.float64)
            Y64 -= _center_weights(Y64, None) @ Y64
            g = Y64 @ Y64.T
        G += g
    return G


def _distances(M: Floats, precision: Precision) -> F64:
    G = _gram(M, precision)
    sq = np.diagonal(G)
    with np.errstate(over="ignore", invalid="ignore"):
        D = sq[:, None] + sq[None, :] - 2.0 * G
        np.maximum(D, 0.0, out=D)
    np.fill_diagonal(D, 0.0)
    # A squared distance beyond float64's range: the pair is infinitely far apart
    D[~np.isfinite(D)] = np.inf
    return D


def pairwise_sq_distances(X: ArrayLike, *, precision: Precision = "input") -> F64:
    """``(n, n)`` squared Euclidean distances between the rows of ``X``.

    Computed through a centred Gram matrix (BLAS). Rows holding NaN or infinity are at infinite
    distance from every row (0 from themselves).
    """
    M = _as_matrix(X)
    rows = np.flatnonzero(_finite_mask(M))
    if len(rows) == len(M):
        return _distances(M, precision)
    D = np.full((len(M), len(M)), np.inf)
    np.fill_diagonal(D, 0.0)
    if len(rows):
        D[np.ix_(rows, rows)] = _distances(M[rows], precision)
    return D


# --- Krum and Multi-Krum ----------------------------------------------------------------------


def _scores_from(D: F64, k: int) -> F64:
    """Sum of each row's ``k`` smallest distances to the other rows."""
    off = D.copy()
    np.fill_diagonal(off, np.inf)
    nearest = np.partition(off, k - 1, axis=1)[:, :k]
    scores: F64 = nearest.sum(axis=1)
    return scores


def _krum_setup(X: ArrayLike, f: int, precision: Precision) -> tuple[Floats, _Finite, F64]:
    f = _check_f(f)
    M = _as_matrix(X)
    fin = _finite(M, f)
    if fin.n < 2 * fin.f + 3:
        raise ValueError(
            f"Krum with f={fin.f} needs n >= 2f + 3 = {2 * fin.f + 3} updates, "
            f"got n={fin.n}{fin.describe(f)}"
        )
    D = _distances(_subset(M, fin), precision)
    return M, fin, D


def _krum_k(fin: _Finite) -> int:
    return fin.n - fin.f - 2


def krum_scores(X: ArrayLike, f: int, *, precision: Precision = "input") -> F64:
    """Krum score of each update: the sum of its ``n - f - 2`` smallest squared distances to others.

    Lower is more central. Non-finite updates score infinity. Raises ``ValueError`` unless
    ``n >= 2f + 3``.
    """
    M, fin, D = _krum_setup(X, f, precision)
    scores = np.full(len(M), np.inf)
    scores[fin.rows] = _scores_from(D, _krum_k(fin))
    return scores


def krum(X: ArrayLike, f: int, *, precision: Precision = "input") -> tuple[F64, int]:
    """The Krum choice: ``(the update with the lowest score, as float64, its row index)``.

    Ties go to the lower index.
    """
    M, fin, D = _krum_setup(X, f, precision)
    best = int(fin.rows[int(np.argmin(_scores_from(D, _krum_k(fin))))])
    return M[best].astype(np.float64), best


def multi_krum(
    X: ArrayLike, f: int, m: int, *, precision: Precision = "input"
) -> tuple[F64, tuple[int, ...]]:
    """Multi-Krum: ``(the mean of the m updates with the lowest scores, their row indices)``.

    Indices are in order of score, ties to the lower index; ``1 <= m <= n - f``.
    """
    M, fin, D = _krum_setup(X, f, precision)
    m = operator.index(m)
    if not 1 <= m <= fin.n - fin.f:
        raise ValueError(f"Multi-Krum needs 1 <= m <= n - f = {fin.n - fin.f}, got m={m}")
    order = np.argsort(_scores_from(D, _krum_k(fin)), kind="stable")[:m]
    chosen = tuple(int(fin.rows[i]) for i in order)
    return _mean_rows(M, chosen), chosen


def _mean_rows(M: Floats, rows: tuple[int, ...]) -> F64:
    # Row by row into a float64 accumulator: no float64 copy of the chosen rows is ever made
    acc = np.zeros(M.shape[1], dtype=np.float64)
    for i in rows:
        acc += M[i]
    acc /= len(rows)
    return acc


# --- coordinate-wise rules --------------------------------------------------------------------


def _columns_as_rows(M: Floats, cols: slice, dtype: type[np.floating[Any]] | None = None) -> Floats:
    # numpy partitions contiguous rows several times faster than a strided axis 0
    T: Floats = np.ascontiguousarray(M[:, cols].T, dtype=dtype)
    return T


def _ranked_mean(T: Floats, lo: int, hi: int) -> F64:
    """Per row of ``T`` (reordered in place), the mean of its values ranked ``lo..hi`` (0-based,
    inclusive)."""
    # Two partitions at one index each: numpy's partition at several indices at once is slower
    # than both together.
    T.partition(lo, axis=1)
    if hi > lo:
        T[:, lo + 1 :].partition(hi - lo - 1, axis=1)
    mean: F64 = T[:, lo : hi + 1].mean(axis=1, dtype=np.float64)
    return mean


def _order_stats_mean(M: Floats, lo: int, hi: int) -> F64:
    """Per column, the mean of the values ranked ``lo..hi`` (0-based, inclusive) among the rows."""
    n, d = M.shape
    out = np.empty(d, dtype=np.float64)
    for cols in _column_blocks(d, _block_cols(n, d, M.dtype.itemsize)):
        out[cols] = _ranked_mean(_columns_as_rows(M, cols), lo, hi)
    return out


def _median_of(M: Floats) -> F64:
    n = len(M)
    return _order_stats_mean(M, (n - 1) // 2, n // 2)


def _trimmed_of(M: Floats, k: int) -> F64:
    n = len(M)
    return _order_stats_mean(M, k, n - k - 1)


def coordinate_median(X: ArrayLike) -> F64:
    """Coordinate-wise median (the mean of the two middle values for an even count), float64.

    Non-finite updates are left out.
    """
    M = _as_matrix(X)
    return _median_of(_subset(M, _finite(M)))


def _trim_count(beta: float, n: int) -> int:
    if not 0.0 <= float(beta) < 0.5:
        raise ValueError(f"trimmed mean needs 0 <= beta < 0.5, got {beta!r}")
    # the small slack keeps e.g. 0.29 * 100 == 28.999999999999996 from trimming 28
    return math.floor(beta * n + 1e-9)


def trimmed_mean(X: ArrayLike, beta: float) -> F64:
    """Coordinate-wise trimmed mean: per coordinate, drop the ``floor(beta * n)`` largest and
    smallest values and average the rest, in float64. ``0 <= beta < 0.5``.

    Non-finite updates are left out first; ``n`` counts the finite ones.
    """
    M = _as_matrix(X)
    fin = _finite(M)
    return _trimmed_of(_subset(M, fin), _trim_count(beta, fin.n))


# --- Bulyan -----------------------------------------------------------------------------------


def _bulyan_selection(D: F64, f: int) -> list[int]:
    """Rows chosen by Krum one after another from the rows not yet chosen, ``n - 2f`` in all."""
    n = len(D)
    remaining = list(range(n))
    chosen: list[int] = []
    for _ in range(n - 2 * f):
        r = len(remaining)
        sub = D[np.ix_(remaining, remaining)]
        # the last rounds have fewer than 2f + 3 rows left; one neighbour is the least Krum needs
        best = int(np.argmin(_scores_from(sub, max(1, r - f - 2))))
        chosen.append(remaining.pop(best))
    return chosen


def _bulyan_of(F: Floats, rows: list[int], beta: int) -> F64:
    """Per column, the mean of the ``beta`` values of ``rows`` closest to their median."""
    theta, d = len(rows), F.shape[1]
    out = np.empty(d, dtype=np.float64)
    for cols in _column_blocks(d, _block_cols(theta, d, 8)):
        T = np.ascontiguousarray(F[rows, cols].T, dtype=np.float64)
        # reordering a row in place leaves its values, all that the rest needs
        med = _ranked_mean(T, (theta - 1) // 2, theta // 2)
        nearest = np.argpartition(np.abs(T - med[:, None]), beta - 1, axis=1)[:, :beta]
        out[cols] = np.take_along_axis(T, nearest, axis=1).mean(axis=1)
    return out


def _bulyan(
    X: ArrayLike, f: int, precision: Precision
) -> tuple[F64, tuple[int, ...], tuple[int, ...]]:
    f = _check_f(f)
    M = _as_matrix(X)
    fin = _finite(M, f)
    if fin.n < 4 * fin.f + 3:
        raise ValueError(
            f"Bulyan with f={fin.f} needs n >= 4f + 3 = {4 * fin.f + 3} updates, "
            f"got n={fin.n}{fin.describe(f)}"
        )
    F = _subset(M, fin)
    local = _bulyan_selection(_distances(F, precision), fin.f)
    chosen = tuple(int(fin.rows[i]) for i in local)
    value = _bulyan_of(F, local, len(local) - 2 * fin.f)
    return value, chosen, fin.excluded


def bulyan(X: ArrayLike, f: int, *, precision: Precision = "input") -> F64:
    """Bulyan: Krum-select ``theta = n - 2f`` updates, then per coordinate average the
    ``beta = theta - 2f`` values closest to their median. Raises ``ValueError`` unless
    ``n >= 4f + 3``.
    """
    return _bulyan(X, f, precision)[0]


# --- one entry point --------------------------------------------------------------------------


def robust_aggregate(
    X: ArrayLike,
    method: Method,
    f: int = 0,
    *,
    m: int | None = None,
    precision: Precision = "input",
) -> RobustResult:
    """Aggregate with ``method`` tolerating ``f`` Byzantine updates, and say which rows it used.

    ``median`` and ``trimmed_mean`` need ``n >= 2f + 1``; ``trimmed_mean`` drops ``f`` values on
    each side of every coordinate. ``multi_krum`` averages ``m`` updates (default ``n - f``).
    """
    f = _check_f(f)
    M = _as_matrix(X)
    if method in ("median", "trimmed_mean"):
        fin = _finite(M, f)
        if fin.n < 2 * fin.f + 1:
            raise ValueError(
                f"{method} with f={fin.f} needs n >= 2f + 1 = {2 * fin.f + 1} updates, "
                f"got n={fin.n}{fin.describe(f)}"
            )
        F = _subset(M, fin)
        value = _median_of(F) if method == "median" else _trimmed_of(F, fin.f)
        return RobustResult(value, tuple(int(i) for i in fin.rows), fin.excluded)
    if method == "krum":
        vec, best = krum(M, f, precision=precision)
        return RobustResult(vec, (best,), nonfinite_rows(M))
    if method == "multi_krum":
        excluded = nonfinite_rows(M)
        if m is None:
            m = len(M) - len(excluded) - max(f - len(excluded), 0)
        mean, chosen = multi_krum(M, f, m, precision=precision)
        return RobustResult(mean, chosen, excluded)
    if method == "bulyan":
        value, chosen, excluded = _bulyan(M, f, precision)
        return RobustResult(value, chosen, excluded)
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")


def max_f(method: Method, n: int) -> int:
    """The largest ``f`` that ``method`` supports with ``n`` updates (-1 when none does)."""
    if method in ("krum", "multi_krum"):
        return (n - 3) // 2
    if method == "bulyan":
        return (n - 3) // 4
    if method in ("median", "trimmed_mean"):
        return (n - 1) // 2
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")


def robust_mean(
    X: ArrayLike, method: str, tolerance: float, *, precision: Precision = "input"
) -> F64:
    """The aggregate of ``method`` for a share ``tolerance`` of Byzantine updates.

    ``f = floor(tolerance * n)``, lowered to what ``method`` supports for the number of finite
    updates, so that small rounds still aggregate (with the protection their size allows).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if not 0.0 <= tolerance < 0.5:
        raise ValueError(f"tolerance must be in [0, 0.5), got {tolerance!r}")
    M = _as_matrix(X)
    bad = len(nonfinite_rows(M))
    n = len(M) - bad
    limit = max_f(method, n)
    if limit < 0:
        raise ValueError(f"{method} needs more than {n} finite update(s)")
    # the non-finite rows are some of the floor(tolerance * N) Byzantine ones
    f = min(max(math.floor(tolerance * len(M) + 1e-9) - bad, 0), limit)
    return robust_aggregate(M, method, f + bad, precision=precision).value
