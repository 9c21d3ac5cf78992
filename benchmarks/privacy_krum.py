"""``privacy.krum_100x1m``: Krum scores of a federated-learning round of 100 float32 updates of
1,000,000 values each (a 1 M-parameter model; 400 MB of updates).

Value: the median time of :func:`fogcoord.privacy.robust.krum_scores` with ``f = 33`` (the default
``byzantine_tolerance`` of 0.33). Baseline, same run: the median time of a bare BLAS Gram matrix
``X @ X.T`` of the same float32 matrix, the least any Gram-based Krum can cost. Rounds alternate
between the two so that drift in the machine's speed hits both alike. Targets: at most 1.5 s, and at
most 2x the baseline.

Accumulation: float32 products over column blocks of a few thousand values, each block centred on
a robust centre, summed across blocks in float64 (``precision="input"``, the default). float64
products throughout (``precision="float64"``) cost about 3x the baseline on the same data: float64
BLAS does half the work per instruction, and every block must be converted first. The blocked
float32 scores stay within about 1e-8 relative of the float64 ones (logged each run), where a bare
float32 Gram matrix of the same round is off by 3e-5 on the honest distances, the digits lost to
cancellation of the component all updates share. The round's updates have such a component: a
shared direction, client noise of 0.3 of its size, and ten Byzantine updates (five sign-flipped,
five scaled by 1000).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from time import perf_counter

import numpy as np
from numpy.typing import NDArray

from benchmarks.harness import Figure, Unit, log
from fogcoord.config import PrivacyConfig
from fogcoord.privacy.robust import krum_scores

FIGURES = ("privacy.krum_100x1m",)
UNIT: Unit = "s"
TIMEOUT_S = 300.0

N, D = 100, 1_000_000
ROUNDS = 5
TARGET_S = 1.5
RATIO_TARGET = 2.0


def updates(seed: int = 0) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D), dtype=np.float32)
    X *= np.float32(0.3)
    X += rng.standard_normal(D, dtype=np.float32)
    X[:5] *= np.float32(-1.0)
    X[5:10] *= np.float32(1000.0)
    return X


def timed(fn: Callable[[], object]) -> float:
    started = perf_counter()
    fn()
    return perf_counter() - started


def run() -> list[Figure]:
    X = updates()
    f = math.floor(PrivacyConfig().secure_aggregation.byzantine_tolerance * N)
    scores = krum_scores(X, f)  # warm-up: BLAS threads, buffers, page faults
    _ = X @ X.T
    krum_s: list[float] = []
    gram_s: list[float] = []
    for _ in range(ROUNDS):
        krum_s.append(timed(lambda: krum_scores(X, f)))
        gram_s.append(timed(lambda: X @ X.T))
    value = statistics.median(krum_s)
    baseline = statistics.median(gram_s)
    exact = krum_scores(X, f, precision="float64")
    error = float(np.max(np.abs(scores - exact) / exact))
    log(
        f"  Krum (f={f}) {value:.3f} s, Gram {baseline:.3f} s, ratio {value / baseline:.2f}; "
        f"largest relative score error vs float64 products {error:.1e}; "
        f"Krum picks row {int(np.argmin(scores))} (rows 0-9 are Byzantine)"
    )
    return [
        Figure(
            "privacy.krum_100x1m",
            value,
            UNIT,
            baseline=baseline,
            target=TARGET_S,
            op="<=",
            ratio_target=RATIO_TARGET,
            ratio_op="<=",
        )
    ]
